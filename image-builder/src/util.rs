//! Small shared helpers: running commands with clear errors, hashing, paths, progress lines.
use crate::error::{Context, Error, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

pub fn run(cmd: &mut Command) -> Result<String> {
    let desc = format!("{cmd:?}");
    let out = cmd.output().ctx(|| format!("run {desc} (is it installed? ./ferry installs host packages)"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Error::msg(format!("{desc} failed ({}):\n{}", out.status, tail.join("\n"))));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The pid a pid file names, when that process is alive and `is_it` accepts its command line (split at
/// NULs). A pid file left by a killed process may name a pid the kernel has since given to another
/// process (pid_max is often 32768); signalling that one would hit a stranger.
pub fn live_pid(pidfile: &Path, is_it: impl Fn(&[&[u8]]) -> bool) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    is_it(&args).then_some(pid)
}

/// Whether two paths name the same file (same device and inode), however each is spelled.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn sha256_file(p: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(p).ctx(|| format!("open {}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).ctx(|| format!("read {}", p.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The directory the user ran `ferry` from: the `./ferry` wrapper changes into the checkout and passes the
/// user's own directory in FERRY_CWD, so relative paths mean what the user meant.
pub fn user_cwd() -> PathBuf {
    std::env::var_os("FERRY_CWD").map(PathBuf::from).or_else(|| std::env::current_dir().ok()).unwrap_or_else(|| PathBuf::from("/"))
}

/// An exclusive `flock` on a file, held until dropped (or until the process dies).
pub struct FileLock {
    _held: std::fs::File,
}

impl FileLock {
    /// Take the lock on `path` (created if missing), saying `waiting` on stderr when another holder makes
    /// us wait.
    pub fn take(path: &Path, waiting: &str) -> Result<FileLock> {
        let f =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).ctx(|| format!("open {}", path.display()))?;
        use std::os::fd::AsRawFd;
        let lock = |how| {
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(f.as_raw_fd(), how) } == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        if let Err(e) = lock(libc::LOCK_EX | libc::LOCK_NB) {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Err(e).ctx(|| format!("lock {}", path.display()));
            }
            eprintln!("ferry: {waiting}");
            lock(libc::LOCK_EX).ctx(|| format!("lock {}", path.display()))?;
        }
        Ok(FileLock { _held: f })
    }
}

fn home_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty()).unwrap_or_else(|| "/root".into()))
}

/// An XDG base directory: `$VAR` when it is an absolute path (the specification ignores relative ones),
/// else `~/FALLBACK`.
fn xdg(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var).map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        _ => home_dir().join(fallback),
    }
}

/// Downloads, keyed by content: FERRY_CACHE, else `$XDG_CACHE_HOME/ferry` (~/.cache/ferry).
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("FERRY_CACHE") {
        Some(c) => PathBuf::from(c),
        None => xdg("XDG_CACHE_HOME", ".cache").join("ferry"),
    }
}

/// Ferry's own data: `$XDG_DATA_HOME/ferry` (~/.local/share/ferry).
pub fn data_dir() -> PathBuf {
    xdg("XDG_DATA_HOME", ".local/share").join("ferry")
}

/// The build output (vmlinuz, initrd.img, media, manifest.json): FERRY_OUT, else `<data dir>/out`. The
/// `./ferry` wrapper sets FERRY_OUT to the checkout's out/.
pub fn out_dir() -> PathBuf {
    match std::env::var_os("FERRY_OUT") {
        Some(o) => PathBuf::from(o),
        None => data_dir().join("out"),
    }
}

/// Where machines live (`<this>/machines/NAME`): FERRY_HOME, else the data directory. A `~/.ferry` made
/// by an earlier Ferry keeps being used while the data directory has no machines of its own, so an update
/// never hides a machine and its disk.
pub fn machines_home() -> PathBuf {
    if let Some(h) = std::env::var_os("FERRY_HOME") {
        // Absolute, so that the paths QEMU is given (and that live_pid looks for) are the same from any directory.
        return std::path::absolute(&h).unwrap_or_else(|_| PathBuf::from(h));
    }
    pick_machines_home(data_dir(), home_dir().join(".ferry"))
}

fn pick_machines_home(new: PathBuf, old: PathBuf) -> PathBuf {
    if !new.join("machines").is_dir() && old.join("machines").is_dir() {
        return old;
    }
    new
}

/// One progress line per step with its duration. On a terminal, the innermost running step also shows a
/// ticking elapsed time on the line below it (mmdebstrap and mksquashfs run for minutes without a word);
/// elsewhere (CI, pipes) only the plain lines are printed.
pub struct Step {
    name: String,
    start: Instant,
}

/// Running steps, innermost last; the ticker thread shows the last one.
static RUNNING: std::sync::Mutex<Vec<(String, Instant)>> = std::sync::Mutex::new(Vec::new());
static TICKER: std::sync::Once = std::sync::Once::new();

fn ticking() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var("FERRY_PROGRESS").map(|v| v != "plain").unwrap_or(true)
}

/// The ticker's line for step `name` after `secs` seconds.
pub fn ticker_line(name: &str, secs: u64) -> String {
    const SPIN: [char; 4] = ['|', '/', '-', '\\'];
    format!("    {} {name}: {}:{:02}", SPIN[(secs % 4) as usize], secs / 60, secs % 60)
}

/// Clear the ticker's line (before a plain line is printed over it).
fn clear_ticker() {
    if ticking() {
        eprint!("\r\x1b[K");
    }
}

/// Print a line on stderr under a running step (clearing the ticker first).
pub fn say(line: &str) {
    clear_ticker();
    eprintln!("{line}");
}

impl Step {
    pub fn start(name: impl Into<String>) -> Step {
        let name = name.into();
        clear_ticker();
        eprintln!("==> {name}");
        if ticking() {
            if let Ok(mut r) = RUNNING.lock() {
                r.push((name.clone(), Instant::now()));
            }
            TICKER.call_once(|| {
                std::thread::spawn(|| loop {
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    if let Some((n, t)) = RUNNING.lock().ok().and_then(|r| r.last().cloned()) {
                        eprint!("\r\x1b[K{}", ticker_line(&n, t.elapsed().as_secs()));
                    }
                });
            });
        }
        Step { name, start: Instant::now() }
    }
    pub fn done(self, note: &str) {
        if let Ok(mut r) = RUNNING.lock() {
            r.retain(|(n, _)| *n != self.name);
        }
        clear_ticker();
        eprintln!(
            "    {} done in {:.1}s{}",
            self.name,
            self.start.elapsed().as_secs_f64(),
            if note.is_empty() { String::new() } else { format!(" ({note})") }
        );
    }
}

/// Lines of a data file without comments and blanks.
pub fn data_lines(text: &str) -> Vec<String> {
    text.lines().map(|l| l.split('#').next().unwrap_or("").trim().to_string()).filter(|l| !l.is_empty()).collect()
}

pub fn read_data_file(p: &Path) -> Result<Vec<String>> {
    Ok(data_lines(&std::fs::read_to_string(p).ctx(|| format!("read {}", p.display()))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticker_shows_minutes_and_seconds() {
        assert_eq!(ticker_line("rootfs: mksquashfs (zstd)", 0), "    | rootfs: mksquashfs (zstd): 0:00");
        assert_eq!(ticker_line("boot", 125), "    / boot: 2:05");
    }

    #[test]
    fn machines_made_by_an_earlier_ferry_stay_in_use() {
        let t = std::env::temp_dir().join(format!("ferry-mhome-{}", std::process::id()));
        let (new, old) = (t.join("share/ferry"), t.join(".ferry"));
        let pick = || super::pick_machines_home(new.clone(), old.clone());
        assert_eq!(pick(), new, "nothing anywhere: the XDG directory");
        std::fs::create_dir_all(old.join("machines/default")).unwrap();
        assert_eq!(pick(), old, "only ~/.ferry has machines");
        std::fs::create_dir_all(new.join("machines")).unwrap();
        assert_eq!(pick(), new, "the XDG directory has its own");
        let _ = std::fs::remove_dir_all(&t);
    }
}
