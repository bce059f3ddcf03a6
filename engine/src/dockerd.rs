//! dockerd under the engine manager: start, stop (graceful, containers get SIGTERM), status, restart with
//! back-off when it dies unasked, readiness by `GET /_ping` on its unix socket.
use crate::containerd;
use crate::error::{Context, Result};
use rustix::process::{Pid, Signal};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

pub const SOCKET: &str = ferry_contract::paths::DOCKER_SOCK;
/// dockerd's own flags: unix socket only (the front door owns TCP).
pub const ARGS: &[&str] = &["-H", "unix:///var/run/docker.sock"];
/// Defaults a user may override, from the profile's flags (long or short) or daemon.json (by its key):
/// (flag, short flag, daemon.json key, value). overlay2 on cgroup v2; containers get 15 s to stop.
pub const DEFAULTS: &[(&str, &str, &str, &str)] =
    &[("--storage-driver", "-s", "storage-driver", "overlay2"), ("--shutdown-timeout", "", "shutdown-timeout", "15")];
pub const STOP_TIMEOUT: Duration = Duration::from_secs(22);
/// dockerd writes its pid here; a dockerd left by a previous engine manager is found through it.
pub const PID_FILE: &str = "/var/run/docker.pid";
/// containerd (Ferry's, or dockerd's own); it may outlive dockerd by a moment, and a dockerd started
/// meanwhile would attach to it while it shuts down.
const CONTAINERD_PID_FILE: &str = ferry_contract::containerd::PID_FILE;

/// Debian installs dockerd in /usr/sbin; other layouts in /usr/bin.
pub fn binary() -> PathBuf {
    ["/usr/sbin/dockerd", "/usr/bin/dockerd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/dockerd"))
}

pub struct Dockerd {
    pub binary: PathBuf,
    pub log_file: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    /// A dockerd that a previous engine manager started (it was killed; dockerd and its containers lived
    /// on). We cannot wait() for it, so we watch it by pid.
    adopted: Option<i32>,
    /// From the profile: extra flags and environment for the next start.
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Top-level keys of the config file dockerd reads.
    pub config_keys: Vec<String>,
    /// dockerd runs with Ferry's containerd (`--containerd`), which the engine then keeps running.
    external_containerd: bool,
    /// The containerd the engine started (PID 1 started the first one), to reap.
    containerd_child: Option<Child>,
}

impl Dockerd {
    pub fn new(binary: PathBuf, log_file: PathBuf, socket: PathBuf) -> Dockerd {
        Dockerd {
            binary,
            log_file,
            socket,
            child: None,
            adopted: None,
            extra_args: vec![],
            env: vec![],
            config_keys: vec![],
            external_containerd: false,
            containerd_child: None,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id()).or(self.adopted.filter(|p| alive(*p)).map(|p| p as u32))
    }

    /// Take over a dockerd that is still running from a previous engine manager, so that a crash of the
    /// manager neither stops the containers nor makes the next start fail on dockerd's pid file.
    /// Returns its pid.
    pub fn adopt(&mut self, pid_file: &Path) -> Option<i32> {
        let pid = running_as(pid_file, "dockerd")?;
        self.adopted = Some(pid);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        self.external_containerd = cmdline.split(|b| *b == 0).any(|a| a == b"--containerd");
        Some(pid)
    }

    /// Before a start: dockerd gets Ferry's containerd, started again or replaced if need be, unless its
    /// settings make it start its own (containerd::dockerd_owns_it). Returns what the log should say.
    pub async fn prepare_containerd(&mut self) -> Option<String> {
        self.reap_containerd();
        let current = containerd::running();
        if let Some(why) = containerd::dockerd_owns_it(&self.extra_args, &self.config_keys) {
            self.external_containerd = false;
            let mut note = format!("containerd: dockerd starts its own ({why})");
            if let Some(pid) = current.filter(|p| containerd::in_place(*p)) {
                containerd::stop(pid).await;
                note.push_str("; Ferry's is stopped");
            }
            return Some(note);
        }
        let mut note = None;
        if let Some(pid) = current {
            if containerd::in_place(pid) {
                self.external_containerd = true;
                return None;
            }
            containerd::stop(pid).await;
            note = Some(format!("containerd {pid} did not run in {}: replaced", ferry_contract::containerd::DATA_ROOT));
        }
        Some(match self.start_containerd() {
            Ok(pid) => format!("containerd: started (pid {pid}){}", note.map(|n| format!("; {n}")).unwrap_or_default()),
            Err(e) => format!("ERROR: {e}; dockerd starts its own containerd"),
        })
    }

    fn start_containerd(&mut self) -> Result<i32> {
        self.external_containerd = false;
        let (child, pid) = containerd::spawn(&self.log_file)?;
        self.containerd_child = Some(child);
        self.external_containerd = true;
        Ok(pid)
    }

    /// Collect the exit of a containerd the engine started.
    fn reap_containerd(&mut self) {
        if let Some(c) = self.containerd_child.as_mut() {
            if !matches!(c.try_wait(), Ok(None)) {
                self.containerd_child = None;
            }
        }
    }

    /// While dockerd runs with Ferry's containerd: start it again if it is gone (dockerd reconnects).
    pub fn keep_containerd(&mut self) -> Option<String> {
        if !self.external_containerd || self.pid().is_none() {
            return None;
        }
        self.reap_containerd();
        if containerd::running().is_some() {
            return None;
        }
        Some(match self.start_containerd() {
            Ok(pid) => format!("containerd was gone; started again (pid {pid})"),
            Err(e) => format!("ERROR: containerd was gone and did not start again: {e}"),
        })
    }

    /// ARGS, the defaults the profile's flags and the config file's keys do not set, then the profile's flags.
    /// (dockerd refuses a setting given both as a flag and in the config file.)
    pub fn args(&self) -> Vec<String> {
        let mut out: Vec<String> = ARGS.iter().map(|a| a.to_string()).collect();
        for (flag, short, key, value) in DEFAULTS {
            let by_flag = self
                .extra_args
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")) || (!short.is_empty() && a.starts_with(short)));
            if !by_flag && !self.config_keys.iter().any(|k| k == key) {
                out.extend([flag.to_string(), value.to_string()]);
            }
        }
        out.extend(self.extra_args.iter().cloned());
        if self.external_containerd {
            out.extend(["--containerd".to_string(), ferry_contract::containerd::SOCKET.to_string()]);
        }
        out
    }

    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() || self.adopted.is_some_and(alive) {
            return Ok(());
        }
        self.adopted = None;
        if let Some(dir) = self.log_file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .ctx(|| format!("open {}", self.log_file.display()))?;
        let log2 = log.try_clone().ctx(|| format!("dup {}", self.log_file.display()))?;
        let child = Command::new(&self.binary)
            .args(self.args())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(false)
            .spawn()
            .ctx(|| format!("start {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM, wait (dockerd stops containers within --shutdown-timeout), then SIGKILL.
    pub async fn stop(&mut self) -> Result<bool> {
        let containerd = running_as(Path::new(CONTAINERD_PID_FILE), "containerd");
        let stopped = if let Some(pid) = self.adopted.take() {
            stop_pid(pid).await
        } else if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                signal(pid as i32, Signal::TERM);
            }
            if tokio::time::timeout(STOP_TIMEOUT, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
            true
        } else {
            return Ok(false);
        };
        if let Some(pid) = containerd {
            stop_pid(pid).await;
        }
        self.reap_containerd();
        Ok(stopped)
    }

    /// If dockerd exited, reap it and describe the exit, once per exit (the owner decides what follows).
    pub fn check_exit(&mut self) -> Option<String> {
        match self.adopted {
            // init reaped it; its exit status went there.
            Some(pid) if !alive(pid) => {
                self.adopted = None;
                Some("adopted dockerd is gone".to_string())
            }
            Some(_) => None,
            None => {
                let status = self.child.as_mut()?.try_wait().ok()??;
                self.child = None;
                Some(status.to_string())
            }
        }
    }

    /// The last lines of dockerd's log, for an error message that explains a failed start.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read(&self.log_file).unwrap_or_default();
        let text = String::from_utf8_lossy(&text[text.len().saturating_sub(16384)..]).replace('\0', "");
        let v: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }
}

/// Is `pid` a live process (not a zombie)?
/// kill(2) of one process; one that is already gone needs nothing more.
fn signal(pid: i32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid).filter(|_| pid > 0) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the command name's closing parenthesis.
        Ok(s) => s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// The pid in `pid_file`, if that process is alive and named `comm` (a stale file may name another one).
pub(crate) fn running_as(pid_file: &Path, comm: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (pid > 1 && name.trim() == comm && alive(pid)).then_some(pid)
}

/// SIGTERM a process that is not our child, wait for it to go, SIGKILL after STOP_TIMEOUT.
pub(crate) async fn stop_pid(pid: i32) -> bool {
    if !alive(pid) {
        return false;
    }
    // A pid that running_as identified (dockerd or its containerd).
    signal(pid, Signal::TERM);
    let t = Instant::now();
    while alive(pid) {
        if t.elapsed() > STOP_TIMEOUT {
            signal(pid, Signal::KILL);
            let k = Instant::now();
            while alive(pid) && k.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    true
}

/// `GET /_ping` on a unix socket: true when dockerd answers 200 OK.
pub async fn ping(socket: &Path) -> bool {
    let attempt = async {
        let mut s = tokio::net::UnixStream::connect(socket).await.ok()?;
        s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n").await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        Some(out.starts_with(b"HTTP/1.0 200") || out.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(3), attempt).await.ok().flatten().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_yield_to_the_profile_and_the_config_file() {
        let mut d = Dockerd::new("/x".into(), "/l".into(), "/s".into());
        assert_eq!(d.args(), ["-H", "unix:///var/run/docker.sock", "--storage-driver", "overlay2", "--shutdown-timeout", "15"]);
        d.extra_args = vec!["-s".into(), "vfs".into()];
        d.config_keys = vec!["shutdown-timeout".into()];
        assert_eq!(d.args(), ["-H", "unix:///var/run/docker.sock", "-s", "vfs"]);
        d.extra_args = vec!["--shutdown-timeout=3".into()];
        d.config_keys = vec!["storage-driver".into()];
        assert_eq!(d.args(), ["-H", "unix:///var/run/docker.sock", "--shutdown-timeout=3"]);
    }
}
