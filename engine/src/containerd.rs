//! containerd for dockerd. PID 1 starts it with the data disk (init/src/containerd.rs); before each
//! dockerd start the engine decides whether dockerd gets it (`--containerd`) or starts its own, replaces
//! one that no longer works on /var/lib/docker, and starts it again when it is gone: a dockerd given
//! `--containerd` reconnects to a new one, but never starts one itself.
use crate::dockerd::{running_as, stop_pid};
use crate::error::{Context, Result};
use ferry_contract::containerd as c;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use tokio::process::{Child, Command};

/// Settings under which dockerd starts its own containerd, as it does without Ferry: (flag, short
/// flag, daemon.json key). They move its roots, name another containerd, or set the log level that dockerd
/// passes on to the containerd it starts.
const DOCKERD_OWNS_IT: &[(&str, &str, &str)] = &[
    ("--containerd", "", "containerd"),
    ("--data-root", "", "data-root"),
    ("--graph", "-g", "graph"),
    ("--exec-root", "", "exec-root"),
    ("--debug", "-D", "debug"),
    ("--log-level", "-l", "log-level"),
];

/// Why dockerd starts its own containerd this time, or None when it gets Ferry's.
pub fn dockerd_owns_it(extra_args: &[String], config_keys: &[String]) -> Option<String> {
    for (flag, short, key) in DOCKERD_OWNS_IT {
        let by_flag =
            extra_args.iter().find(|a| *a == flag || a.starts_with(&format!("{flag}=")) || (!short.is_empty() && a.starts_with(short)));
        if let Some(a) = by_flag {
            return Some(format!("the profile's EXTRA_ARGS set {a}"));
        }
        if config_keys.iter().any(|k| k == key) {
            return Some(format!("daemon.json sets \"{key}\""));
        }
    }
    None
}

/// The running containerd (Ferry's, or one a dockerd started), by the shared pid file.
pub fn running() -> Option<i32> {
    running_as(Path::new(c::PID_FILE), "containerd")
}

/// Does containerd `pid` still work in /var/lib/docker? Ferry's runs there; a hook that mounted something
/// over it, or a dockerd that started its own (its working directory is /), makes this false.
pub fn in_place(pid: i32) -> bool {
    let (Ok(cwd), Ok(root)) = (std::fs::metadata(format!("/proc/{pid}/cwd")), std::fs::metadata(c::DATA_ROOT)) else { return false };
    (cwd.dev(), cwd.ino()) == (root.dev(), root.ino())
}

pub async fn stop(pid: i32) {
    stop_pid(pid).await;
    let _ = std::fs::remove_file(c::PID_FILE);
}

/// Start Ferry's containerd, its output appended to dockerd's log.
pub fn spawn(log_file: &Path) -> Result<(Child, i32)> {
    std::fs::create_dir_all(c::STATE_DIR).ctx(|| format!("create {}", c::STATE_DIR))?;
    std::fs::create_dir_all(c::DATA_ROOT).ctx(|| format!("create {}", c::DATA_ROOT))?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_file).ctx(|| format!("open {}", log_file.display()))?;
    let log2 = log.try_clone().ctx(|| format!("dup {}", log_file.display()))?;
    let child = Command::new(c::ARGV[0])
        .args(&c::ARGV[1..])
        .current_dir(c::DATA_ROOT)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .ctx(|| format!("start {}", c::BINARY))?;
    let pid = child.id().unwrap_or(0) as i32;
    // dockerd's format (no newline), so the file means the same whoever wrote it.
    ferry_contract::file::write_atomic(Path::new(c::PID_FILE), pid.to_string().as_bytes(), 0o644)
        .ctx(|| format!("write {}", c::PID_FILE))?;
    Ok((child, pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn dockerd_starts_its_own_only_when_the_settings_say_so() {
        assert_eq!(
            dockerd_owns_it(&strings(&["--label", "a=b", "-s", "overlay2", "--insecure-registry", "r:5000"]), &strings(&["labels"])),
            None
        );
        for args in [
            &["--data-root", "/x"][..],
            &["--data-root=/x"],
            &["-g", "/x"],
            &["--exec-root=/y"],
            &["--containerd", "/s"],
            &["-D"],
            &["--debug"],
            &["--log-level=debug"],
            &["-l", "warn"],
        ] {
            let why = dockerd_owns_it(&strings(args), &[]).unwrap_or_else(|| panic!("{args:?}"));
            assert!(why.contains(args[0]), "{why}");
        }
        for key in ["data-root", "exec-root", "containerd", "debug", "log-level", "graph"] {
            assert_eq!(dockerd_owns_it(&[], &strings(&[key])), Some(format!("daemon.json sets \"{key}\"")));
        }
    }

    #[test]
    fn a_process_elsewhere_is_not_in_place() {
        // This test's own working directory is the crate, not /var/lib/docker.
        assert!(!in_place(std::process::id() as i32));
        assert!(!in_place(i32::MAX - 1), "no such process");
    }
}
