//! containerd, started as soon as the data disk is mounted: its start (a 54 MB Go binary read from the
//! root image, then its plugins) overlaps the network and clock phases instead of following dockerd's,
//! and dockerd, given `--containerd`, connects at once instead of retrying with back-off. The engine
//! owns it from then on: it hands it to dockerd, replaces it when a hook moved /var/lib/docker, and
//! starts it again when it is gone (engine/src/containerd.rs). PID 1 only reaps it.
use crate::error::{Error, Result};
use crate::services::{self, Output, ServiceSpec};
use crate::sys;
use ferry_contract::{containerd as c, paths};

/// Started once, not supervised: its output goes to dockerd's log, as when dockerd starts it.
const CONTAINERD: ServiceSpec = ServiceSpec { name: "containerd", argv: c::ARGV, output: Output::File(paths::DOCKER_LOG), user: None };

pub fn start() -> Result<String> {
    // dockerd's modes for its exec-root and data root (it would create them so).
    sys::mkdir_p(c::STATE_DIR, 0o700)?;
    sys::mkdir_p(c::DATA_ROOT, 0o710)?;
    // Its working directory is the data root: the engine checks it is still /var/lib/docker.
    let pid = services::spawn_in(&CONTAINERD, Some(c::DATA_ROOT)).map_err(|e| Error::io(format!("start {}", c::BINARY), e))?;
    // dockerd's format: no newline.
    sys::write_atomic(c::PID_FILE, pid.to_string().as_bytes(), 0o644)?;
    Ok(format!("containerd: started (pid {pid}); the engine hands it to dockerd"))
}
