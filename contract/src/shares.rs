//! Shared folders: the list the host CLI passes to init in QEMU's fw_cfg item `opt/ferry/shares`, one
//! share per line, `TAG<TAB>GUEST_PATH<TAB>rw|ro` (TAG is the virtio-9p device's mount tag). The host
//! writes it (`format`), init reads it (`parse`); both check guest paths with `check_guest_path`.

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
}
