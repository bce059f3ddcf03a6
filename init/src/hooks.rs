//! boot2docker's boot hooks, run as root with `/bin/sh` (they need not be executable):
//! `bootsync.sh` after the network and before the engine, waited for up to a limit; `bootlocal.sh` in
//! the background once the engine answers. Their output is appended to `<name>.log` in the log directory;
//! a failing or hanging hook is reported and never stops the boot.
use crate::error::{Error, Result};
use crate::{log, sys};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

pub const BOOTSYNC: &str = "bootsync.sh";
pub const BOOTLOCAL: &str = "bootlocal.sh";
/// How long the boot waits for bootsync.sh by default (`ferry.bootsync_limit=SECONDS` changes it); past it
/// the hook keeps running and the boot goes on.
pub const BOOTSYNC_LIMIT: Duration = Duration::from_secs(60);
/// How long bootlocal.sh waits for the engine before it runs anyway.
pub const ENGINE_WAIT: Duration = Duration::from_secs(300);
use ferry_contract::paths::{B2D as DIR, DOCKER_SOCK as DOCKER_SOCKET, PERSISTENT_LOG_DIR as LOG_DIR};

/// Start `dir/name` with its output appended to `log_dir/<name stem>.log`, in its own session (so a
/// hook's background jobs are not tied to PID 1's console). Ok(None) when there is no such hook.
pub fn spawn(dir: &str, name: &str, log_dir: &str) -> Result<Option<u32>> {
    let script = format!("{dir}/{name}");
    if !std::path::Path::new(&script).is_file() {
        return Ok(None);
    }
    sys::mkdir_p(log_dir, 0o755)?;
    let log_path = format!("{log_dir}/{}.log", name.trim_end_matches(".sh"));
    let mut out =
        std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| Error::io(format!("open {log_path}"), e))?;
    let up = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let _ = std::io::Write::write_all(
        &mut out,
        format!("--- {name}, {}s after kernel start\n", up.split_whitespace().next().unwrap_or("?")).as_bytes(),
    );
    let err = out.try_clone().map_err(|e| Error::io(format!("dup {log_path}"), e))?;
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg(&script)
        .current_dir("/")
        .env_clear()
        .env("PATH", sys::PATH)
        .env("HOME", "/root")
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    cmd.process_group(0);
    sys::unblock_signals_in_child(&mut cmd);
    let child = cmd.spawn().map_err(|e| Error::io(format!("start {script}"), e))?;
    // PID 1's reaper collects it (or run_bootsync waits for it by pid); the handle is not needed.
    Ok(Some(child.id()))
}

/// Run bootsync.sh and wait up to `limit`. Returns the console line.
pub fn run_bootsync(dir: &str, log_dir: &str, limit: Duration) -> Result<String> {
    let t = Instant::now();
    let Some(pid) = spawn(dir, BOOTSYNC, log_dir)? else { return Ok(format!("no {dir}/{BOOTSYNC}")) };
    let log_path = format!("{log_dir}/bootsync.log");
    while t.elapsed() < limit {
        // Our own child: the main loop's reaper does not run yet (stage B's phases are sequential), so
        // nobody else collects this pid.
        let child = rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| Error::msg(format!("{BOOTSYNC}: pid {pid}")))?;
        match rustix::process::waitpid(Some(child), rustix::process::WaitOptions::NOHANG) {
            Ok(Some((_, st))) => {
                let secs = t.elapsed().as_secs_f64();
                return Ok(if st.exit_status() == Some(0) {
                    format!("{BOOTSYNC} finished in {secs:.2}s (output in {log_path})")
                } else {
                    log::warn(&format!(
                        "{dir}/{BOOTSYNC} failed ({}) after {secs:.2}s; see {log_path}; booting on",
                        crate::services::describe(st.as_raw())
                    ));
                    format!("{BOOTSYNC} failed")
                });
            }
            Ok(None) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::io(format!("wait for {BOOTSYNC}"), e.into())),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    log::warn(&format!(
        "{dir}/{BOOTSYNC} still runs after {}s; the boot goes on and it keeps running in the background (output in {log_path})",
        limit.as_secs()
    ));
    Ok(format!("{BOOTSYNC} timed out"))
}

/// The bootlocal.sh thread: wait for the engine (or ENGINE_WAIT), then start the hook and leave it.
pub fn bootlocal_thread() {
    if !std::path::Path::new(&format!("{DIR}/{BOOTLOCAL}")).is_file() {
        return;
    }
    if !crate::later::wait_for_engine(DOCKER_SOCKET, ENGINE_WAIT).answered {
        log::warn(&format!("hooks: the engine has not answered for {}s; starting {BOOTLOCAL} anyway", ENGINE_WAIT.as_secs()));
    }
    match spawn(DIR, BOOTLOCAL, LOG_DIR) {
        Ok(Some(pid)) => log::line(&format!("hooks: {DIR}/{BOOTLOCAL} started (pid {pid}); output in {LOG_DIR}/bootlocal.log")),
        Ok(None) => {}
        Err(e) => log::warn(&format!("hooks: {BOOTLOCAL}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> String {
        let d = std::env::temp_dir().join(format!("ferry-hooks-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.to_string_lossy().to_string()
    }

    #[test]
    fn bootsync_success_failure_timeout_and_absence() {
        let d = dir("sync");
        let logs = format!("{d}/log");
        assert!(run_bootsync(&d, &logs, BOOTSYNC_LIMIT).unwrap().starts_with("no "));
        std::fs::write(format!("{d}/{BOOTSYNC}"), "echo hello from sync; id -u\n").unwrap();
        assert!(run_bootsync(&d, &logs, BOOTSYNC_LIMIT).unwrap().contains("finished"));
        let text = std::fs::read_to_string(format!("{logs}/bootsync.log")).unwrap();
        assert!(text.contains("hello from sync") && text.contains("--- bootsync.sh"), "{text}");
        std::fs::write(format!("{d}/{BOOTSYNC}"), "echo oops >&2; exit 4\n").unwrap();
        assert_eq!(run_bootsync(&d, &logs, BOOTSYNC_LIMIT).unwrap(), "bootsync.sh failed");
        assert!(std::fs::read_to_string(format!("{logs}/bootsync.log")).unwrap().contains("oops"));
        std::fs::write(format!("{d}/{BOOTSYNC}"), "sleep 30\n").unwrap();
        let t = Instant::now();
        assert_eq!(run_bootsync(&d, &logs, Duration::from_millis(500)).unwrap(), "bootsync.sh timed out");
        assert!(t.elapsed() < Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(d);
    }
}
