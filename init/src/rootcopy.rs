//! The root image off RAM (issue 17). Stage A runs the squashfs from its initramfs copy, which stays in
//! RAM as long as the loop device holds it (about a third of an idle machine's memory). Once the data
//! disk is mounted and the services started, a low-priority thread makes the disk hold the same bytes
//! (written once per image, compared in full on every boot) and moves the loop device onto that file with
//! LOOP_CHANGE_FD; the kernel then frees the RAM copy. Mounts on the device carry on untouched: the bytes
//! are the same. No data disk, too little room, or any error: the root stays in RAM, as before.
use crate::error::{Context, Error, Result};
use crate::{later, log, loopdev, sys};
use ferry_contract::paths::{ROOT_IMAGE, ROOT_IMAGE_COPY, ROOT_IMAGE_MOUNT as IMAGE_MOUNT};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Free space the copy must leave on the data disk: containers come first.
const HEADROOM: u64 = 512 << 20;
const CHUNK: usize = 1 << 20;

static ON_DISK: AtomicBool = AtomicBool::new(false);

/// Does the root run from the data disk's copy (so that disk cannot be unmounted, only remounted
/// read-only, at shutdown)?
pub fn on_disk() -> bool {
    ON_DISK.load(Ordering::Relaxed)
}

/// What `ensure_copy` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Made {
    /// The copy from an earlier boot holds the same bytes.
    Reused,
    /// Written now (first boot, a new image, or a copy that differed).
    Written,
}

/// The background job: runs after the services phase when the data disk is mounted.
pub fn thread() {
    sys::lowest_priority_for_this_thread();
    let waited = later::after_engine();
    let t = Instant::now();
    match move_root() {
        Ok(Some((made, mib))) => {
            ON_DISK.store(true, Ordering::Relaxed);
            let how = if made == Made::Reused { "the copy on the data disk matched" } else { "copied to the data disk and verified" };
            log::line(&format!(
                "[root] image moved off RAM in {:.2}s ({waited}): {how}; {mib} MiB of RAM freed ({ROOT_IMAGE_COPY})",
                t.elapsed().as_secs_f64()
            ));
        }
        Ok(None) => {}
        Err(e) => log::line(&format!("[root] image stays in RAM: {e}")),
    }
}

/// The loop device under the root image, when it still reads the initramfs copy.
fn root_loop() -> Result<Option<String>> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ctx(|| "read /proc/self/mounts".into())?;
    let Some(dev) = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(1) == Some(&IMAGE_MOUNT)).then(|| f[0].to_string())
    }) else {
        return Err(Error::msg(format!("no root image mounted at {IMAGE_MOUNT}")));
    };
    let name = dev.trim_start_matches("/dev/");
    let backing = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).unwrap_or_default();
    Ok(backing.starts_with(ROOT_IMAGE).then_some(dev))
}

fn move_root() -> Result<Option<(Made, u64)>> {
    let Some(dev) = root_loop()? else { return Ok(None) };
    let mut src = File::open(&dev).ctx(|| format!("open {dev}"))?;
    let len = src.seek(SeekFrom::End(0)).ctx(|| format!("size of {dev}"))?;
    let made = ensure_copy(&mut src, len, Path::new(ROOT_IMAGE_COPY))?;
    let copy = File::open(ROOT_IMAGE_COPY).ctx(|| format!("open {ROOT_IMAGE_COPY}"))?;
    loopdev::change_backing(&dev, &copy)?;
    Ok(Some((made, len >> 20)))
}

/// Is there room for `len` more bytes (beyond what an old copy of `old` bytes gives back) with
/// HEADROOM left over?
pub fn room_for(len: u64, available: u64, old: u64) -> Result<()> {
    let need = len.saturating_add(HEADROOM);
    let have = available.saturating_add(old);
    if have < need {
        return Err(Error::msg(format!(
            "the data disk has {} MiB free; the copy needs {} MiB and leaves {} MiB for containers",
            have >> 20,
            len >> 20,
            HEADROOM >> 20
        )));
    }
    Ok(())
}

/// Make `dst` hold exactly the first `len` bytes of `src`: kept when an earlier copy already does, else
/// written beside it, flushed, read back from the disk and compared, then renamed into place. A copy cut
/// by a power loss is a leftover temporary file, deleted here on the next boot.
pub fn ensure_copy(src: &mut File, len: u64, dst: &Path) -> Result<Made> {
    let dir = dst.parent().ok_or_else(|| Error::msg(format!("{}: no parent directory", dst.display())))?;
    sys::mkdir_p(dir, 0o700)?;
    let tmp = tmp_name(dst);
    let _ = std::fs::remove_file(&tmp);
    let old = match std::fs::metadata(dst) {
        Ok(m) if m.len() == len => {
            let mut f = File::open(dst).ctx(|| format!("open {}", dst.display()))?;
            if same_bytes(src, &mut f, len, dst)? {
                return Ok(Made::Reused);
            }
            m.len()
        }
        Ok(m) => m.len(),
        Err(_) => 0,
    };
    let st = rustix::fs::statvfs(dir).map_err(|e| Error::io(format!("statvfs {}", dir.display()), e.into()))?;
    room_for(len, st.f_bavail.saturating_mul(st.f_frsize), old)?;

    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o400)
        .open(&tmp)
        .ctx(|| format!("create {}", tmp.display()))?;
    src.seek(SeekFrom::Start(0)).ctx(|| "rewind the root image".into())?;
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = (left.min(CHUNK as u64)) as usize;
        src.read_exact(&mut buf[..n]).ctx(|| "read the root image".into())?;
        out.write_all(&buf[..n]).ctx(|| format!("write {}", tmp.display()))?;
        left -= n as u64;
    }
    out.sync_all().ctx(|| format!("flush {}", tmp.display()))?;
    // Drop the cached pages so the comparison reads what reached the disk.
    forget_cache(&out);
    if !same_bytes(src, &mut out, len, &tmp)? {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::msg(format!("{} differs from the root image after writing it (a failing disk?)", tmp.display())));
    }
    std::fs::rename(&tmp, dst).ctx(|| format!("rename {} to {}", tmp.display(), dst.display()))?;
    File::open(dir).and_then(|d| d.sync_all()).ctx(|| format!("flush {}", dir.display()))?;
    Ok(Made::Written)
}

fn tmp_name(dst: &Path) -> PathBuf {
    let mut s = dst.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// Compare the first `len` bytes of both files, leaving neither in the page cache.
fn same_bytes(a: &mut File, b: &mut File, len: u64, b_name: &Path) -> Result<bool> {
    a.seek(SeekFrom::Start(0)).ctx(|| "rewind the root image".into())?;
    b.seek(SeekFrom::Start(0)).ctx(|| format!("rewind {}", b_name.display()))?;
    let (mut x, mut y) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut left = len;
    let mut same = true;
    while left > 0 && same {
        let n = (left.min(CHUNK as u64)) as usize;
        a.read_exact(&mut x[..n]).ctx(|| "read the root image".into())?;
        if b.read_exact(&mut y[..n]).is_err() {
            same = false;
            break;
        }
        same = x[..n] == y[..n];
        left -= n as u64;
    }
    forget_cache(a);
    forget_cache(b);
    Ok(same)
}

/// Advice only: a page cache that keeps the pages costs memory, not correctness.
fn forget_cache(f: &File) {
    let _ = rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-rootcopy-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn image(dir: &Path, bytes: &[u8]) -> File {
        std::fs::create_dir_all(dir).expect("scratch dir");
        let p = dir.join("image");
        std::fs::write(&p, bytes).expect("write image");
        File::open(&p).expect("open image")
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn written_once_then_reused_and_rewritten_when_it_differs() {
        let d = scratch("cycle");
        let bytes = pattern(3 * CHUNK + 4096, 7);
        let mut src = image(&d, &bytes);
        let dst = d.join("var/lib/ferry/rootfs.squashfs");
        let len = bytes.len() as u64;
        assert_eq!(ensure_copy(&mut src, len, &dst).expect("first"), Made::Written);
        assert_eq!(std::fs::read(&dst).expect("copy"), bytes);
        assert_eq!(ensure_copy(&mut src, len, &dst).expect("second"), Made::Reused);

        // One flipped byte in the last chunk (a bit rotted, a file edited): written again.
        let mut bad = bytes.clone();
        bad[3 * CHUNK + 100] ^= 1;
        std::fs::set_permissions(&dst, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        std::fs::write(&dst, &bad).expect("corrupt");
        assert_eq!(ensure_copy(&mut src, len, &dst).expect("third"), Made::Written);
        assert_eq!(std::fs::read(&dst).expect("copy"), bytes);

        // A new image of another size replaces the old copy.
        let newer = pattern(CHUNK / 2, 9);
        let mut src2 = image(&d.join("new"), &newer);
        assert_eq!(ensure_copy(&mut src2, newer.len() as u64, &dst).expect("new image"), Made::Written);
        assert_eq!(std::fs::read(&dst).expect("copy"), newer);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_copy_cut_short_is_finished_over_and_its_leftover_removed() {
        let d = scratch("cut");
        let bytes = pattern(2 * CHUNK, 3);
        let mut src = image(&d, &bytes);
        let dst = d.join("ferry/rootfs.squashfs");
        std::fs::create_dir_all(dst.parent().expect("parent")).expect("dir");
        // A power cut mid-copy leaves the temporary file; one mid-rename leaves nothing worse.
        std::fs::write(tmp_name(&dst), &bytes[..CHUNK]).expect("partial");
        // An older copy truncated by some other tool.
        std::fs::write(&dst, &bytes[..100]).expect("short copy");
        assert_eq!(ensure_copy(&mut src, bytes.len() as u64, &dst).expect("copy"), Made::Written);
        assert_eq!(std::fs::read(&dst).expect("copy"), bytes);
        assert!(!tmp_name(&dst).exists(), "the leftover is gone");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn only_the_first_len_bytes_are_the_image() {
        // The loop device's size is the image's size; a longer source file is not copied whole.
        let d = scratch("len");
        let bytes = pattern(CHUNK + 10, 1);
        let mut src = image(&d, &bytes);
        let dst = d.join("c/rootfs.squashfs");
        assert_eq!(ensure_copy(&mut src, CHUNK as u64, &dst).expect("copy"), Made::Written);
        assert_eq!(std::fs::read(&dst).expect("copy"), &bytes[..CHUNK]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn room_keeps_headroom_for_containers() {
        let img = 107 << 20;
        assert!(room_for(img, img + HEADROOM, 0).is_ok());
        let e = room_for(img, img + HEADROOM - 1, 0).expect_err("one byte short").to_string();
        assert!(e.contains("MiB free") && e.contains("512 MiB for containers"), "{e}");
        // An old copy about to be replaced gives its space back.
        assert!(room_for(img, HEADROOM, img).is_ok());
        assert!(room_for(u64::MAX, 0, 0).is_err(), "no overflow, and no room for that");
    }
}
