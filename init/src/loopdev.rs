//! Loop devices: the root image (read-only, whole file) and, while formatting the data disk, windows onto
//! a disk at a partition's final offset before any partition table exists (crash safety, DESIGN §4).
use crate::error::{Context, Error, Result};
use std::fs::File;
use std::os::fd::AsRawFd;

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CHANGE_FD: libc::c_ulong = 0x4C06;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;

/// struct loop_info64 from <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// An attached loop device; detached on drop (a mounted one detaches when unmounted: autoclear).
pub struct Loop {
    pub path: String,
    file: File,
}

/// Attach `backing` (a file or block device) as a loop device. `window` = (offset, size) in bytes limits
/// it to part of the backing store; `writable` picks the open mode (a read-only fd gives a read-only loop).
pub fn attach(backing: &str, window: Option<(u64, u64)>, writable: bool) -> Result<Loop> {
    let ctl = std::fs::OpenOptions::new().read(true).write(true).open("/dev/loop-control").ctx(|| "open /dev/loop-control".into())?;
    // SAFETY: ioctl without memory arguments.
    let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
    if n < 0 {
        return Err(Error::last_os("find a free loop device"));
    }
    let path = format!("/dev/loop{n}");
    let back = std::fs::OpenOptions::new().read(true).write(writable).open(backing).ctx(|| format!("open {backing}"))?;
    // devtmpfs creates the node asynchronously; give it a moment.
    let mut tries = 0;
    let file = loop {
        match std::fs::OpenOptions::new().read(true).write(writable).open(&path) {
            Ok(f) => break f,
            Err(_) if tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(Error::io(format!("open {path}"), e)),
        }
    };
    // SAFETY: both fds are valid for the duration of the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), LOOP_SET_FD, back.as_raw_fd()) } != 0 {
        return Err(Error::last_os(format!("attach {backing} to {path}")));
    }
    let lp = Loop { path, file };
    // SAFETY: all-zero is a valid loop_info64.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    let (offset, size) = window.unwrap_or((0, 0));
    info.offset = offset;
    info.sizelimit = size;
    info.flags = 4; // LO_FLAGS_AUTOCLEAR
                    // SAFETY: info is a valid loop_info64 for the duration of the call.
    if unsafe { libc::ioctl(lp.file.as_raw_fd(), LOOP_SET_STATUS64, &info as *const LoopInfo64) } != 0 {
        return Err(Error::last_os(format!("set offset {offset} / size {size} on {} for {backing}", lp.path)));
    }
    Ok(lp)
}

/// Point the read-only loop device `dev` at `file`, which must hold the same number of sectors (the
/// kernel checks both); mounts on it carry on, and the old backing file is released.
pub fn change_backing(dev: &str, file: &File) -> Result<()> {
    let lp = File::open(dev).ctx(|| format!("open {dev}"))?;
    // SAFETY: both fds are valid for the duration of the call.
    if unsafe { libc::ioctl(lp.as_raw_fd(), LOOP_CHANGE_FD, file.as_raw_fd()) } != 0 {
        return Err(Error::last_os(format!("move {dev} onto a new backing file")));
    }
    Ok(())
}

impl Loop {
    /// Keep the device attached after this handle goes (it detaches itself when its mount goes away).
    pub fn keep(self) -> String {
        let p = self.path.clone();
        std::mem::forget(self);
        p
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // SAFETY: ioctl without memory arguments on our own fd; failure (busy) only delays the detach,
        // autoclear finishes it.
        unsafe { libc::ioctl(self.file.as_raw_fd(), LOOP_CLR_FD) };
    }
}
