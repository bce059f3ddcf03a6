//! Thin, checked wrappers over the syscalls init needs. Every error names the object it was about.
use crate::error::{Error, Result};
use std::ffi::CString;
use std::path::Path;

/// The PATH every child of init gets (the kernel starts PID 1 without one).
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::msg(format!("{s:?} contains a NUL byte")))
}

pub fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> Result<()> {
    let (s, t, f, d) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    let data_ptr = if data.is_empty() { std::ptr::null() } else { d.as_ptr() as *const libc::c_void };
    let fs_ptr = if fstype.is_empty() { std::ptr::null() } else { f.as_ptr() };
    // SAFETY: all pointers are valid NUL-terminated strings or null, as mount(2) allows.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), fs_ptr, flags, data_ptr) };
    if rc != 0 {
        return Err(Error::last_os(format!("mount {source} on {target} ({fstype})")));
    }
    Ok(())
}

pub fn umount(target: &str, flags: libc::c_int) -> Result<()> {
    let t = cstr(target)?;
    // SAFETY: valid C string.
    if unsafe { libc::umount2(t.as_ptr(), flags) } != 0 {
        return Err(Error::last_os(format!("unmount {target}")));
    }
    Ok(())
}

pub fn mkdir_p(path: impl AsRef<Path>, mode: u32) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let p = path.as_ref();
    std::fs::DirBuilder::new().recursive(true).mode(mode).create(p).map_err(|e| Error::io(format!("create directory {}", p.display()), e))
}

pub fn chown(path: &str, uid: u32, gid: u32) -> Result<()> {
    let p = cstr(path)?;
    // SAFETY: valid C string; lchown never follows a link planted by untrusted input.
    if unsafe { libc::lchown(p.as_ptr(), uid, gid) } != 0 {
        return Err(Error::last_os(format!("chown {path}")));
    }
    Ok(())
}

pub fn set_hostname(name: &str) -> Result<()> {
    // SAFETY: pointer and length describe `name`.
    if unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) } != 0 {
        return Err(Error::last_os(format!("sethostname {name}")));
    }
    Ok(())
}

/// Is something mounted exactly at `target`?
pub fn is_mountpoint(target: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").map(|t| t.lines().any(|l| l.split(' ').nth(4) == Some(target))).unwrap_or(false)
}

/// Write a file atomically (temp + rename) so a power cut never leaves half a file.
pub fn write_atomic(path: &str, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = format!("{path}.ferry-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| Error::io(format!("create {tmp}"), e))?;
    f.write_all(data).map_err(|e| Error::io(format!("write {tmp}"), e))?;
    f.sync_all().map_err(|e| Error::io(format!("fsync {tmp}"), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("rename {tmp} to {path}"), e))
}

pub fn reboot(cmd: libc::c_int) {
    // SAFETY: reboot(2) with a valid command; only returns on error.
    unsafe {
        libc::sync();
        libc::reboot(cmd);
    }
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
    let l = libc::rlimit { rlim_cur: n, rlim_max: n };
    // SAFETY: setrlimit on our own process with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
        return Err(Error::io("setrlimit RLIMIT_NOFILE", std::io::Error::last_os_error()));
    }
    Ok(())
}
