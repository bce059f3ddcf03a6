//! Block devices as sysfs shows them: which whole disks may hold Ferry's data, their partitions, sizes,
//! and positioned reads and writes that reach the disk (fsync) before the next step starts.
use crate::error::{Context, Error, Result};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

#[derive(Debug, Clone, PartialEq)]
pub struct Disk {
    /// Kernel name: sda, vdb, nvme0n1, mmcblk0.
    pub name: String,
    pub bytes: u64,
    pub read_only: bool,
}

impl Disk {
    pub fn dev(&self) -> String {
        format!("/dev/{}", self.name)
    }
}

/// Device names that are never data disks: loop, RAM disks, CD-ROMs, floppies, device-mapper, md, nbd.
pub fn excluded_name(name: &str) -> bool {
    ["loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd"].iter().any(|p| name.starts_with(p))
}

/// Partition N's device name: a `p` goes between a disk name ending in a digit and the number.
pub fn partition_name(disk: &str, n: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

fn sys_read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Whole disks that may hold data, largest first (ties by name). CD-ROMs (SCSI type 5) are skipped.
pub fn candidates() -> Vec<Disk> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/block") else { return out };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if excluded_name(&name) {
            continue;
        }
        let base = format!("/sys/block/{name}");
        if sys_read(&format!("{base}/device/type")).as_deref() == Some("5") {
            continue;
        }
        let sectors: u64 = sys_read(&format!("{base}/size")).and_then(|s| s.parse().ok()).unwrap_or(0);
        if sectors == 0 {
            continue;
        }
        let read_only = sys_read(&format!("{base}/ro")).as_deref() == Some("1");
        out.push(Disk { name, bytes: sectors * 512, read_only });
    }
    out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.name.cmp(&b.name)));
    out
}

/// USB mass-storage interfaces (class 08) with no block device below them yet: usb-storage waits a
/// second (`delay_use`) before it scans, so such a disk comes late. `sys` is /sys.
pub fn usb_storage_pending(sys: &std::path::Path) -> usize {
    fn has_block(dir: &std::path::Path, depth: usize) -> bool {
        let Ok(rd) = std::fs::read_dir(dir) else { return false };
        rd.flatten().any(|e| {
            let ft = e.file_type().ok();
            let is_dir = ft.is_some_and(|t| t.is_dir() && !t.is_symlink());
            if e.file_name() == "block" {
                return std::fs::read_dir(e.path()).is_ok_and(|mut b| b.next().is_some());
            }
            is_dir && depth < 8 && has_block(&e.path(), depth + 1)
        })
    }
    let Ok(rd) = std::fs::read_dir(sys.join("bus/usb/devices")) else { return 0 };
    rd.flatten()
        .filter(|e| std::fs::read_to_string(e.path().join("bInterfaceClass")).is_ok_and(|c| c.trim() == "08"))
        .filter(|e| !std::fs::canonicalize(e.path()).is_ok_and(|real| has_block(&real, 0)))
        .count()
}

/// Does this machine have a USB host controller (a root hub `usbN`)? Its devices enumerate after the
/// controller's module loads, so a USB data disk shows up a moment after coldplug has finished.
fn has_usb_hosts(sys: &std::path::Path) -> bool {
    std::fs::read_dir(sys.join("bus/usb/devices")).is_ok_and(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().starts_with("usb")))
}

/// Candidates once the set stops changing: SCSI/ATA buses probe asynchronously after their modules load,
/// so a disk may appear a moment after coldplug. `want` (ferry.disk) is waited for longer. With USB host
/// controllers the wait lasts at least 2 s (enumeration), and while a USB disk is still being scanned.
pub fn settled_candidates(want: Option<&str>) -> Vec<Disk> {
    let sys = std::path::Path::new("/sys");
    let start = std::time::Instant::now();
    let min = if has_usb_hosts(sys) { std::time::Duration::from_secs(2) } else { std::time::Duration::ZERO };
    let mut last = candidates();
    let mut stable = 0;
    while start.elapsed() < std::time::Duration::from_secs(10) {
        let has_want = want.is_none_or(|w| last.iter().any(|d| d.name == w));
        let usb_done = start.elapsed() >= min && usb_storage_pending(sys) == 0;
        if stable >= 3 && usb_done && (has_want || start.elapsed() > std::time::Duration::from_secs(3)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        let now = candidates();
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
    }
    last
}

/// The disk's partitions by kernel name, in partition-number order.
pub fn partitions(disk: &str) -> Vec<String> {
    let mut v: Vec<(u32, String)> = std::fs::read_dir(format!("/sys/block/{disk}"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    let num = sys_read(&format!("/sys/block/{disk}/{n}/partition"))?.parse().ok()?;
                    Some((num, n))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

pub fn read_at(dev: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
    let f = std::fs::File::open(dev).ctx(|| format!("open {dev}"))?;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], offset + done as u64).ctx(|| format!("read {dev} at byte {}", offset + done as u64))?;
        if n == 0 {
            buf.truncate(done);
            break;
        }
        done += n;
    }
    Ok(buf)
}

/// Write and fsync, so the write is on the disk before the caller's next step (crash-safety ordering).
pub fn write_at(dev: &str, offset: u64, data: &[u8]) -> Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(dev).ctx(|| format!("open {dev} for writing"))?;
    f.write_all_at(data, offset).ctx(|| format!("write {} bytes to {dev} at byte {offset}", data.len()))?;
    f.sync_all().ctx(|| format!("fsync {dev}"))
}

/// Ask the kernel to re-read the partition table (BLKRRPART) and wait for partition `n`'s node.
pub fn reread_partitions(disk: &Disk, n: u32) -> Result<String> {
    const BLKRRPART: libc::c_ulong = 0x125F;
    let f = std::fs::File::open(disk.dev()).ctx(|| format!("open {}", disk.dev()))?;
    // SAFETY: ioctl without memory arguments.
    if unsafe { libc::ioctl(f.as_raw_fd(), BLKRRPART) } != 0 {
        return Err(Error::last_os(format!("re-read the partition table of {}", disk.dev())));
    }
    drop(f);
    let part = format!("/dev/{}", partition_name(&disk.name, n));
    for _ in 0..250 {
        if std::path::Path::new(&part).exists() {
            return Ok(part);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(Error::msg(format!("{part} did not appear after re-reading the partition table")))
}

/// An ext4/ext3/ext2 filesystem label from a superblock (bytes 1024.. of the filesystem), if it is one.
pub fn ext_label(fs_head: &[u8]) -> Option<String> {
    let sb = fs_head.get(1024..1024 + 256)?;
    if sb[0x38..0x3A] != [0x53, 0xEF] {
        return None;
    }
    let l = &sb[0x78..0x88];
    Some(String::from_utf8_lossy(&l[..l.iter().position(|&b| b == 0).unwrap_or(16)]).to_string())
}

/// A Linux swap signature's label (v1 header), if the area is swap.
pub fn swap_label(head: &[u8]) -> Option<String> {
    if head.get(4086..4096)? != b"SWAPSPACE2" {
        return None;
    }
    let l = &head[1024 + 28..1024 + 44];
    Some(String::from_utf8_lossy(&l[..l.iter().position(|&b| b == 0).unwrap_or(16)]).to_string())
}

/// A v1 swap header for an area of `bytes` (4 KiB pages): what mkswap writes, label and UUID included.
pub fn swap_header(bytes: u64, label: &str, uuid: [u8; 16]) -> Vec<u8> {
    let mut h = vec![0u8; 4096];
    h[1024..1028].copy_from_slice(&1u32.to_le_bytes());
    let last_page = (bytes / 4096).saturating_sub(1).min(u32::MAX as u64) as u32;
    h[1028..1032].copy_from_slice(&last_page.to_le_bytes());
    h[1036..1052].copy_from_slice(&uuid);
    let lb = label.as_bytes();
    h[1052..1052 + lb.len().min(16)].copy_from_slice(&lb[..lb.len().min(16)]);
    h[4086..4096].copy_from_slice(b"SWAPSPACE2");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usb_disk_is_pending_until_its_block_device_appears() {
        let sys = std::env::temp_dir().join(format!("ferry-usbsys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&sys);
        let bus = sys.join("bus/usb/devices");
        let dev = sys.join("devices/pci0000:00/0000:00:04.0/usb2/2-1");
        for (iface, class) in [("2-1:1.0", "08"), ("2-1:1.1", "03")] {
            std::fs::create_dir_all(dev.join(iface)).unwrap();
            std::fs::write(dev.join(iface).join("bInterfaceClass"), format!("{class}\n")).unwrap();
        }
        std::fs::create_dir_all(&bus).unwrap();
        std::os::unix::fs::symlink(dev.join("2-1:1.0"), bus.join("2-1:1.0")).unwrap();
        std::os::unix::fs::symlink(dev.join("2-1:1.1"), bus.join("2-1:1.1")).unwrap();
        std::os::unix::fs::symlink(sys.join("devices/pci0000:00/0000:00:04.0/usb2"), bus.join("usb2")).unwrap();
        assert!(super::has_usb_hosts(&sys));
        assert_eq!(super::usb_storage_pending(&sys), 1, "the storage interface has no disk yet; the keyboard is not waited for");
        let block = dev.join("2-1:1.0/host2/target2:0:0/2:0:0:0/block");
        std::fs::create_dir_all(&block).unwrap();
        assert_eq!(super::usb_storage_pending(&sys), 1, "an empty block directory is not a disk");
        std::fs::create_dir_all(block.join("sdb")).unwrap();
        assert_eq!(super::usb_storage_pending(&sys), 0);
        let _ = std::fs::remove_dir_all(&sys);
        assert!(!super::has_usb_hosts(&sys));
    }

    #[test]
    fn partition_names() {
        assert_eq!(partition_name("sda", 1), "sda1");
        assert_eq!(partition_name("vdb", 2), "vdb2");
        assert_eq!(partition_name("hda", 1), "hda1");
        assert_eq!(partition_name("nvme0n1", 1), "nvme0n1p1");
        assert_eq!(partition_name("mmcblk0", 2), "mmcblk0p2");
        for n in ["loop0", "sr0", "ram1", "zram0", "fd0", "dm-0", "nbd3"] {
            assert!(excluded_name(n), "{n}");
        }
        assert!(!excluded_name("sda") && !excluded_name("nvme0n1") && !excluded_name("mmcblk0"));
    }

    #[test]
    fn swap_header_round_trips_its_label() {
        let h = swap_header(1000 << 20, "boot2dockerswap", [9; 16]);
        assert_eq!(swap_label(&h).as_deref(), Some("boot2dockerswap"));
        assert_eq!(u32::from_le_bytes([h[1028], h[1029], h[1030], h[1031]]), 255_999);
        assert_eq!(swap_label(&[0u8; 4096]), None);
    }

    #[test]
    fn ext_label_needs_the_magic() {
        let mut sb = vec![0u8; 2048];
        assert_eq!(ext_label(&sb), None);
        sb[1024 + 0x38] = 0x53;
        sb[1024 + 0x39] = 0xEF;
        sb[1024 + 0x78..1024 + 0x78 + 16].copy_from_slice(b"boot2docker-data");
        assert_eq!(ext_label(&sb).as_deref(), Some("boot2docker-data"));
    }
}
