//! Module selection for the image: globs from kernel-config/modules.txt plus their dependencies, copied
//! with a generated modules.dep / modules.alias in depmod's text format (read by init's kmod module).
use crate::error::{Context, Error, Result};
use crate::modinfo::{self, ModInfo};
use ferry_contract::{glob, names};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// All modules of a kernel tree: relative path (e.g. `kernel/fs/overlayfs/overlay.ko.xz`) → info.
pub struct Catalog {
    pub by_name: BTreeMap<String, (String, Option<ModInfo>)>,
}

fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) -> Result<()> {
    for e in std::fs::read_dir(dir).ctx(|| format!("list {}", dir.display()))? {
        let e = e.ctx(|| format!("list {}", dir.display()))?;
        let p = e.path();
        if p.is_dir() {
            walk(&p, base, out)?;
        } else if p.to_string_lossy().contains(".ko") {
            out.push(p.strip_prefix(base).map(|r| r.to_string_lossy().to_string()).unwrap_or_default());
        }
    }
    Ok(())
}

impl Catalog {
    pub fn scan(moddir: &Path) -> Result<Catalog> {
        let mut paths = Vec::new();
        walk(&moddir.join("kernel"), moddir, &mut paths)?;
        let by_name = paths.into_iter().map(|p| (names::module_from_path(&p), (p, None))).collect();
        Ok(Catalog { by_name })
    }

    fn info(&mut self, moddir: &Path, name: &str) -> Result<ModInfo> {
        let (path, info) = self.by_name.get_mut(name).ok_or_else(|| Error::msg(format!("module {name} not in the kernel package")))?;
        if info.is_none() {
            *info = Some(modinfo::read(&moddir.join(&*path))?);
        }
        Ok(info.clone().unwrap_or_default())
    }

    /// Modules whose path (below `kernel/`) matches any glob, plus every dependency, by name.
    pub fn select(&mut self, moddir: &Path, globs: &[String]) -> Result<BTreeSet<String>> {
        let mut want: Vec<String> = Vec::new();
        for g in globs {
            let hits: Vec<String> =
                self.by_name.iter().filter(|(_, (p, _))| glob::matches(&format!("kernel/{g}"), p)).map(|(n, _)| n.clone()).collect();
            if hits.is_empty() {
                return Err(Error::msg(format!("kernel-config/modules.txt: {g:?} matches no module (built in? then remove the line)")));
            }
            want.extend(hits);
        }
        let mut chosen = BTreeSet::new();
        while let Some(n) = want.pop() {
            if chosen.insert(n.clone()) {
                want.extend(self.info(moddir, &n)?.depends);
            }
        }
        Ok(chosen)
    }

    /// Transitive dependencies of `name`, in depmod's order (reverse load order: last listed loads first).
    fn deps_of(&mut self, moddir: &Path, name: &str) -> Result<Vec<String>> {
        let mut order: Vec<String> = Vec::new();
        fn visit(c: &mut Catalog, moddir: &Path, n: &str, order: &mut Vec<String>, stack: &mut Vec<String>) -> Result<()> {
            if stack.iter().any(|s| s == n) {
                return Err(Error::msg(format!("dependency cycle at {n}")));
            }
            stack.push(n.to_string());
            for d in c.info(moddir, n)?.depends {
                visit(c, moddir, &d, order, stack)?;
                if !order.contains(&d) {
                    order.push(d);
                }
            }
            stack.pop();
            Ok(())
        }
        visit(self, moddir, name, &mut order, &mut Vec::new())?;
        // `order` is load order (leaves first); depmod lists the reverse.
        order.reverse();
        Ok(order)
    }

    /// Firmware files the modules `names` may request (their modinfo `firmware=` entries), sorted.
    pub fn firmware(&mut self, moddir: &Path, names: &BTreeSet<String>) -> Result<BTreeSet<String>> {
        let mut all = BTreeSet::new();
        for n in names {
            all.extend(self.info(moddir, n)?.firmware);
        }
        Ok(all)
    }

    /// Copy `names` into `dest/<rel path>` and write modules.dep, modules.alias, modules.builtin there.
    pub fn install(&mut self, moddir: &Path, names: &BTreeSet<String>, dest: &Path) -> Result<()> {
        let mut dep = String::new();
        let mut alias = String::from("# Aliases extracted from modules themselves.\n");
        for n in names {
            let rel = self.by_name[n].0.clone();
            let to = dest.join(&rel);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).ctx(|| format!("create {}", parent.display()))?;
            }
            std::fs::copy(moddir.join(&rel), &to).ctx(|| format!("copy {rel}"))?;
            let deps: Vec<String> = self.deps_of(moddir, n)?.iter().map(|d| self.by_name[d].0.clone()).collect();
            dep.push_str(&format!("{rel}:{}{}\n", if deps.is_empty() { "" } else { " " }, deps.join(" ")));
            for a in self.info(moddir, n)?.aliases {
                alias.push_str(&format!("alias {a} {n}\n"));
            }
        }
        std::fs::write(dest.join("modules.dep"), dep).ctx(|| "write modules.dep".into())?;
        std::fs::write(dest.join("modules.alias"), alias).ctx(|| "write modules.alias".into())?;
        let builtin = std::fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
        std::fs::write(dest.join("modules.builtin"), builtin).ctx(|| "write modules.builtin".into())?;
        Ok(())
    }
}
