//! `ferry up --share HOST_DIR[:GUEST_DIR][:ro]`: host folders given to the VM over virtio-9p. The user's
//! home is shared at the same path unless `--no-share` (as colima and lima do). The machine remembers its
//! list in `shares.json`; init mounts them (the fw_cfg format is `ferry_contract::shares`).
use crate::error::{Context, Error, Result};
use ferry_contract::shares::{self as guest, Share};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostShare {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// Parse one `--share` value. Relative host paths are taken from `cwd` (the user's directory).
pub fn parse_spec(spec: &str, cwd: &Path) -> Result<HostShare> {
    let bad = |why: String| Error::msg(format!("--share {spec:?}: {why} (expected HOST_DIR[:GUEST_DIR][:ro])"));
    let mut parts: Vec<&str> = spec.split(':').collect();
    let mut read_only = false;
    if parts.len() > 1 && matches!(parts.last(), Some(&"ro") | Some(&"rw")) {
        read_only = parts.pop() == Some("ro");
    }
    let (host, guest) = match parts.as_slice() {
        [h] => (*h, None),
        [h, g] => (*h, Some(*g)),
        _ => return Err(bad("too many ':'".into())),
    };
    if host.is_empty() {
        return Err(bad("empty host directory".into()));
    }
    let host = std::fs::canonicalize(cwd.join(host)).map_err(|e| bad(format!("host directory {host}: {e}")))?;
    if !host.is_dir() {
        return Err(bad(format!("{} is not a directory", host.display())));
    }
    let host_str = host.to_str().ok_or_else(|| bad("the host path is not UTF-8".into()))?;
    if host_str.contains(['\t', '\n']) {
        return Err(bad("tabs and newlines are not allowed in shared paths".into()));
    }
    let guest = guest.filter(|g| !g.is_empty()).unwrap_or(host_str).to_string();
    guest::check_guest_path(&guest).map_err(bad)?;
    Ok(HostShare { host, guest, read_only })
}

/// The default: the user's home at the same path, when it can be (a home under /var, say, cannot).
pub fn default_shares() -> (Vec<HostShare>, Option<String>) {
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        return (vec![], Some("HOME is not set; nothing shared".into()));
    };
    match parse_spec(&home.display().to_string(), Path::new("/")) {
        Ok(s) => (vec![s], None),
        Err(e) => (vec![], Some(format!("home not shared: {e}"))),
    }
}

/// The list a machine boots with. `base` is where it starts: the home share for a new machine, what an
/// existing one remembers; `--no-share` (`none`) empties it. `--share` entries are added, each replacing
/// one with the same guest path.
pub fn resolve(base: Vec<HostShare>, specs: Vec<HostShare>, none: bool) -> Result<Vec<HostShare>> {
    let mut list: Vec<HostShare> =
        if none { vec![] } else { base.into_iter().filter(|b| !specs.iter().any(|s| s.guest == b.guest)).collect() };
    list.extend(specs);
    check_distinct(&list)?;
    Ok(list)
}

/// Two shares on one guest path cannot both be mounted.
pub fn check_distinct(shares: &[HostShare]) -> Result<()> {
    for (i, a) in shares.iter().enumerate() {
        if let Some(b) = shares[i + 1..].iter().find(|b| b.guest == a.guest) {
            return Err(Error::msg(format!("--share: {} and {} both go to {} in the VM", a.host.display(), b.host.display(), a.guest)));
        }
    }
    Ok(())
}

/// Guest-side list (tags ferry0, ferry1, ... in order) for fw_cfg.
pub fn fw_cfg_list(shares: &[HostShare]) -> String {
    let g: Vec<Share> =
        shares.iter().enumerate().map(|(i, s)| Share { tag: tag(i), guest: s.guest.clone(), read_only: s.read_only }).collect();
    guest::format(&g)
}

pub fn tag(i: usize) -> String {
    format!("ferry{i}")
}

/// QEMU arguments: one virtio-9p device per share. `security_model=none` (as lima's default): files are
/// created on the host by QEMU's user, that is the user who ran `ferry up`, and the guest sees the host's
/// owners and modes; a chown from the guest that the host user may not do is ignored, not an error.
pub fn qemu_args(shares: &[HostShare]) -> Vec<String> {
    let mut a = vec![];
    for (i, s) in shares.iter().enumerate() {
        // QEMU's option syntax escapes a comma by doubling it.
        let path = s.host.display().to_string().replace(',', ",,");
        a.extend([
            "-fsdev".into(),
            format!("local,id=fs{i},path={path},security_model=none{}", if s.read_only { ",readonly=on" } else { "" }),
            "-device".into(),
            format!("virtio-9p-pci,fsdev=fs{i},mount_tag={}", tag(i)),
        ]);
    }
    a
}

pub fn to_json(shares: &[HostShare]) -> String {
    let v: Vec<serde_json::Value> = shares
        .iter()
        .map(|s| serde_json::json!({"host": s.host.display().to_string(), "guest": s.guest, "read_only": s.read_only}))
        .collect();
    serde_json::Value::Array(v).to_string()
}

pub fn from_json(text: &str, file: &Path) -> Result<Vec<HostShare>> {
    let bad = || Error::msg(format!("{}: not a list of shares; fix or delete it, then ferry up again", file.display()));
    let v: serde_json::Value = serde_json::from_str(text).map_err(|_| bad())?;
    let mut out = vec![];
    for s in v.as_array().ok_or_else(bad)? {
        let host = s.get("host").and_then(|h| h.as_str()).ok_or_else(bad)?;
        let guest = s.get("guest").and_then(|h| h.as_str()).ok_or_else(bad)?;
        let read_only = s.get("read_only").and_then(|h| h.as_bool()).unwrap_or(false);
        out.push(HostShare { host: host.into(), guest: guest.into(), read_only });
    }
    Ok(out)
}

/// Write the list for fw_cfg next to the machine; None when there is nothing to share.
pub fn write_fw_cfg(shares: &[HostShare], path: &Path) -> Result<Option<PathBuf>> {
    if shares.is_empty() {
        return Ok(None);
    }
    std::fs::write(path, fw_cfg_list(shares)).ctx(|| format!("write {}", path.display()))?;
    Ok(Some(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let d = std::env::temp_dir().join(format!("ferry-shares-{}", std::process::id()));
        std::fs::create_dir_all(d.join("src")).unwrap();
        let d = std::fs::canonicalize(&d).unwrap();
        let s = parse_spec("src", &d).unwrap();
        assert_eq!(s, HostShare { host: d.join("src"), guest: d.join("src").display().to_string(), read_only: false });
        let s = parse_spec(&format!("{}:/work:ro", d.join("src").display()), Path::new("/")).unwrap();
        assert_eq!((s.guest.as_str(), s.read_only), ("/work", true));
        let s = parse_spec("src:ro", &d).unwrap();
        assert!(s.read_only && s.guest.ends_with("/src"));
        for (bad, says) in [
            ("missing-dir", "No such file"),
            ("src:/etc", "/etc belongs"),
            ("src:rel", "absolute"),
            ("a:b:c:d", "too many"),
            (":/x", "empty host"),
        ] {
            let e = parse_spec(bad, &d).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("HOST_DIR"), "{bad}: {e}");
        }
        let two = [parse_spec("src:/w", &d).unwrap(), parse_spec(&d.display().to_string(), Path::new("/")).unwrap()];
        let two = [two[0].clone(), HostShare { guest: "/w".into(), ..two[1].clone() }];
        assert!(check_distinct(&two).unwrap_err().to_string().contains("both go to /w"));
        let json = to_json(&two);
        assert_eq!(from_json(&json, Path::new("x")).unwrap(), two.to_vec());
        assert!(from_json("{}", Path::new("x")).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn resolve_adds_replaces_and_clears() {
        let s = |h: &str, g: &str| HostShare { host: h.into(), guest: g.into(), read_only: false };
        let home = vec![s("/home/a", "/home/a")];
        assert_eq!(resolve(home.clone(), vec![], false).unwrap(), home, "no flags: the base as it is");
        assert_eq!(resolve(home.clone(), vec![s("/data", "/data")], false).unwrap(), vec![s("/home/a", "/home/a"), s("/data", "/data")]);
        assert_eq!(
            resolve(home.clone(), vec![s("/other", "/home/a")], false).unwrap(),
            vec![s("/other", "/home/a")],
            "same guest path: replaced"
        );
        assert!(resolve(home.clone(), vec![], true).unwrap().is_empty(), "--no-share");
        assert_eq!(resolve(home, vec![s("/data", "/data")], true).unwrap(), vec![s("/data", "/data")], "--no-share --share");
        assert!(resolve(vec![], vec![s("/a", "/x"), s("/b", "/x")], false).is_err());
    }

    #[test]
    fn qemu_and_fw_cfg() {
        let s = vec![HostShare { host: "/home/a,b".into(), guest: "/home/a,b".into(), read_only: true }];
        let a = qemu_args(&s);
        assert_eq!(a[1], "local,id=fs0,path=/home/a,,b,security_model=none,readonly=on");
        assert_eq!(a[3], "virtio-9p-pci,fsdev=fs0,mount_tag=ferry0");
        assert_eq!(fw_cfg_list(&s), "ferry0\t/home/a,b\tro\n");
        assert_eq!(guest::parse(&fw_cfg_list(&s)).0[0].guest, "/home/a,b");
    }
}
