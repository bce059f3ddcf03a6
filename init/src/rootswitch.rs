//! Stage A (runs from the initramfs): attach the compressed rootfs image read-only, put a tmpfs overlay on
//! top, move the API filesystems across, free the initramfs, switch root and exec stage B.
//! runc's pivot_root needs a real mount as `/`; this gives it one without DOCKER_RAMDISK.
use crate::error::{Context, Error, Result};
use crate::{kmod, log, loopdev, mounts, sys};

use ferry_contract::paths::{INITRAMFS_MARKER as MARKER, ROOT_IMAGE as IMAGE, ROOT_IMAGE_MOUNT};

/// Is this process running from Ferry's initramfs?
pub fn in_initramfs() -> bool {
    std::path::Path::new(MARKER).exists()
}

pub fn early_mounts() -> Result<()> {
    mounts::mount_all(mounts::EARLY)
}

/// The initramfs carries only what the root switch needs (kernel-config/initramfs-modules.txt: loop,
/// squashfs, overlay and their dependencies); load all of it.
pub fn load_early_modules() -> Result<()> {
    let db = kmod::ModDb::running()?;
    let mut names: Vec<&String> = db.deps.keys().collect();
    names.sort();
    for m in names {
        db.insert(m, "")?;
    }
    Ok(())
}

pub fn build_newroot() -> Result<()> {
    let dev = loopdev::attach(IMAGE, None, false)?.keep();
    for d in ["/lower", "/rw", "/newroot"] {
        sys::mkdir_p(d, 0o755)?;
    }
    sys::mount(&dev, "/lower", "squashfs", sys::MountFlags::RDONLY, "")?;
    sys::mount("rw", "/rw", "tmpfs", sys::MountFlags::empty(), "mode=0755")?;
    sys::mkdir_p("/rw/upper", 0o755)?;
    sys::mkdir_p("/rw/work", 0o755)?;
    sys::mount("overlay", "/newroot", "overlay", sys::MountFlags::empty(), "lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work")?;
    // Keep the layers reachable (read-only image, RAM layer) for inspection after the switch, in the
    // new root's /run (mounted now, so stage B does not cover them with a fresh one).
    let run = mounts::RUN;
    sys::mkdir_p(format!("/newroot{}", run.target), 0o755)?;
    sys::mount(run.source, &format!("/newroot{}", run.target), run.fstype, run.flags, run.data)?;
    for (from, to) in [("/lower", ROOT_IMAGE_MOUNT), ("/rw", "/run/ferry/rw")] {
        let to = format!("/newroot{to}");
        sys::mkdir_p(&to, 0o755)?;
        sys::mount_move(from, &to)?;
    }
    for m in mounts::EARLY {
        let to = format!("/newroot{}", m.target);
        sys::mkdir_p(&to, 0o755)?;
        sys::mount_move(m.target, &to)?;
    }
    Ok(())
}

/// Delete everything on the initramfs (it stays in RAM otherwise), except the mount point we move to.
fn free_initramfs() {
    fn wipe(dir: &std::path::Path, root_dev: u64) {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(md) = std::fs::symlink_metadata(&p) else { continue };
            if md.dev() != root_dev || p == std::path::Path::new("/newroot") {
                continue;
            }
            if md.is_dir() {
                wipe(&p, root_dev);
                let _ = std::fs::remove_dir(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    use std::os::unix::fs::MetadataExt;
    if let Ok(md) = std::fs::metadata("/") {
        wipe(std::path::Path::new("/"), md.dev());
    }
}

/// Move /newroot onto /, chroot into it, and exec stage B. Only returns on failure.
pub fn switch_and_exec() -> Error {
    free_initramfs();
    let r = (|| -> Result<()> {
        std::env::set_current_dir("/newroot").ctx(|| "chdir /newroot".into())?;
        sys::mount_move(".", "/")?;
        let dot = sys::cstr(".")?;
        // SAFETY: valid C string.
        if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
            return Err(Error::last_os("chroot into the new root"));
        }
        std::env::set_current_dir("/").ctx(|| "chdir /".into())?;
        Ok(())
    })();
    if let Err(e) = r {
        return e;
    }
    log::line("[root] switched to the read-only image with a RAM overlay");
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new("/sbin/init").arg0("init").exec();
    Error::io("exec /sbin/init in the new root", err)
}
