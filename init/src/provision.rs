//! Installing userdata.tar's parts. Every boot: `.ssh/authorized_keys*` into the docker user's home (owned
//! by docker, 0700/0600), and every other entry into the home too, as boot2docker extracted the whole
//! archive there (dotfiles, `.docker/config.json`). Once, when the disk is formatted (or every boot for fw_cfg, which the host
//! supplies each time): Ferry's `tls/*.pem` and `profile` into /var/lib/boot2docker.
use crate::error::Result;
use crate::{fwcfg, log, sys};
use ferry_contract::paths::{self, B2D, DOCKER_HOME as HOME};
use ferry_contract::userdata::{self, Entry, Kind};

pub const DOCKER_UID: u32 = 1000;
pub const STAFF_GID: u32 = 50;

/// `.ssh/authorized_keys` and `.ssh/authorized_keys2` into `home`/.ssh. Returns how many were installed.
pub fn install_keys(home: &str, entries: &[Entry]) -> Result<usize> {
    let mut n = 0;
    for e in entries {
        let (Some(name), Kind::File(data)) = (e.path.strip_prefix(".ssh/").filter(|_| is_key(&e.path)), &e.kind) else { continue };
        let dir = format!("{home}/.ssh");
        sys::mkdir_p(&dir, 0o700)?;
        sys::chown(home, DOCKER_UID, STAFF_GID)?;
        sys::chown(&dir, DOCKER_UID, STAFF_GID)?;
        let path = format!("{dir}/{name}");
        sys::write_atomic(&path, data, 0o600)?;
        sys::chown(&path, DOCKER_UID, STAFF_GID)?;
        n += 1;
    }
    Ok(n)
}

fn is_key(path: &str) -> bool {
    matches!(path, ".ssh/authorized_keys" | ".ssh/authorized_keys2")
}

/// Entries that are Ferry's own (the format-me marker, the system's TLS files and profile): not home files.
fn is_system(path: &str) -> bool {
    path == userdata::MAGIC || path == "profile" || path == "tls" || path.starts_with("tls/")
}

/// Every other entry (dotfiles, `.docker/config.json`, `.ssh/config`...) into `home`, owned by
/// docker:staff with the archive's permission bits (no set-id bits). Returns how many. An entry that cannot
/// be written (a file where a directory is, say) is named and skipped.
pub fn install_home(home: &str, entries: &[Entry]) -> Result<usize> {
    let mut n = 0;
    for e in entries {
        if is_system(&e.path) || is_key(&e.path) || e.path.is_empty() {
            continue;
        }
        match install_one(home, e) {
            Ok(()) => n += 1,
            Err(err) => log::warn(&format!("userdata: {}: {err}; skipped", e.path)),
        }
    }
    Ok(n)
}

fn install_one(home: &str, e: &Entry) -> Result<()> {
    // Parents first, each owned by docker, so the user can manage what the archive made.
    let mut dir = home.to_string();
    let parts: Vec<&str> = e.path.split('/').collect();
    let (last, parents) = parts.split_last().ok_or_else(|| crate::error::Error::msg("empty path"))?;
    for p in parents {
        dir = format!("{dir}/{p}");
        if !std::path::Path::new(&dir).is_dir() {
            sys::mkdir_p(&dir, 0o755)?;
            sys::chown(&dir, DOCKER_UID, STAFF_GID)?;
        }
    }
    let path = format!("{dir}/{last}");
    match &e.kind {
        Kind::Dir => {
            sys::mkdir_p(&path, 0o700)?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode((e.mode & 0o777) | 0o700))
                .map_err(|err| crate::error::Error::io(format!("chmod {path}"), err))?;
        }
        Kind::File(data) => sys::write_atomic(&path, data, e.mode & 0o777)?,
    }
    sys::chown(&path, DOCKER_UID, STAFF_GID)
}

/// `tls/{ca,server,server-key}.pem` into `b2d`/tls and `profile` into `b2d`/profile. Returns how many.
pub fn install_persistent(b2d: &str, entries: &[Entry]) -> Result<usize> {
    let mut n = 0;
    for e in entries {
        let Kind::File(data) = &e.kind else { continue };
        if let Some(name) = e.path.strip_prefix("tls/") {
            if !matches!(name, "ca.pem" | "server.pem" | "server-key.pem") {
                log::warn(&format!("userdata: skipping {}", e.path));
                continue;
            }
            sys::mkdir_p(format!("{b2d}/tls"), 0o700)?;
            let mode = if name.ends_with("key.pem") { 0o600 } else { 0o644 };
            sys::write_atomic(&format!("{b2d}/tls/{name}"), data, mode)?;
            n += 1;
        } else if e.path == "profile" {
            sys::write_atomic(&format!("{b2d}/profile"), data, 0o644)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Keys and the rest of the archive into the docker user's home; says how many of each.
fn install_user(entries: &[Entry]) -> Result<String> {
    let keys = install_keys(HOME, entries)?;
    let other = install_home(HOME, entries)?;
    Ok(format!("{keys} ssh key file(s), {other} other entr{} in {HOME}", if other == 1 { "y" } else { "ies" }))
}

/// The userdata phase: the disk's stored userdata.tar (when there is a data disk) or the payload of a
/// format-me disk that could not be formatted (`fallback`), then fw_cfg's.
/// Malformed input is reported with its source and skipped, never fatal.
pub fn run(persistent: bool, fallback: &[Entry]) -> Result<String> {
    let mut parts = Vec::new();
    if !fallback.is_empty() {
        parts.push(format!("format-me disk (not formatted): {}", install_user(fallback)?));
    }
    if persistent {
        let path = paths::USERDATA;
        match std::fs::read(path) {
            Ok(raw) => match userdata::parse(&raw) {
                Ok(entries) => parts.push(format!("{path}: {}", install_user(&entries)?)),
                Err(e) => log::line(&format!("ERROR: {path}: {e}; no SSH keys from the disk")),
            },
            Err(e) => log::line(&format!("ERROR: read {path}: {e}; no SSH keys from the disk")),
        }
    }
    match fwcfg::read_fwcfg()? {
        None => parts.push("no fw_cfg userdata".into()),
        Some(raw) => match userdata::parse(&raw) {
            Ok(entries) => {
                let user = install_user(&entries)?;
                let other = install_persistent(B2D, &entries)?;
                parts.push(format!("fw_cfg userdata: {user}, {other} TLS/profile file(s)"));
            }
            Err(e) => {
                log::line(&format!("ERROR: {}: {e}; continuing without it", fwcfg::userdata_file()));
                parts.push("fw_cfg userdata rejected".into());
            }
        },
    }
    Ok(parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn the_whole_archive_lands_in_the_home_except_ferrys_own_entries() {
        let home = std::env::temp_dir().join(format!("ferry-home-{}", std::process::id()));
        let home_s = home.to_str().unwrap();
        sys::mkdir_p(home_s, 0o755).unwrap();
        let entries = vec![
            userdata::file(userdata::MAGIC, 0o644, userdata::MAGIC),
            userdata::dir(".ssh", 0o700),
            userdata::file(".ssh/authorized_keys", 0o644, "ssh-ed25519 AAAA k\n"),
            userdata::file(".ssh/config", 0o644, "Host x\n"),
            userdata::file(".docker/config.json", 0o4755, "{}"),
            userdata::file(".profile", 0o644, "export A=1\n"),
            userdata::file("tls/server-key.pem", 0o600, "secret"),
            userdata::file("profile", 0o644, "EXTRA_ARGS=x"),
        ];
        assert_eq!(install_keys(home_s, &entries).unwrap(), 1);
        assert_eq!(install_home(home_s, &entries).unwrap(), 4);
        assert_eq!(std::fs::read_to_string(home.join(".profile")).unwrap(), "export A=1\n");
        assert_eq!(std::fs::read_to_string(home.join(".ssh/config")).unwrap(), "Host x\n");
        let cfg = std::fs::metadata(home.join(".docker/config.json")).unwrap();
        assert_eq!(cfg.permissions().mode() & 0o7777, 0o755, "set-id bits dropped");
        if sys::chown(home_s, 0, 0).is_ok() {
            assert_eq!((cfg.uid(), cfg.gid()), (DOCKER_UID, STAFF_GID));
            assert_eq!(std::fs::metadata(home.join(".docker")).unwrap().uid(), DOCKER_UID);
        }
        assert_eq!(std::fs::metadata(home.join(".ssh/authorized_keys")).unwrap().permissions().mode() & 0o777, 0o600);
        for system in ["tls", "profile", userdata::MAGIC] {
            assert!(!home.join(system).exists(), "{system} stays out of the home");
        }
        // A file where the archive wants a directory is named and skipped; the rest still lands.
        std::fs::write(home.join(".config"), "x").unwrap();
        let more = vec![userdata::file(".config/app.ini", 0o644, "a"), userdata::file(".vimrc", 0o644, "b")];
        assert_eq!(install_home(home_s, &more).unwrap(), 1);
        let _ = std::fs::remove_dir_all(home);
    }
}
