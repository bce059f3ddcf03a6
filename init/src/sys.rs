//! Thin, checked wrappers over the syscalls init needs. Every error names the object it was about.
use crate::error::{Error, Result};
use std::ffi::CString;
use std::path::Path;

/// The PATH every child of init gets (the kernel starts PID 1 without one).
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::msg(format!("{s:?} contains a NUL byte")))
}

pub use rustix::mount::{MountFlags, UnmountFlags};
pub use rustix::system::RebootCommand;

fn os(context: String, e: rustix::io::Errno) -> Error {
    Error::io(context, e.into())
}

/// mount(2) of a filesystem (`data` empty: no options).
pub fn mount(source: &str, target: &str, fstype: &str, flags: MountFlags, data: &str) -> Result<()> {
    let data = if data.is_empty() { None } else { Some(cstr(data)?) };
    rustix::mount::mount(source, target, fstype, flags, data.as_deref())
        .map_err(|e| os(format!("mount {source} on {target} ({fstype})"), e))
}

/// `from` seen again at `to` (MS_BIND).
pub fn mount_bind(from: &str, to: &str) -> Result<()> {
    rustix::mount::mount_bind(from, to).map_err(|e| os(format!("bind {from} on {to}"), e))
}

/// The mount at `from` moved to `to` (MS_MOVE).
pub fn mount_move(from: &str, to: &str) -> Result<()> {
    rustix::mount::mount_move(from, to).map_err(|e| os(format!("move the mount {from} to {to}"), e))
}

/// The mount at `target` made read-only (what a busy filesystem gets at shutdown).
pub fn remount_read_only(target: &str) -> Result<()> {
    rustix::mount::mount_remount(target, MountFlags::RDONLY, "").map_err(|e| os(format!("remount {target} read-only"), e))
}

pub fn umount(target: &str, flags: UnmountFlags) -> Result<()> {
    rustix::mount::unmount(target, flags).map_err(|e| os(format!("unmount {target}"), e))
}

pub fn mkdir_p(path: impl AsRef<Path>, mode: u32) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let p = path.as_ref();
    std::fs::DirBuilder::new().recursive(true).mode(mode).create(p).map_err(|e| Error::io(format!("create directory {}", p.display()), e))
}

/// kill(2) of one process (pid > 0). A process that is already gone is an error the caller may ignore.
pub fn signal(pid: i32, sig: libc::c_int) -> Result<()> {
    use rustix::process::{kill_process, Pid, Signal};
    let p = Pid::from_raw(pid).filter(|_| pid > 0).ok_or_else(|| Error::msg(format!("signal {sig} to pid {pid}: not one process")))?;
    let s = Signal::from_named_raw(sig).ok_or_else(|| Error::msg(format!("signal {sig}: not a signal")))?;
    kill_process(p, s).map_err(|e| os(format!("signal {sig} to pid {pid}"), e))
}

/// Set the system clock (CLOCK_REALTIME) to `secs` + `nanos` since the epoch.
pub fn set_clock(secs: i64, nanos: i64) -> Result<()> {
    use rustix::time::{clock_settime, ClockId, Timespec};
    clock_settime(ClockId::Realtime, Timespec { tv_sec: secs, tv_nsec: nanos }).map_err(|e| os(format!("set the clock to {secs}"), e))
}

/// Never follows a link planted by untrusted input (lchown).
pub fn chown(path: &str, uid: u32, gid: u32) -> Result<()> {
    use rustix::fs::{chownat, AtFlags, Gid, Uid, CWD};
    chownat(CWD, path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| os(format!("chown {path}"), e))
}

pub fn set_hostname(name: &str) -> Result<()> {
    rustix::system::sethostname(name.as_bytes()).map_err(|e| os(format!("sethostname {name}"), e))
}

/// Is something mounted exactly at `target`?
pub fn is_mountpoint(target: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").map(|t| t.lines().any(|l| l.split(' ').nth(4) == Some(target))).unwrap_or(false)
}

/// Replace a file so a power cut never leaves half of it (`ferry_contract::file`).
pub fn write_atomic(path: &str, data: &[u8], mode: u32) -> Result<()> {
    ferry_contract::file::write_atomic(std::path::Path::new(path), data, mode).map_err(|e| Error::io(format!("write {path}"), e))
}

/// sync, then reboot(2) (power off, restart, halt; or Ctrl-Alt-Del's setting). Returns only what the
/// kernel did not do.
pub fn reboot(cmd: RebootCommand) -> Result<()> {
    rustix::fs::sync();
    rustix::system::reboot(cmd).map_err(|e| os(format!("reboot(2) {cmd:?}"), e))
}

/// Nice 19 for the calling thread only (Linux priorities are per thread): background work that must not
/// hold up the engine's start.
pub fn lowest_priority_for_this_thread() {
    let _ = rustix::process::setpriority_process(None, 19);
}

pub fn block_all_signals() {
    // SAFETY: plain sigset manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// PID 1 runs with every signal blocked (it takes them with sigtimedwait); std::process::Command does not
/// reset the mask, so every child must clear it or it would ignore SIGTERM forever.
pub fn unblock_signals_in_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// Open files for PID 1 and everything it starts (soft = hard). The kernel's default (1024 soft) lets the
/// engine's front door run out of descriptors at ~500 connections (each holds a TCP and a unix socket);
/// dockerd and containerd want many more. 1048576 is the kernel's `fs.nr_open` default, which boot2docker
/// also gave dockerd.
pub const OPEN_FILES: u64 = 1 << 20;

pub fn raise_open_files(n: u64) -> Result<()> {
    use rustix::process::{setrlimit, Resource, Rlimit};
    setrlimit(Resource::Nofile, Rlimit { current: Some(n), maximum: Some(n) }).map_err(|e| os("setrlimit RLIMIT_NOFILE".into(), e))
}
