//! Device coldplug (walk /sys/devices for modalias files) and hotplug (kernel uevent netlink socket).
use crate::kmod::ModDb;
use crate::{later, log, sys};
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

fn collect_modaliases(dir: &Path, out: &mut HashSet<String>, depth: usize) {
    if depth > 32 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_symlink() {
            continue;
        }
        if ft.is_dir() {
            collect_modaliases(&e.path(), out, depth + 1);
        } else if e.file_name() == "modalias" {
            if let Ok(s) = std::fs::read_to_string(e.path()) {
                let s = s.trim();
                if !s.is_empty() {
                    out.insert(s.to_string());
                }
            }
        }
    }
}

/// What coldplug did, for the boot's one line: where the modules phase spends its time.
#[derive(Debug, Default)]
pub struct Report {
    pub loaded: usize,
    pub rounds: usize,
    /// Time spent walking /sys/devices for modalias files.
    pub walking: Duration,
    /// The slowest module loads (a load includes its dependencies and the driver's probe).
    pub slowest: Vec<(String, Duration)>,
    /// Aliases left for later (`deferred`), sorted.
    pub deferred: Vec<String>,
}

/// The CPU's own alias (`cpu:type:x86,...:feature:...`) asks for modules that use its instructions:
/// checksums and ciphers (crc32_pclmul, aesni_intel, sha*_ssse3 ...), kvm. Nothing before the engine
/// needs them (the kernel's generic code serves until they load), and their self-tests are among the
/// slowest loads of the boot under TCG, so they load after the services start (`load_later`).
pub fn deferred(alias: &str) -> bool {
    alias.starts_with("cpu:")
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} loaded by coldplug in {} round(s); sysfs walks {:.2}s", self.loaded, self.rounds, self.walking.as_secs_f64())?;
        if !self.slowest.is_empty() {
            let s: Vec<String> = self.slowest.iter().map(|(m, d)| format!("{m} {:.2}s", d.as_secs_f64())).collect();
            write!(f, "; slowest: {}", s.join(", "))?;
        }
        if !self.deferred.is_empty() {
            write!(f, "; the CPU's modules load after the services")?;
        }
        Ok(())
    }
}

/// Keep the `n` slowest loads, slowest first.
fn keep_slowest(slowest: &mut Vec<(String, Duration)>, name: &str, took: Duration, n: usize) {
    slowest.push((name.to_string(), took));
    slowest.sort_by_key(|s| std::cmp::Reverse(s.1));
    slowest.truncate(n);
}

/// Load modules for every device present, repeating while new modules bring new devices.
pub fn coldplug(db: &ModDb) -> Report {
    let mut tried: HashSet<String> = HashSet::new();
    let mut r = Report::default();
    for _round in 0..8 {
        r.rounds += 1;
        let t = Instant::now();
        let mut aliases = HashSet::new();
        collect_modaliases(Path::new("/sys/devices"), &mut aliases, 0);
        r.walking += t.elapsed();
        let mut new = 0;
        let (later, mut sorted): (Vec<_>, Vec<_>) = aliases.into_iter().partition(|a| deferred(a));
        sorted.sort();
        for a in later {
            if !r.deferred.contains(&a) {
                r.deferred.push(a);
            }
        }
        r.deferred.sort();
        for alias in sorted {
            for module in db.lookup(&alias) {
                if !tried.insert(module.clone()) {
                    continue;
                }
                let t = Instant::now();
                match db.insert(&module, "") {
                    Ok(n) => new += n,
                    // Several modules may claim a device; a refusal (ENODEV etc.) is normal, not fatal.
                    Err(e) => log::line(&format!("modules: {module} for {alias}: {e}")),
                }
                keep_slowest(&mut r.slowest, &module, t.elapsed(), 3);
            }
        }
        r.loaded += new;
        if new == 0 {
            break;
        }
    }
    r
}

/// Load the modules for `aliases` (coldplug's deferred ones), in a thread at the lowest priority.
pub fn load_later(db: ModDb, aliases: Vec<String>) {
    sys::lowest_priority_for_this_thread();
    let waited = later::after_engine();
    let t = Instant::now();
    let mut loaded = 0;
    for alias in &aliases {
        for module in db.lookup(alias) {
            match db.insert(&module, "") {
                Ok(n) => loaded += n,
                Err(e) => log::line(&format!("modules: {module} for the CPU: {e}")),
            }
        }
    }
    log::line(&format!(
        "modules: {loaded} for the CPU's features loaded after the services in {:.2}s ({waited})",
        t.elapsed().as_secs_f64()
    ));
}

/// Listen for hot-plugged devices and load their modules, forever (runs in its own thread).
pub fn hotplug_thread(db: ModDb) {
    let fd = match uevent_socket() {
        Ok(fd) => fd,
        Err(e) => {
            log::warn(&format!("hotplug disabled: {e}"));
            return;
        }
    };
    let mut buf = vec![0u8; 8192];
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n <= 0 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        let msg = &buf[..n as usize];
        let mut add = false;
        let mut modalias = None;
        for field in msg.split(|&b| b == 0) {
            let f = String::from_utf8_lossy(field);
            if f == "ACTION=add" {
                add = true;
            } else if let Some(m) = f.strip_prefix("MODALIAS=") {
                modalias = Some(m.to_string());
            }
        }
        if let (true, Some(alias)) = (add, modalias) {
            for module in db.lookup(&alias) {
                if let Err(e) = db.insert(&module, "") {
                    log::line(&format!("hotplug: {module} for {alias}: {e}"));
                }
            }
        }
    }
}

fn uevent_socket() -> crate::error::Result<libc::c_int> {
    // SAFETY: plain socket/bind calls with a zeroed, correctly sized sockaddr_nl.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_KOBJECT_UEVENT);
        if fd < 0 {
            return Err(crate::error::Error::last_os("uevent socket"));
        }
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = 1;
        let rc = libc::bind(fd, &sa as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_nl>() as u32);
        if rc != 0 {
            libc::close(fd);
            return Err(crate::error::Error::last_os("bind uevent socket"));
        }
        Ok(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_the_slowest_loads_first() {
        let mut r = Report { loaded: 4, rounds: 2, walking: Duration::from_millis(420), ..Default::default() };
        for (m, ms) in [("virtio_net", 300), ("drm", 1200), ("ahci", 50), ("xhci_pci", 800)] {
            keep_slowest(&mut r.slowest, m, Duration::from_millis(ms), 3);
        }
        assert_eq!(
            r.to_string(),
            "4 loaded by coldplug in 2 round(s); sysfs walks 0.42s; slowest: drm 1.20s, xhci_pci 0.80s, virtio_net 0.30s"
        );
        assert_eq!(Report::default().to_string(), "0 loaded by coldplug in 0 round(s); sysfs walks 0.00s");
        r.deferred = vec!["cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0001".into()];
        assert!(r.to_string().ends_with("; the CPU's modules load after the services"), "{r}");
    }

    #[test]
    fn only_the_cpus_own_alias_waits() {
        assert!(deferred("cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0001,0002"));
        for a in ["pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", "virtio:d00000001v00001AF4", "acpi:QEMU0002:", "platform:pcspkr"]
        {
            assert!(!deferred(a), "{a}");
        }
    }
}
