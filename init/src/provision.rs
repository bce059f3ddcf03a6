//! Installing userdata.tar's parts. Every boot: `.ssh/authorized_keys*` into the docker user's home (owned
//! by docker, 0700/0600). Once, when the disk is formatted (or every boot for fw_cfg, which the host
//! supplies each time): Ferry's `tls/*.pem` and `profile` into /var/lib/boot2docker.
use crate::error::Result;
use crate::userdata::{self, Entry, Kind};
use crate::{fwcfg, log, sys};

pub const HOME: &str = "/home/docker";
pub const B2D: &str = "/var/lib/boot2docker";
pub const DOCKER_UID: u32 = 1000;
pub const STAFF_GID: u32 = 50;

/// `.ssh/authorized_keys` and `.ssh/authorized_keys2` into `home`/.ssh. Returns how many were installed.
pub fn install_keys(home: &str, entries: &[Entry]) -> Result<usize> {
    let mut n = 0;
    for e in entries {
        let (Some(name), Kind::File(data)) = (e.path.strip_prefix(".ssh/"), &e.kind) else { continue };
        if !matches!(name, "authorized_keys" | "authorized_keys2") {
            log::warn(&format!("userdata: skipping {} (only authorized_keys is used)", e.path));
            continue;
        }
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
        } else if e.path != userdata::MAGIC && !e.path.starts_with(".ssh") && e.path != "tls" {
            log::warn(&format!("userdata: skipping unknown entry {}", e.path));
        }
    }
    Ok(n)
}

/// The userdata phase: the disk's stored userdata.tar (when there is a data disk) or the payload of a
/// format-me disk that could not be formatted (`fallback`), then fw_cfg's.
/// Malformed input is reported with its source and skipped, never fatal.
pub fn run(persistent: bool, fallback: &[Entry]) -> Result<String> {
    let mut parts = Vec::new();
    if !fallback.is_empty() {
        parts.push(format!("format-me disk (not formatted): {} ssh key file(s)", install_keys(HOME, fallback)?));
    }
    if persistent {
        let path = format!("{B2D}/userdata.tar");
        match std::fs::read(&path) {
            Ok(raw) => match userdata::parse(&raw) {
                Ok(entries) => parts.push(format!("{path}: {} ssh key file(s)", install_keys(HOME, &entries)?)),
                Err(e) => log::line(&format!("ERROR: {path}: {e}; no SSH keys from the disk")),
            },
            Err(e) => log::line(&format!("ERROR: read {path}: {e}; no SSH keys from the disk")),
        }
    }
    match fwcfg::read_fwcfg()? {
        None => parts.push("no fw_cfg userdata".into()),
        Some(raw) => match userdata::parse(&raw) {
            Ok(entries) => {
                let keys = install_keys(HOME, &entries)?;
                let other = install_persistent(B2D, &entries)?;
                parts.push(format!("fw_cfg userdata: {keys} ssh key file(s), {other} TLS/profile file(s)"));
            }
            Err(e) => {
                log::line(&format!("ERROR: {}: {e}; continuing without it", fwcfg::FWCFG_USERDATA));
                parts.push("fw_cfg userdata rejected".into());
            }
        },
    }
    Ok(parts.join("; "))
}
