//! Host folders shared into the VM, mounted before the engine starts so `docker run -v "$PWD":/x` sees them.
//!
//! - QEMU (`ferry up`): virtio-9p devices tagged `ferry0`, `ferry1`, ...; the list of where each goes
//!   travels in fw_cfg (its format: `ferry_contract::shares`).
//! - VirtualBox: the shares docker-machine creates (`Users`, `c/Users`, `hosthome`) mounted with vboxsf
//!   where boot2docker mounted them, owned by docker:staff. A share the VM does not have fails to mount
//!   and is skipped without a word (docker-machine creates only the one for the host's OS).
use crate::error::{Error, Result};
use crate::provision::{DOCKER_UID, STAFF_GID};
use crate::{kmod, log, sys};
use ferry_contract::paths;
use ferry_contract::shares::parse;

/// 9p options: the 9P2000.L dialect over virtio, 512 KiB messages (the default 8 KiB makes large files
/// crawl), and `cache=mmap` so programs that mmap files work while the host's edits stay visible at once.
pub const NINEP_OPTIONS: &str = "trans=virtio,version=9p2000.L,msize=524288,cache=mmap";

/// docker-machine's VirtualBox shares and where boot2docker mounted them.
pub const VBOX_SHARES: &[(&str, &str)] = &[("Users", "/Users"), ("c/Users", "/c/Users"), ("hosthome", "/hosthome")];

/// vboxsf options: everything owned by docker:staff, as boot2docker did (vboxsf has no real ownership).
pub fn vbox_options() -> String {
    format!("uid={DOCKER_UID},gid={STAFF_GID},dmode=0775,fmode=0664")
}

/// Mount every share listed in fw_cfg, then VirtualBox's when its guest device is there. Returns a summary;
/// a share that fails is named on the console and the boot goes on.
pub fn mount_all(db: &kmod::ModDb) -> String {
    let mut parts = vec![];
    let list = paths::fwcfg_file(paths::FWCFG_SHARES);
    match std::fs::read_to_string(&list) {
        Ok(text) => {
            let (shares, warnings) = parse(&text);
            for w in warnings {
                log::warn(&w);
            }
            if !shares.is_empty() {
                if let Err(e) = db.insert("9p", "") {
                    log::warn(&format!("shares: cannot load the 9p module: {e}"));
                }
            }
            let mut n = 0;
            for s in &shares {
                let flags = sys::MountFlags::NOSUID
                    | sys::MountFlags::NODEV
                    | if s.read_only { sys::MountFlags::RDONLY } else { sys::MountFlags::empty() };
                match mount_at(&s.tag, &s.guest, "9p", flags, NINEP_OPTIONS) {
                    Ok(()) => {
                        log::line(&format!(
                            "shares: {} mounted ({}, {})",
                            s.guest,
                            s.tag,
                            if s.read_only { "read-only" } else { "read-write" }
                        ));
                        n += 1;
                    }
                    Err(e) => log::warn(&format!("shares: {} ({}) not mounted: {e}; the boot goes on without it", s.guest, s.tag)),
                }
            }
            parts.push(format!("{n} of {} host share(s)", shares.len()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => parts.push("no host shares".into()),
        Err(e) => log::warn(&format!("shares: read {list}: {e}")),
    }
    if vbox_present() {
        let _ = db.insert("vboxsf", "");
        let opts = vbox_options();
        let got: Vec<&str> = VBOX_SHARES
            .iter()
            .filter(|(name, dir)| mount_at(name, dir, "vboxsf", sys::MountFlags::empty(), &opts).is_ok())
            .map(|(_, dir)| *dir)
            .collect();
        parts.push(format!("VirtualBox shares: {}", if got.is_empty() { "none".to_string() } else { got.join(", ") }));
    }
    parts.join("; ")
}

/// The VirtualBox guest device (PCI 80ee:cafe) has a driver bound, which coldplug loads by its alias.
fn vbox_present() -> bool {
    std::path::Path::new("/dev/vboxguest").exists() || kmod::is_loaded("vboxguest")
}

fn mount_at(source: &str, dir: &str, fstype: &str, flags: sys::MountFlags, data: &str) -> Result<()> {
    sys::mkdir_p(dir, 0o755)?;
    if sys::is_mountpoint(dir) {
        return Err(Error::msg(format!("{dir} is already a mount point")));
    }
    sys::mount(source, dir, fstype, flags, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_contract::shares::check_guest_path;

    #[test]
    fn virtualbox_shares_are_docker_machines() {
        let dirs: Vec<&str> = VBOX_SHARES.iter().map(|(_, d)| *d).collect();
        assert_eq!(dirs, ["/Users", "/c/Users", "/hosthome"]);
        assert!(VBOX_SHARES.iter().all(|(_, d)| check_guest_path(d).is_ok()));
        assert_eq!(vbox_options(), "uid=1000,gid=50,dmode=0775,fmode=0664");
    }
}
