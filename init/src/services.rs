//! Service supervision: services are data (below); PID 1 reaps centrally with waitpid(-1) and restarts
//! exited services with exponential back-off.
use crate::log;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Output {
    /// stdout/stderr to the console (the engine manager's few lines belong there).
    Console,
    /// Appended to a log file.
    File(&'static str),
    /// An interactive login on a terminal (autologin console).
    Tty(&'static str),
}

#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub name: &'static str,
    pub argv: &'static [&'static str],
    pub output: Output,
    /// (uid, gid, supplementary groups, home); None runs as root.
    pub user: Option<(u32, u32, &'static [u32], &'static str)>,
}

/// Host keys are made (once; they persist with the data disk) right before sshd starts, so slow RSA key
/// generation never holds up the boot.
pub const SSHD: ServiceSpec = ServiceSpec {
    name: "sshd",
    argv: &[
        "/bin/sh",
        "-c",
        "mkdir -p /run/sshd /var/lib/boot2docker/ssh/etc/ssh && ssh-keygen -A -f /var/lib/boot2docker/ssh && exec /usr/sbin/sshd -D -e",
    ],
    output: Output::File("/var/log/sshd.log"),
    user: None,
};

pub const ENGINE: ServiceSpec =
    ServiceSpec { name: "engine", argv: &["/usr/local/bin/ferry-engine", "serve"], output: Output::Console, user: None };

/// docker (1000), staff (50), with the docker group looked up at boot.
pub fn console_login(tty: &'static str, docker_gid: u32) -> ServiceSpec {
    let groups: &'static [u32] = Box::leak(vec![50, docker_gid].into_boxed_slice());
    ServiceSpec {
        name: if tty.starts_with("ttyS") { "console-serial" } else { "console-vt" },
        argv: &["/bin/sh", "-l"],
        output: Output::Tty(tty),
        user: Some((1000, 50, groups, "/home/docker")),
    }
}

struct Service {
    spec: ServiceSpec,
    pid: Option<i32>,
    started: Instant,
    failures: u32,
    next_start: Option<Instant>,
    enabled: bool,
}

#[derive(Default)]
pub struct Supervisor {
    services: Vec<Service>,
}

const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A service that ran this long before it exited counts as healthy: it is restarted after 1 s, and only
/// a service that keeps dying sooner waits longer (1, 2, 4 … 30 s).
const HEALTHY_AFTER: Duration = Duration::from_secs(5);

pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(5)).min(BACKOFF_MAX)
}

impl Supervisor {
    pub fn add(&mut self, spec: ServiceSpec) {
        self.services.push(Service {
            spec,
            pid: None,
            started: Instant::now(),
            failures: 0,
            next_start: Some(Instant::now()),
            enabled: true,
        });
    }

    /// Start every enabled service that is due.
    pub fn tick(&mut self) {
        let now = Instant::now();
        for s in self.services.iter_mut() {
            if s.enabled && s.pid.is_none() && s.next_start.is_some_and(|t| t <= now) {
                match spawn(&s.spec) {
                    Ok(pid) => {
                        s.pid = Some(pid);
                        s.started = now;
                        s.next_start = None;
                    }
                    Err(e) => {
                        s.failures += 1;
                        let d = backoff(s.failures);
                        log::line(&format!("service {} failed to start: {e}; retrying in {}s", s.spec.name, d.as_secs()));
                        s.next_start = Some(now + d);
                    }
                }
            }
        }
    }

    /// A child exited: if it was a service, schedule its restart.
    pub fn exited(&mut self, pid: i32, status: i32) {
        let Some(s) = self.services.iter_mut().find(|s| s.pid == Some(pid)) else { return };
        s.pid = None;
        if !s.enabled {
            return;
        }
        if s.started.elapsed() > HEALTHY_AFTER {
            s.failures = 0;
        }
        s.failures += 1;
        let d = backoff(s.failures);
        log::line(&format!("service {} exited ({}); restarting in {}s", s.spec.name, describe(status), d.as_secs()));
        s.next_start = Some(Instant::now() + d);
    }

    /// Time until the next scheduled start, for the main loop's wait.
    pub fn next_due(&self) -> Option<Duration> {
        let now = Instant::now();
        self.services
            .iter()
            .filter(|s| s.enabled && s.pid.is_none())
            .filter_map(|s| s.next_start)
            .map(|t| t.saturating_duration_since(now))
            .min()
    }

    /// Stop one service: SIGTERM, wait up to `timeout` (reaping), then SIGKILL. Returns whether it ran.
    pub fn stop(&mut self, name: &str, timeout: Duration) -> bool {
        let Some(s) = self.services.iter_mut().find(|s| s.spec.name == name) else { return false };
        s.enabled = false;
        let Some(pid) = s.pid else { return false };
        // Interactive shells ignore SIGTERM; a terminal session ends with a hang-up.
        let sig = if matches!(s.spec.output, Output::Tty(_)) { libc::SIGHUP } else { libc::SIGTERM };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, sig) };
        if !wait_pid(pid, timeout) {
            log::line(&format!("service {name} did not stop within {}s; killing it", timeout.as_secs()));
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait_pid(pid, Duration::from_secs(5));
        }
        s.pid = None;
        true
    }

    pub fn stop_all(&mut self, timeout: Duration) {
        let names: Vec<&'static str> = self.services.iter().map(|s| s.spec.name).collect();
        for n in names {
            self.stop(n, timeout);
        }
    }
}

/// Reap children until `pid` is gone or the timeout passes.
pub fn wait_pid(pid: i32, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        let mut st = 0;
        // SAFETY: waitpid with a valid status pointer.
        let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
        if r == pid || (r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)) {
            return true;
        }
        if r <= 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    false
}

pub fn describe(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {status}")
    }
}

fn spawn(spec: &ServiceSpec) -> std::io::Result<i32> {
    let mut cmd = std::process::Command::new(spec.argv[0]);
    cmd.args(&spec.argv[1..]);
    cmd.env_clear();
    cmd.env("PATH", crate::sys::PATH);
    match spec.output {
        Output::Console => {}
        Output::File(path) => {
            let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            cmd.stdin(std::process::Stdio::null()).stdout(f.try_clone()?).stderr(f);
        }
        Output::Tty(_) => {
            cmd.env("TERM", "linux");
        }
    }
    if let Some((_, _, _, home)) = spec.user {
        cmd.env("HOME", home).env("USER", "docker").env("LOGNAME", "docker").current_dir(home);
    }
    let output = spec.output;
    let user = spec.user;
    let tty_path = match output {
        Output::Tty(t) => Some(crate::sys::cstr(&format!("/dev/{t}")).map_err(|e| std::io::Error::other(e.to_string()))?),
        _ => None,
    };
    let groups: Vec<libc::gid_t> = user.map(|u| u.2.to_vec()).unwrap_or_default();
    crate::sys::unblock_signals_in_child(&mut cmd);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(t) = &tty_path {
                let fd = libc::open(t.as_ptr(), libc::O_RDWR);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::ioctl(fd, libc::TIOCSCTTY, 1);
                for target in 0..3 {
                    libc::dup2(fd, target);
                }
                if fd > 2 {
                    libc::close(fd);
                }
            }
            if let Some((uid, gid, _, _)) = user {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // PID 1 reaps with waitpid(-1); the Child handle is dropped without waiting.
    Ok(child.id() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(50), BACKOFF_MAX);
    }
}
