//! Host folders shared into the VM, mounted before the engine starts so `docker run -v "$PWD":/x` sees them.
//!
//! - QEMU (`ferry up`): virtio-9p devices tagged `ferry0`, `ferry1`, ...; the list of where each goes
//!   travels in fw_cfg `opt/ferry/shares`, one share per line: `TAG<TAB>GUEST_PATH<TAB>rw|ro`. The host
//!   CLI writes it (`format`), init reads it (`parse`); both check guest paths with `check_guest_path`.
//! - VirtualBox: the shares docker-machine creates (`Users`, `c/Users`, `hosthome`) mounted with vboxsf
//!   where boot2docker mounted them, owned by docker:staff. A share the VM does not have fails to mount
//!   and is skipped without a word (docker-machine creates only the one for the host's OS).
use crate::error::{Error, Result};
use crate::provision::{DOCKER_UID, STAFF_GID};
use crate::{kmod, log, sys};

pub const FWCFG_SHARES: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/ferry/shares/raw";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The 9p mount tag (QEMU's `mount_tag`), at most 31 bytes.
    pub tag: String,
    pub guest: String,
    pub read_only: bool,
}

/// Places a share must never cover: the appliance's own system and state directories.
const RESERVED: &[&str] = &["/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/mnt", "/proc", "/run", "/sbin", "/sys", "/usr", "/var"];

/// An absolute, normalised path that is not `/`, not a system directory and not below one (`/var/lib/docker`
/// on a share would hand the engine's state to the host's filesystem). `/home/docker` is the docker user's
/// own home (ssh keys, client certificates), so it is refused too; anything below it is fine.
pub fn check_guest_path(p: &str) -> std::result::Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?}: the guest path must be absolute"));
    }
    if p.chars().any(|c| c.is_control()) {
        return Err(format!("{p:?}: control characters in the path"));
    }
    let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    if parts.iter().any(|s| *s == "." || *s == "..") || p.contains("//") || (p.len() > 1 && p.ends_with('/')) {
        return Err(format!("{p:?}: use a normalised path (no '.', '..', '//' or trailing '/')"));
    }
    if parts.is_empty() {
        return Err("\"/\": cannot share over the root".into());
    }
    let top = format!("/{}", parts[0]);
    if RESERVED.contains(&top.as_str()) {
        return Err(format!("{p:?}: {top} belongs to the appliance; pick another guest path"));
    }
    if p == "/home/docker" || p == "/home" || p == "/tmp" {
        return Err(format!("{p:?}: the appliance uses this directory itself; share below it or elsewhere"));
    }
    Ok(())
}

pub fn format(shares: &[Share]) -> String {
    shares.iter().map(|s| format!("{}\t{}\t{}\n", s.tag, s.guest, if s.read_only { "ro" } else { "rw" })).collect()
}

/// Parse the fw_cfg list. Bad lines are returned as warnings, never fatal.
pub fn parse(text: &str) -> (Vec<Share>, Vec<String>) {
    let (mut ok, mut bad) = (vec![], vec![]);
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let read_only = match f.get(2).copied() {
            Some("ro") => true,
            Some("rw") => false,
            _ => {
                bad.push(format!("shares line {}: expected TAG<TAB>PATH<TAB>rw|ro, got {line:?}", n + 1));
                continue;
            }
        };
        let (tag, guest) = (f[0], f[1]);
        if tag.is_empty() || tag.len() > 31 || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            bad.push(format!("shares line {}: bad tag {tag:?}", n + 1));
            continue;
        }
        if let Err(e) = check_guest_path(guest) {
            bad.push(format!("shares line {}: {e}; skipped", n + 1));
            continue;
        }
        ok.push(Share { tag: tag.into(), guest: guest.into(), read_only });
    }
    (ok, bad)
}

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
    match std::fs::read_to_string(FWCFG_SHARES) {
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
                let flags = libc::MS_NOSUID | libc::MS_NODEV | if s.read_only { libc::MS_RDONLY } else { 0 };
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
        Err(e) => log::warn(&format!("shares: read {FWCFG_SHARES}: {e}")),
    }
    if vbox_present() {
        let _ = db.insert("vboxsf", "");
        let opts = vbox_options();
        let got: Vec<&str> =
            VBOX_SHARES.iter().filter(|(name, dir)| mount_at(name, dir, "vboxsf", 0, &opts).is_ok()).map(|(_, dir)| *dir).collect();
        parts.push(format!("VirtualBox shares: {}", if got.is_empty() { "none".to_string() } else { got.join(", ") }));
    }
    parts.join("; ")
}

/// The VirtualBox guest device (PCI 80ee:cafe) has a driver bound, which coldplug loads by its alias.
fn vbox_present() -> bool {
    std::path::Path::new("/dev/vboxguest").exists() || kmod::is_loaded("vboxguest")
}

fn mount_at(source: &str, dir: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> Result<()> {
    sys::mkdir_p(dir, 0o755)?;
    if sys::is_mountpoint(dir) {
        return Err(Error::msg(format!("{dir} is already a mount point")));
    }
    sys::mount(source, dir, fstype, flags, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths() {
        for ok in ["/root", "/home/alice", "/home/docker/src", "/Users", "/work/proj", "/srv/data"] {
            assert_eq!(check_guest_path(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("relative/x", "absolute"),
            ("/", "root"),
            ("/var/lib/docker", "/var belongs"),
            ("/etc", "/etc belongs"),
            ("/usr/local/x", "/usr belongs"),
            ("/home/docker", "uses this directory"),
            ("/tmp", "uses this directory"),
            ("/a/../etc", "normalised"),
            ("/a//b", "normalised"),
            ("/a/", "normalised"),
            ("/a\nb", "control"),
        ] {
            let e = check_guest_path(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn list_round_trips_and_bad_lines_are_named() {
        let shares = vec![
            Share { tag: "ferry0".into(), guest: "/home/alice".into(), read_only: false },
            Share { tag: "ferry1".into(), guest: "/data set".into(), read_only: true },
        ];
        let text = format(&shares);
        assert_eq!(parse(&text), (shares, vec![]));
        let (ok, bad) = parse("ferry0\t/etc\trw\nferry1\t/x\tmaybe\nferry 2\t/y\trw\nferry3\t/z\tro\n");
        assert_eq!(ok, vec![Share { tag: "ferry3".into(), guest: "/z".into(), read_only: true }]);
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad[0].contains("/etc belongs") && bad[1].contains("rw|ro") && bad[2].contains("bad tag"), "{bad:?}");
    }

    #[test]
    fn virtualbox_shares_are_docker_machines() {
        let dirs: Vec<&str> = VBOX_SHARES.iter().map(|(_, d)| *d).collect();
        assert_eq!(dirs, ["/Users", "/c/Users", "/hosthome"]);
        assert!(VBOX_SHARES.iter().all(|(_, d)| check_guest_path(d).is_ok()));
        assert_eq!(vbox_options(), "uid=1000,gid=50,dmode=0775,fmode=0664");
    }
}
