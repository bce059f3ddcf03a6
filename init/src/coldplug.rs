//! Device coldplug (walk /sys/devices for modalias files) and hotplug (kernel uevent netlink socket).
use crate::kmod::ModDb;
use crate::log;
use std::collections::HashSet;
use std::path::Path;

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

/// Load modules for every device present, repeating while new modules bring new devices. Returns modules loaded.
pub fn coldplug(db: &ModDb) -> usize {
    let mut tried: HashSet<String> = HashSet::new();
    let mut loaded = 0;
    for _round in 0..8 {
        let mut aliases = HashSet::new();
        collect_modaliases(Path::new("/sys/devices"), &mut aliases, 0);
        let mut new = 0;
        let mut sorted: Vec<_> = aliases.into_iter().collect();
        sorted.sort();
        for alias in sorted {
            for module in db.lookup(&alias) {
                if !tried.insert(module.clone()) {
                    continue;
                }
                match db.insert(&module, "") {
                    Ok(n) => new += n,
                    // Several modules may claim a device; a refusal (ENODEV etc.) is normal, not fatal.
                    Err(e) => log::line(&format!("modules: {module} for {alias}: {e}")),
                }
            }
        }
        loaded += new;
        if new == 0 {
            break;
        }
    }
    loaded
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
