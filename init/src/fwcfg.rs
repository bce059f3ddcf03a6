//! Provisioning without a disk: QEMU's fw_cfg carries `opt/ferry/userdata.tar`; install its parts.
use crate::error::{Error, Result};
use crate::userdata::{self, Kind};
use crate::{log, sys};

pub const FWCFG_USERDATA: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/ferry/userdata.tar/raw";
pub const HOME: &str = "/home/docker";
pub const TLS_DIR: &str = "/var/lib/boot2docker/tls";
pub const DOCKER_UID: u32 = 1000;
pub const STAFF_GID: u32 = 50;

pub fn read_fwcfg() -> Result<Option<Vec<u8>>> {
    match std::fs::read(FWCFG_USERDATA) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {FWCFG_USERDATA}"), e)),
    }
}

/// Install userdata entries: `.ssh/*` into the docker user's home (owned by docker, 0700/0600), `tls/*.pem`
/// into /var/lib/boot2docker/tls. Anything else is reported and skipped. Returns a summary.
pub fn install(entries: &[userdata::Entry]) -> Result<String> {
    let mut keys = 0;
    let mut tls = 0;
    for e in entries {
        let Kind::File(data) = &e.kind else { continue };
        if let Some(name) = e.path.strip_prefix(".ssh/") {
            if !matches!(name, "authorized_keys" | "authorized_keys2") {
                log::warn(&format!("userdata: skipping {} (only authorized_keys is used)", e.path));
                continue;
            }
            let dir = format!("{HOME}/.ssh");
            sys::mkdir_p(&dir, 0o700)?;
            sys::chown(HOME, DOCKER_UID, STAFF_GID)?;
            sys::chown(&dir, DOCKER_UID, STAFF_GID)?;
            let path = format!("{dir}/{name}");
            sys::write_atomic(&path, data, 0o600)?;
            sys::chown(&path, DOCKER_UID, STAFF_GID)?;
            keys += 1;
        } else if let Some(name) = e.path.strip_prefix("tls/") {
            if !matches!(name, "ca.pem" | "server.pem" | "server-key.pem") {
                log::warn(&format!("userdata: skipping {}", e.path));
                continue;
            }
            sys::mkdir_p(TLS_DIR, 0o700)?;
            let mode = if name.ends_with("key.pem") { 0o600 } else { 0o644 };
            sys::write_atomic(&format!("{TLS_DIR}/{name}"), data, mode)?;
            tls += 1;
        } else if e.path != userdata::MAGIC {
            log::warn(&format!("userdata: skipping unknown entry {}", e.path));
        }
    }
    Ok(format!("{keys} ssh key file(s), {tls} TLS file(s)"))
}

/// The provisioning phase for the fw_cfg source. Malformed input is reported and skipped, never fatal.
pub fn provision() -> Result<String> {
    let Some(raw) = read_fwcfg()? else {
        return Ok("no fw_cfg userdata".into());
    };
    match userdata::parse(&raw) {
        Ok(entries) => install(&entries).map(|s| format!("fw_cfg userdata: {s}")),
        Err(e) => {
            log::line(&format!("ERROR: {FWCFG_USERDATA}: {e}; continuing without it"));
            Ok("fw_cfg userdata rejected".into())
        }
    }
}
