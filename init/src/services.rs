//! Service supervision: services are data (below); PID 1 reaps centrally (reaper.rs) and restarts exited
//! services with exponential back-off.
use crate::{log, reaper, sys};
use ferry_contract::paths;
use ferry_contract::restart::delay as backoff;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

/// sshd's log, next to the engine's (persistent when there is a data disk).
const SSHD_LOG: &str = "/var/log/sshd.log";

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
    output: Output::File(SSHD_LOG),
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
        user: Some((1000, 50, groups, paths::DOCKER_HOME)),
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

/// A service that ran this long before it exited counts as healthy: it is restarted after 1 s, and only
/// a service that keeps dying sooner waits longer (1, 2, 4 … 30 s).
const HEALTHY_AFTER: Duration = Duration::from_secs(5);

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

    /// Collect every exited child (reaper.rs) and hand each exit to its service. Returns the exits.
    pub fn reap(&mut self) -> reaper::Collected {
        let c = reaper::collect();
        for e in &c.exits {
            self.exited(e.pid, e.status);
        }
        c
    }

    /// Reap until `pid` has exited or `timeout` passes; exits of other services seen meanwhile go to them.
    fn wait_for(&mut self, pid: i32, timeout: Duration, mut collect: impl FnMut() -> reaper::Collected) -> bool {
        let end = Instant::now() + timeout;
        loop {
            let c = collect();
            for e in &c.exits {
                self.exited(e.pid, e.status);
            }
            if c.no_children || c.exits.iter().any(|e| e.pid == pid) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop one service: SIGTERM, wait up to `timeout` (reaping), then SIGKILL. Returns whether it ran.
    pub fn stop(&mut self, name: &str, timeout: Duration) -> bool {
        self.stop_with(name, timeout, reaper::collect)
    }

    fn stop_with(&mut self, name: &str, timeout: Duration, mut collect: impl FnMut() -> reaper::Collected) -> bool {
        let Some(s) = self.services.iter_mut().find(|s| s.spec.name == name) else { return false };
        s.enabled = false;
        let Some(pid) = s.pid else { return false };
        // Interactive shells ignore SIGTERM; a terminal session ends with a hang-up.
        let sig = if matches!(s.spec.output, Output::Tty(_)) { libc::SIGHUP } else { libc::SIGTERM };
        // Our own child, whose exit nobody has collected yet (only the reaper collects, and its exits clear
        // `pid`), so the pid cannot have been reused.
        let _ = sys::signal(pid, sig);
        if !self.wait_for(pid, timeout, &mut collect) {
            log::line(&format!("service {name} did not stop within {}s; killing it", timeout.as_secs()));
            let _ = sys::signal(pid, libc::SIGKILL);
            self.wait_for(pid, Duration::from_secs(5), &mut collect);
        }
        if let Some(s) = self.services.iter_mut().find(|s| s.spec.name == name) {
            s.pid = None;
        }
        true
    }

    pub fn stop_all(&mut self, timeout: Duration) {
        let names: Vec<&'static str> = self.services.iter().map(|s| s.spec.name).collect();
        for n in names {
            self.stop(n, timeout);
        }
    }
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
    spawn_in(spec, None)
}

/// Start `spec` once, in its own session, with an empty signal mask, in `cwd` (else its home, else /).
/// PID 1's reaper collects its exit: a process started outside the supervisor has no restart.
pub fn spawn_in(spec: &ServiceSpec, cwd: Option<&str>) -> std::io::Result<i32> {
    let mut cmd = std::process::Command::new(spec.argv[0]);
    cmd.args(&spec.argv[1..]);
    cmd.env_clear();
    cmd.env("PATH", crate::sys::PATH);
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
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
    // PID 1's reaper collects it (Supervisor::reap); the Child handle is dropped without waiting.
    Ok(child.id() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    /// Pids above the kernel's largest pid_max (2^22): kill(2) on them fails with ESRCH, so the tests signal nothing.
    const ENGINE_PID: i32 = i32::MAX - 1;
    const SSHD_PID: i32 = i32::MAX - 2;

    #[test]
    fn sshd_keeps_its_host_keys_where_the_contract_and_sshd_config_say() {
        let keys = format!("{}/etc/ssh", paths::SSH_HOST_KEYS);
        assert!(SSHD.argv[2].contains(&keys) && SSHD.argv[2].contains(&format!("-f {}", paths::SSH_HOST_KEYS)), "{}", SSHD.argv[2]);
        let config = include_str!("../../rootfs/overlay/etc/ssh/sshd_config.d/ferry.conf");
        assert!(config.lines().filter(|l| l.starts_with("HostKey ")).all(|l| l.contains(&keys)), "{config}");
    }

    fn running() -> Supervisor {
        let mut sup = Supervisor::default();
        sup.add(ENGINE);
        sup.add(SSHD);
        sup.services[0].pid = Some(ENGINE_PID);
        sup.services[1].pid = Some(SSHD_PID);
        for s in &mut sup.services {
            s.next_start = None;
        }
        sup
    }

    fn exits(pids: &[i32]) -> reaper::Collected {
        reaper::Collected { exits: pids.iter().map(|&pid| reaper::Exit { pid, status: 0 }).collect(), no_children: false }
    }

    #[test]
    fn an_exit_seen_while_stopping_another_service_reaches_its_owner() {
        let mut sup = running();
        let mut calls = 0;
        // sshd dies while the engine is being stopped; the engine exits on the third look.
        let stopped = sup.stop_with("engine", Duration::from_secs(5), || {
            calls += 1;
            match calls {
                1 => exits(&[SSHD_PID]),
                2 => exits(&[]),
                _ => exits(&[ENGINE_PID]),
            }
        });
        assert!(stopped);
        let (engine, sshd) = (&sup.services[0], &sup.services[1]);
        assert_eq!((engine.pid, engine.enabled, engine.next_start), (None, false, None), "stopped, not restarted");
        assert_eq!(sshd.pid, None, "sshd's exit was delivered, not lost");
        assert!(sshd.enabled && sshd.next_start.is_some(), "sshd is due to restart");
        // Nothing left to signal: a later stop of sshd sends nothing to its old pid.
        assert!(!sup.stop_with("sshd", Duration::from_millis(10), || panic!("no pid to wait for")));
    }

    #[test]
    fn a_service_that_ignores_sigterm_is_killed_after_the_timeout() {
        let mut sup = running();
        let start = Instant::now();
        let mut looks = 0;
        let stopped = sup.stop_with("engine", Duration::from_millis(200), || {
            looks += 1;
            // Gone only after SIGKILL (the second wait).
            if start.elapsed() < Duration::from_millis(200) {
                exits(&[])
            } else {
                exits(&[ENGINE_PID])
            }
        });
        assert!(stopped && looks >= 2);
        assert_eq!(sup.services[0].pid, None);
        assert_eq!(sup.services[1].pid, Some(SSHD_PID), "the other service is untouched");
    }
}
