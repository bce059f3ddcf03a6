//! Orderly shutdown: engine first (containers get SIGTERM and their grace period), then the other
//! services, then every remaining process, sync, unmount, reboot(2).
use crate::log::{self, Phase};
use crate::services::Supervisor;
use crate::sys;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    PowerOff,
    Reboot,
    Halt,
}

impl Action {
    fn cmd(self) -> sys::RebootCommand {
        match self {
            Action::PowerOff => sys::RebootCommand::PowerOff,
            Action::Reboot => sys::RebootCommand::Restart,
            Action::Halt => sys::RebootCommand::Halt,
        }
    }
}

/// The engine manager stops dockerd, which gives containers its shutdown timeout; leave room for that.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(25);

pub fn run(sup: &mut Supervisor, action: Action) -> ! {
    log::line(&format!("[shutdown] {action:?} requested; stopping the engine"));
    let all = Phase::start("shutdown");
    let t = Instant::now();
    if sup.stop("engine", ENGINE_TIMEOUT) {
        log::line(&format!("[shutdown] engine stopped in {:.2}s", t.elapsed().as_secs_f64()));
    }
    sup.stop_all(Duration::from_secs(5));
    kill_everything();
    swap_off_all();
    rustix::fs::sync();
    let busy = unmount_all();
    if !busy.is_empty() {
        // The root image's copy on the data disk keeps that filesystem busy until the power goes.
        let why = if crate::rootcopy::on_disk() { " (the root image runs from the data disk)" } else { "" };
        log::line(&format!("[shutdown] still busy, remounted read-only{why}: {}", busy.join(" ")));
    }
    // Whatever the read-only remounts flushed is on the disks before the power goes.
    rustix::fs::sync();
    all.done();
    log::line(&format!("{action:?} now"));
    loop {
        if let Err(e) = sys::reboot(action.cmd()) {
            log::warn(&format!("{e}; trying again"));
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

fn kill_everything() {
    for (sig, wait) in [(libc::SIGTERM, 3), (libc::SIGKILL, 2)] {
        // SAFETY: kill(-1) signals every process but PID 1.
        unsafe { libc::kill(-1, sig) };
        let end = Instant::now() + Duration::from_secs(wait);
        // The services are stopped by now: what exits here has no owner to tell.
        while Instant::now() < end {
            if crate::reaper::collect().no_children {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Swap partitions off, so nothing is paged to the data disk while its filesystem goes away.
fn swap_off_all() {
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    for dev in swaps.lines().skip(1).filter_map(|l| l.split_whitespace().next()) {
        if let Ok(c) = sys::cstr(dev) {
            // SAFETY: valid C string.
            if unsafe { libc::swapoff(c.as_ptr()) } != 0 {
                log::line(&format!("[shutdown] swapoff {dev}: {}", std::io::Error::last_os_error()));
            }
        }
    }
}

/// Unmount in reverse mount order; what cannot be unmounted (/, API filesystems) is remounted read-only.
/// Returns the mount points that were busy (other than the root and API filesystems).
fn unmount_all() -> Vec<String> {
    let mut busy = Vec::new();
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else { return busy };
    let targets: Vec<String> = mounts.lines().filter_map(|l| l.split(' ').nth(1)).map(|s| s.replace("\\040", " ")).collect();
    for t in targets.iter().rev() {
        if matches!(t.as_str(), "/" | "/proc" | "/sys" | "/dev") || t.starts_with(ferry_contract::paths::RUN_DIR) {
            continue;
        }
        if sys::umount(t, sys::UnmountFlags::empty()).is_err() {
            let _ = sys::remount_read_only(t);
            if t.starts_with("/mnt/") || t.starts_with("/var") || t == "/tmp" || t.starts_with("/etc") {
                busy.push(t.clone());
            }
        }
    }
    busy
}
