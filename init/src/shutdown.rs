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
    fn cmd(self) -> libc::c_int {
        match self {
            Action::PowerOff => libc::RB_POWER_OFF,
            Action::Reboot => libc::RB_AUTOBOOT,
            Action::Halt => libc::RB_HALT_SYSTEM,
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
    // SAFETY: sync(2) has no arguments.
    unsafe { libc::sync() };
    unmount_all();
    all.done();
    log::line(&format!("{action:?} now"));
    loop {
        sys::reboot(action.cmd());
        std::thread::sleep(Duration::from_secs(5));
    }
}

fn kill_everything() {
    for (sig, wait) in [(libc::SIGTERM, 3), (libc::SIGKILL, 2)] {
        // SAFETY: kill(-1) signals every process but PID 1.
        unsafe { libc::kill(-1, sig) };
        let end = Instant::now() + Duration::from_secs(wait);
        while Instant::now() < end {
            let mut st = 0;
            // SAFETY: waitpid with a valid status pointer.
            let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if r < 0 {
                break; // no children left
            }
            if r == 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Unmount in reverse mount order; what cannot be unmounted (/, API filesystems) is remounted read-only.
fn unmount_all() {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else { return };
    let targets: Vec<String> = mounts.lines().filter_map(|l| l.split(' ').nth(1)).map(|s| s.replace("\\040", " ")).collect();
    for t in targets.iter().rev() {
        if matches!(t.as_str(), "/" | "/proc" | "/sys" | "/dev") || t.starts_with("/run/ferry") {
            continue;
        }
        if sys::umount(t, 0).is_err() {
            let _ = sys::mount("", t, "", libc::MS_REMOUNT | libc::MS_RDONLY, "");
        }
    }
}
