//! containerd, started as soon as the data disk is mounted: its start (a 54 MB Go binary read from the
//! root image, then its plugins) overlaps the network and clock phases instead of following dockerd's,
//! and dockerd, given `--containerd`, connects at once instead of retrying with back-off. The engine
//! owns it from then on: it hands it to dockerd, replaces it when a hook moved /var/lib/docker, and
//! starts it again when it is gone (engine/src/containerd.rs). PID 1 only reaps it.
use crate::error::{Error, Result};
use crate::sys;
use ferry_contract::{containerd as c, paths};
use std::os::unix::process::CommandExt;

pub fn start() -> Result<String> {
    // dockerd's modes for its exec-root and data root (it would create them so).
    sys::mkdir_p(c::STATE_DIR, 0o700)?;
    sys::mkdir_p(c::DATA_ROOT, 0o710)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths::DOCKER_LOG)
        .map_err(|e| Error::io(format!("open {}", paths::DOCKER_LOG), e))?;
    let log2 = log.try_clone().map_err(|e| Error::io(format!("dup {}", paths::DOCKER_LOG), e))?;
    let mut cmd = std::process::Command::new(c::ARGV[0]);
    cmd.args(&c::ARGV[1..])
        .env_clear()
        .env("PATH", sys::PATH)
        .current_dir(c::DATA_ROOT)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2);
    sys::unblock_signals_in_child(&mut cmd);
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| if libc::setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
    }
    let child = cmd.spawn().map_err(|e| Error::io(format!("start {}", c::BINARY), e))?;
    let pid = child.id();
    // PID 1's reaper collects its exit; the handle is dropped without waiting. dockerd's format: no newline.
    sys::write_atomic(c::PID_FILE, pid.to_string().as_bytes(), 0o644)?;
    Ok(format!("containerd: started (pid {pid}); the engine hands it to dockerd"))
}
