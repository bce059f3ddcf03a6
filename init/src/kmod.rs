//! Kernel modules: modules.dep / modules.alias (the builder generates them in the standard depmod text
//! format), alias lookup, dependency order, and loading with finit_module (the kernel decompresses .ko.xz).
use crate::error::{Context, Error, Result};
use ferry_contract::glob;
use ferry_contract::names::{module as normalize, module_from_path as name_from_path};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Clone)]
pub struct ModDb {
    pub dir: PathBuf,
    /// name → (relative path, dependencies as depmod lists them: reverse load order)
    pub deps: HashMap<String, (String, Vec<String>)>,
    pub aliases: Vec<(String, String)>,
    pub builtin: HashSet<String>,
}

impl ModDb {
    /// `/lib/modules/<running kernel>`.
    pub fn running() -> Result<ModDb> {
        let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ctx(|| "read kernel release".into())?;
        ModDb::load(Path::new("/lib/modules").join(rel.trim()))
    }

    pub fn load(dir: PathBuf) -> Result<ModDb> {
        let dep = std::fs::read_to_string(dir.join("modules.dep")).ctx(|| format!("read {}", dir.join("modules.dep").display()))?;
        let alias = std::fs::read_to_string(dir.join("modules.alias")).unwrap_or_default();
        let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        let mut db = ModDb::parse(&dep, &alias, &builtin);
        db.dir = dir;
        Ok(db)
    }

    pub fn parse(dep: &str, alias: &str, builtin: &str) -> ModDb {
        let mut db = ModDb::default();
        for line in dep.lines() {
            if let Some((path, rest)) = line.split_once(':') {
                let deps = rest.split_whitespace().map(str::to_string).collect();
                db.deps.insert(name_from_path(path), (path.trim().to_string(), deps));
            }
        }
        for line in alias.lines() {
            let mut w = line.split_whitespace();
            if let (Some("alias"), Some(pat), Some(module)) = (w.next(), w.next(), w.next()) {
                db.aliases.push((pat.to_string(), normalize(module)));
            }
        }
        db.builtin = builtin.lines().map(name_from_path).collect();
        db
    }

    /// Modules whose alias patterns match `modalias` (or the module itself when `name` is a module name).
    pub fn lookup(&self, name: &str) -> Vec<String> {
        let n = normalize(name);
        if self.deps.contains_key(&n) || self.builtin.contains(&n) {
            return vec![n];
        }
        let mut out: Vec<String> = Vec::new();
        for (pat, module) in &self.aliases {
            if glob::matches(pat, name) && !out.contains(module) {
                out.push(module.clone());
            }
        }
        out
    }

    /// Relative paths to load, dependencies first, the module itself last. Built-in modules need nothing.
    pub fn load_order(&self, module: &str) -> Result<Vec<String>> {
        let n = normalize(module);
        if self.builtin.contains(&n) && !self.deps.contains_key(&n) {
            return Ok(vec![]);
        }
        let (path, deps) = self.deps.get(&n).ok_or_else(|| Error::msg(format!("module {module} not found in {}", self.dir.display())))?;
        let mut order: Vec<String> = deps.iter().rev().cloned().collect();
        order.push(path.clone());
        Ok(order)
    }

    /// Load a module and its dependencies. Returns how many were newly inserted.
    pub fn insert(&self, module: &str, params: &str) -> Result<usize> {
        let order = self.load_order(module)?;
        let last = order.len().saturating_sub(1);
        let mut count = 0;
        for (i, rel) in order.iter().enumerate() {
            let name = name_from_path(rel);
            if is_loaded(&name) {
                continue;
            }
            let p = if i == last { params } else { "" };
            if finit(&self.dir.join(rel), p)? {
                count += 1;
            }
        }
        Ok(count)
    }
}

pub fn is_loaded(name: &str) -> bool {
    Path::new("/sys/module").join(name).join("initstate").exists()
}

/// finit_module(2)'s flag for a compressed file (linux/module.h).
const MODULE_INIT_COMPRESSED_FILE: std::ffi::c_int = 4;

/// finit_module(2); the kernel decompresses .xz/.zst itself. Ok(false) when it was already loaded.
fn finit(path: &Path, params: &str) -> Result<bool> {
    let f = std::fs::File::open(path).ctx(|| format!("open module {}", path.display()))?;
    let compressed = path.extension().is_some_and(|e| e == "xz" || e == "zst" || e == "gz");
    let flags = if compressed { MODULE_INIT_COMPRESSED_FILE } else { 0 };
    let p = crate::sys::cstr(params)?;
    match rustix::system::finit_module(&f, &p, flags) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        Err(e) => Err(Error::io(format!("load module {}", path.display()), e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str =
        "kernel/net/bridge/br_netfilter.ko.xz: kernel/net/bridge/bridge.ko.xz kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz\n\
kernel/net/bridge/bridge.ko.xz: kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz\n\
kernel/net/802/stp.ko.xz: kernel/net/llc/llc.ko.xz\n\
kernel/net/llc/llc.ko.xz:\n\
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz\n\
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz\n\
kernel/net/core/failover.ko.xz:\n";
    const ALIAS: &str = "# Aliases extracted from modules themselves.\n\
alias virtio:d00000001v* virtio_net\n\
alias net-pf-7 bridge\n";

    #[test]
    fn dependency_order_loads_leaves_first() {
        let db = ModDb::parse(DEP, ALIAS, "kernel/fs/ext4/ext4.ko\n");
        let order = db.load_order("br-netfilter").unwrap();
        let names: Vec<String> = order.iter().map(|p| name_from_path(p)).collect();
        assert_eq!(names, ["llc", "stp", "bridge", "br_netfilter"]);
        assert!(db.load_order("ext4").unwrap().is_empty());
        assert!(db.load_order("nope").is_err());
    }

    #[test]
    fn alias_lookup() {
        let db = ModDb::parse(DEP, ALIAS, "");
        assert_eq!(db.lookup("virtio:d00000001v00001AF4"), ["virtio_net"]);
        assert_eq!(db.lookup("net-pf-7"), ["bridge"]);
        assert_eq!(db.lookup("virtio_net"), ["virtio_net"]);
        assert!(db.lookup("pci:v0000DEADd0000BEEF").is_empty());
    }
}
