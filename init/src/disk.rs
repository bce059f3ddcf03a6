//! The data disk (DESIGN §4): pick the disk, format a format-me or blank disk crash-safely, grow it when
//! the disk got bigger, mount it and make /var/lib, /etc/docker, logs and /tmp live on it.
//!
//! Crash safety: the format-me magic at byte 0 stays until the very end. Swap and ext4 are made at their
//! final offsets (ext4 through a loop device window), userdata.tar is stored in the new filesystem, and
//! only then are the GPT copies written, backup first, protective MBR (which erases the magic) last.
//! A boot that finds the magic and, at the data offset, our filesystem holding userdata.tar resumes with
//! the partition table; anything less starts over from the (still intact) userdata.
use crate::blockdev::{self, Disk};
use crate::error::{Error, Result};
use crate::{log, loopdev, sys};
use ferry_contract::gpt::{self, Partition, Table, SECTOR};
use ferry_contract::{paths, userdata};
use std::time::{Duration, Instant};

pub const DATA_LABEL: &str = "boot2docker-data";
pub const SWAP_LABEL: &str = "boot2dockerswap";
const MIB: u64 = 1 << 20;
pub const SWAP_BYTES: u64 = 1000 * MIB;
pub const MIN_DATA_BYTES: u64 = 256 * MIB;
/// How much of a disk's head is examined (and the userdata cap).
const HEAD: usize = userdata::MAX_SIZE;

/// Where the partitions go on a disk of `bytes`: swap (partition 2) first at 1 MiB, data (partition 1)
/// after it up to the last usable sector, so growing the disk grows the data partition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Layout {
    pub sectors: u64,
    pub swap: (u64, u64),
    pub data: (u64, u64),
}

pub fn layout(bytes: u64) -> Result<Layout> {
    let sectors = bytes / SECTOR;
    let swap_first = MIB / SECTOR;
    let data_first = swap_first + SWAP_BYTES / SECTOR;
    let need = data_first * SECTOR + MIN_DATA_BYTES + MIB;
    if bytes < need {
        return Err(Error::msg(format!(
            "the disk has {} MiB; Ferry needs at least {} MiB (1000 MiB swap + {} MiB data)",
            bytes / MIB,
            need.div_ceil(MIB),
            MIN_DATA_BYTES / MIB
        )));
    }
    let t = Table { disk_guid: [0; 16], sectors, partitions: vec![] };
    Ok(Layout { sectors, swap: (swap_first, data_first - 1), data: (data_first, aligned_end(t.last_usable())) })
}

/// The last sector of a partition ending at or before `last_usable` on a 1 MiB boundary (alignment keeps
/// partitioning tools and encryption layers content).
pub fn aligned_end(last_usable: u64) -> u64 {
    let align = MIB / SECTOR;
    ((last_usable + 1) / align) * align - 1
}

impl Layout {
    fn bytes(r: (u64, u64)) -> (u64, u64) {
        (r.0 * SECTOR, (r.1 - r.0 + 1) * SECTOR)
    }
    pub fn data_window(&self) -> (u64, u64) {
        Self::bytes(self.data)
    }
    pub fn swap_window(&self) -> (u64, u64) {
        Self::bytes(self.swap)
    }
    pub fn table(&self, guids: [[u8; 16]; 3]) -> Table {
        Table {
            disk_guid: gpt::v4(guids[0]),
            sectors: self.sectors,
            partitions: vec![
                Partition {
                    type_guid: gpt::LINUX_FS,
                    unique: gpt::v4(guids[1]),
                    first_lba: self.data.0,
                    last_lba: self.data.1,
                    name: DATA_LABEL.into(),
                },
                Partition {
                    type_guid: gpt::LINUX_SWAP,
                    unique: gpt::v4(guids[2]),
                    first_lba: self.swap.0,
                    last_lba: self.swap.1,
                    name: SWAP_LABEL.into(),
                },
            ],
        }
    }
}

/// What a disk is to Ferry.
#[derive(Debug, Clone, PartialEq)]
pub enum Class {
    /// Holds a filesystem labelled boot2docker-data (this device: a partition or the whole disk).
    Ours(String),
    /// Starts with "boot2docker, please format-me".
    FormatMe,
    /// First and last MiB all zeros: a fresh virtual disk.
    Blank,
    /// Anything else; never written. The text says what was found.
    Foreign(String),
}

/// Classify from what is on the disk: the labels of its partitions, its head and its tail.
pub fn classify_bytes(part_labels: &[(String, Option<String>)], whole_label: Option<&str>, head: &[u8], tail: &[u8]) -> Class {
    if let Some((dev, _)) = part_labels.iter().find(|(_, l)| l.as_deref() == Some(DATA_LABEL)) {
        return Class::Ours(dev.clone());
    }
    if whole_label == Some(DATA_LABEL) {
        return Class::Ours(String::new());
    }
    if head.starts_with(userdata::MAGIC.as_bytes()) {
        return Class::FormatMe;
    }
    if whole_label.is_none() && head.iter().all(|&b| b == 0) && tail.iter().all(|&b| b == 0) {
        return Class::Blank;
    }
    let what = if let Some(l) = whole_label {
        format!("an ext filesystem labelled {l:?}")
    } else if head.get(512..520) == Some(b"EFI PART") {
        format!("a GPT partition table with {} partition(s)", part_labels.len())
    } else if head.get(510..512) == Some(&[0x55, 0xAA]) {
        "an MBR (partition table or boot sector)".to_string()
    } else if head.iter().all(|&b| b == 0) {
        "data near its end".to_string()
    } else {
        "data that is not Ferry's".to_string()
    };
    Class::Foreign(what)
}

pub fn classify(d: &Disk) -> Result<Class> {
    let dev = d.dev();
    let labels: Vec<(String, Option<String>)> = blockdev::partitions(&d.name)
        .into_iter()
        .map(|p| {
            let pdev = format!("/dev/{p}");
            let l = blockdev::read_at(&pdev, 0, 2048).ok().and_then(|h| blockdev::ext_label(&h));
            (pdev, l)
        })
        .collect();
    let head = blockdev::read_at(&dev, 0, HEAD.min(d.bytes as usize))?;
    let tail_len = (MIB).min(d.bytes);
    let tail = blockdev::read_at(&dev, d.bytes - tail_len, tail_len as usize)?;
    let whole = blockdev::ext_label(&head);
    Ok(match classify_bytes(&labels, whole.as_deref(), &head, &tail) {
        Class::Ours(p) if p.is_empty() => Class::Ours(dev),
        c => c,
    })
}

/// The decision for this boot.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    Mount { disk: Disk, dev: String },
    Format { disk: Disk, blank: bool },
    None,
}

/// DESIGN §4's order over classified candidates (largest first): ours, then format-me, then blank.
/// Returns the choice and one console line per disk that is passed over.
pub fn choose(found: &[(Disk, Class)]) -> (Choice, Vec<String>) {
    let mut notes = Vec::new();
    let mut choice = Choice::None;
    for rank in 0..3 {
        for (d, c) in found {
            let pick = match (rank, c) {
                (0, Class::Ours(dev)) => Some(Choice::Mount { disk: d.clone(), dev: dev.clone() }),
                (1, Class::FormatMe) => Some(Choice::Format { disk: d.clone(), blank: false }),
                (2, Class::Blank) => Some(Choice::Format { disk: d.clone(), blank: true }),
                _ => None,
            };
            if let Some(p) = pick {
                if choice == Choice::None {
                    choice = p;
                }
            }
        }
        if choice != Choice::None {
            break;
        }
    }
    let chosen = match &choice {
        Choice::Mount { disk, .. } | Choice::Format { disk, .. } => Some(disk.name.clone()),
        Choice::None => None,
    };
    for (d, c) in found {
        if Some(&d.name) == chosen.as_ref() {
            continue;
        }
        let using = chosen.as_ref().map(|n| format!("using /dev/{n}")).unwrap_or_else(|| "not using it".into());
        notes.push(match c {
            Class::Foreign(what) => format!("{}: holds {what}; not Ferry's, never written", d.dev()),
            Class::Ours(dev) => format!("{}: another boot2docker-data filesystem ({dev}); {using}, leaving it untouched", d.dev()),
            Class::FormatMe => format!("{}: also a format-me disk; {using} (first by size), leaving it untouched", d.dev()),
            Class::Blank => format!("{}: blank; {using}, leaving it untouched", d.dev()),
        });
    }
    (choice, notes)
}

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    // SAFETY: getrandom into a local buffer of the given length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, 16, 0) };
    if n != 16 {
        // Uniqueness, not secrecy, is what GUIDs need; the clock is a usable fallback.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        b = t.to_le_bytes();
    }
    b
}

pub const PAUSE_POINTS: &[&str] = &["after-userdata", "before-gpt", "mid-gpt", "after-gpt"];

/// `ferry.debug.pause=POINT`: stop at a named point of the first boot so a test can cut the power there.
pub fn pause_point(pause: Option<&str>, point: &str) {
    if pause == Some(point) {
        log::line(&format!("disk: paused at {point} (ferry.debug.pause); cut the power now"));
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// Where a new filesystem is filled before it is put in place.
const STAGING: &str = "/run/ferry/format";

fn run_tool(argv: &[&str]) -> Result<()> {
    let mut cmd = std::process::Command::new(argv[0]);
    cmd.args(&argv[1..]).env("PATH", sys::PATH).stdin(std::process::Stdio::null());
    sys::unblock_signals_in_child(&mut cmd);
    let out = cmd.output().map_err(|e| Error::io(format!("run {}", argv[0]), e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::msg(format!("{} failed ({}): {}", argv.join(" "), out.status, err.trim())));
    }
    Ok(())
}

/// Mount our filesystem through a window of the disk and check whether setup got as far as userdata.tar.
fn staged_filesystem_complete(dev: &str, l: &Layout) -> bool {
    let (off, _) = l.data_window();
    let label = blockdev::read_at(dev, off, 2048).ok().and_then(|h| blockdev::ext_label(&h));
    if label.as_deref() != Some(DATA_LABEL) {
        return false;
    }
    let Ok(lp) = loopdev::attach(dev, Some(l.data_window()), true) else { return false };
    if sys::mkdir_p(STAGING, 0o755).is_err() || sys::mount(&lp.path, STAGING, "ext4", sys::MountFlags::RDONLY, "").is_err() {
        return false;
    }
    let done = std::path::Path::new(STAGING).join(paths::relative(paths::USERDATA)).is_file();
    let _ = sys::umount(STAGING, sys::UnmountFlags::empty());
    done
}

/// Format `disk` (format-me or blank). Returns the data partition's device.
pub fn format(disk: &Disk, blank: bool, pause: Option<&str>) -> Result<String> {
    let dev = disk.dev();
    if disk.read_only {
        return Err(Error::msg(format!("{dev} is read-only; cannot format it")));
    }
    let l = layout(disk.bytes).map_err(|e| Error::msg(format!("{dev}: {e}")))?;
    log::line(&format!("disk: formatting {dev} ({} MiB): swap 1000 MiB, data {} MiB", disk.bytes / MIB, l.data_window().1 / MIB));
    if blank {
        // A blank disk becomes a format-me disk with empty userdata, so every later step is resumable.
        blockdev::write_at(&dev, 0, &userdata::write(&[userdata::file(userdata::MAGIC, 0, userdata::MAGIC)]))?;
    }
    if staged_filesystem_complete(&dev, &l) {
        log::line("disk: resuming an interrupted first boot: the filesystem and userdata are already in place");
    } else {
        let head = blockdev::read_at(&dev, 0, HEAD)?;
        let entries = match userdata::parse(&head) {
            Ok(e) => e,
            Err(e) => {
                log::line(&format!("ERROR: {dev}: {e}; formatting without userdata (no SSH keys from this disk)"));
                vec![]
            }
        };
        let keys = entries.iter().filter(|e| e.path.starts_with(".ssh/")).count();
        log::line(&format!("disk: userdata read from {dev}: {} entries, {keys} SSH key file(s)", entries.len()));
        pause_point(pause, "after-userdata");
        let t = Instant::now();
        let (soff, ssize) = l.swap_window();
        blockdev::write_at(&dev, soff, &blockdev::swap_header(ssize, SWAP_LABEL, gpt::v4(random16())))?;
        log::line(&format!("disk: making the ext4 filesystem ({} MiB)", l.data_window().1 / MIB));
        let lp = loopdev::attach(&dev, Some(l.data_window()), true)?;
        run_tool(&["mke2fs", "-q", "-F", "-t", "ext4", "-L", DATA_LABEL, "-i", "8192", "-E", "nodiscard", &lp.path])?;
        log::line(&format!("disk: filesystem made in {:.2}s", t.elapsed().as_secs_f64()));
        sys::mkdir_p(STAGING, 0o755)?;
        sys::mount(&lp.path, STAGING, "ext4", sys::MountFlags::empty(), "")?;
        let r = populate(STAGING, &entries);
        let _ = sys::umount(STAGING, sys::UnmountFlags::empty());
        drop(lp);
        r?;
    }
    pause_point(pause, "before-gpt");
    log::line("disk: writing the partition table");
    let t = l.table([random16(), random16(), random16()]);
    blockdev::write_at(&dev, t.backup_offset(), &t.backup()?)?;
    blockdev::write_at(&dev, SECTOR, &t.primary_header_and_entries()?)?;
    pause_point(pause, "mid-gpt");
    blockdev::write_at(&dev, 0, &t.protective_mbr(&[]))?;
    log::line("disk: partition table written");
    pause_point(pause, "after-gpt");
    blockdev::reread_partitions(disk, 1)
}

/// First-boot contents: the directories, Ferry's provisioned TLS files and profile, and userdata.tar
/// (written last, atomically: its presence means the filesystem is complete).
fn populate(root: &str, entries: &[userdata::Entry]) -> Result<()> {
    let b2d = format!("{root}{}", paths::B2D);
    sys::mkdir_p(&b2d, 0o755)?;
    crate::provision::install_persistent(&b2d, entries)?;
    let tar = userdata::write(entries);
    sys::write_atomic(&format!("{root}{}", paths::USERDATA), &tar, 0o600)?;
    // The rename must be durable before the partition table makes this the data disk.
    if let Ok(d) = std::fs::File::open(&b2d) {
        let _ = d.sync_all();
    }
    rustix::fs::sync();
    Ok(())
}

/// Grow the GPT (backup to the new end, partition 1 to the last usable sector) when the disk is bigger
/// than its table says. Returns whether it grew. Runs before anything on the disk is mounted.
pub fn grow_table(disk: &Disk) -> Result<bool> {
    let dev = disk.dev();
    let head = blockdev::read_at(&dev, 0, (gpt::PRIMARY_SECTORS * SECTOR) as usize)?;
    let old = match Table::parse_primary(&head) {
        Ok(t) => t,
        Err(ferry_contract::Error::NoGpt(_)) => return grow_mbr(disk, &head),
        // A damaged table is never written over, not even to grow it; the kernel may still read the backup.
        Err(e) => {
            log::warn(&format!("disk: {dev}: {e}; the partition table is left as it is (not grown)"));
            return Ok(false);
        }
    };
    let sectors = disk.bytes / SECTOR;
    if old.sectors >= sectors {
        return Ok(false);
    }
    let mut t = old.clone();
    t.sectors = sectors;
    // Only our layout is grown: data is partition 1 and ends the disk.
    let last = t.partitions.iter().map(|p| p.last_lba).max().unwrap_or(0);
    let new_last = aligned_end(t.last_usable());
    match t.partitions.first_mut() {
        Some(p) if p.type_guid == gpt::LINUX_FS && p.last_lba == last => p.last_lba = new_last,
        _ => return Err(Error::msg(format!("{dev}: grew, but partition 1 is not the last one; not resizing"))),
    }
    log::line(&format!(
        "disk: {dev} grew from {} to {} MiB; moving the backup GPT and growing partition 1",
        old.sectors * SECTOR / MIB,
        disk.bytes / MIB
    ));
    blockdev::write_at(&dev, t.backup_offset(), &t.backup()?)?;
    blockdev::write_at(&dev, SECTOR, &t.primary_header_and_entries()?)?;
    blockdev::write_at(&dev, 0, &t.protective_mbr(&head[..440]))?;
    blockdev::reread_partitions(disk, 1)?;
    Ok(true)
}

/// A disk boot2docker partitioned (MBR) that was enlarged: partition 1 is rewritten to reach the end, in
/// one sector write (a cut leaves the old table or the new one, both valid). A layout we do not grow is
/// said on the console and mounted as it is.
fn grow_mbr(disk: &Disk, head: &[u8]) -> Result<bool> {
    let dev = disk.dev();
    match crate::mbr::grown(head, disk.bytes / SECTOR) {
        Ok(None) => Ok(false),
        Err(why) => {
            log::line(&format!("disk: {dev} grew, but {why}; the extra space is left unused"));
            Ok(false)
        }
        Ok(Some(sector0)) => {
            log::line(&format!("disk: {dev} (boot2docker's MBR layout) grew to {} MiB; growing partition 1", disk.bytes / MIB));
            blockdev::write_at(&dev, 0, &sector0)?;
            blockdev::reread_partitions(disk, 1)?;
            Ok(true)
        }
    }
}

/// The filesystem is smaller than its partition (grown disk, or a cut during an earlier growth).
fn fs_smaller_than_device(dev: &str) -> bool {
    let Ok(sb) = blockdev::read_at(dev, 1024, 1024) else { return false };
    let le32 = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]) as u64;
    let blocks = le32(0x4) | (le32(0x150) << 32);
    let bsize = 1024u64 << le32(0x18).min(6);
    let name = dev.trim_start_matches("/dev/");
    let sectors: u64 =
        std::fs::read_to_string(format!("/sys/class/block/{name}/size")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    // The superblock comes from the disk: saturate rather than wrap (a huge claim reads as "not smaller").
    sectors.saturating_mul(SECTOR) > blocks.saturating_mul(bsize).saturating_add(8 * MIB)
}

/// Mount the data filesystem at /mnt/<name> and move the persistent paths onto it. Returns the mount point.
pub fn mount_data(dev: &str) -> Result<String> {
    let name = dev.trim_start_matches("/dev/");
    let mnt = format!("/mnt/{name}");
    let grow = fs_smaller_than_device(dev);
    sys::mkdir_p(&mnt, 0o755)?;
    sys::mount(dev, &mnt, "ext4", sys::MountFlags::NOATIME, "")?;
    if grow {
        let t = Instant::now();
        run_tool(&["resize2fs", dev])?;
        log::line(&format!("disk: {dev} filesystem grown to its partition in {:.2}s", t.elapsed().as_secs_f64()));
    }
    for d in
        [paths::PERSISTENT_DOCKER_ETC, paths::PERSISTENT_LOG_DIR, paths::SSH_HOST_KEYS, "/var/lib/docker", "/var/lib/containerd", "/tmp"]
    {
        sys::mkdir_p(format!("{mnt}{d}"), 0o755)?;
    }
    empty_dir(&format!("{mnt}/tmp"));
    std::fs::set_permissions(format!("{mnt}/tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777))
        .map_err(|e| Error::io(format!("chmod {mnt}/tmp"), e))?;
    sys::mkdir_p(paths::DOCKER_ETC, 0o755)?;
    for (from, to) in [
        (format!("{mnt}/var/lib"), "/var/lib"),
        (format!("{mnt}/tmp"), "/tmp"),
        (paths::PERSISTENT_DOCKER_ETC.to_string(), paths::DOCKER_ETC),
        (paths::PERSISTENT_LOG_DIR.to_string(), paths::LOG_DIR),
    ] {
        sys::mount_bind(&from, to)?;
    }
    Ok(mnt)
}

/// Remove everything below `dir` without following links out of it.
fn empty_dir(dir: &str) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let is_dir = std::fs::symlink_metadata(&p).map(|m| m.is_dir()).unwrap_or(false);
        let _ = if is_dir { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
    }
}

/// Whether a partition holding a swap signature with `label` is the disk's swap: ours is labelled; the
/// one boot2docker made has no label and is found by its MBR type instead.
pub fn is_our_swap(label: Option<&str>, mbr_type: Option<u8>) -> bool {
    match label {
        Some(SWAP_LABEL) => true,
        Some("") => mbr_type == Some(crate::mbr::TYPE_SWAP),
        _ => false,
    }
}

/// Turn on the disk's swap partition (see is_our_swap), if it has one.
pub fn swap_on(disk: &Disk) -> Option<String> {
    let mbr = blockdev::read_at(&disk.dev(), 0, SECTOR as usize).map(|s| crate::mbr::parse(&s)).unwrap_or_default();
    for p in blockdev::partitions(&disk.name) {
        let dev = format!("/dev/{p}");
        let number: Option<u32> =
            std::fs::read_to_string(format!("/sys/class/block/{p}/partition")).ok().and_then(|s| s.trim().parse().ok());
        let kind = mbr.iter().find(|m| Some(m.number) == number).map(|m| m.kind);
        let Ok(head) = blockdev::read_at(&dev, 0, 4096) else { continue };
        if is_our_swap(blockdev::swap_label(&head).as_deref(), kind) {
            let c = sys::cstr(&dev).ok()?;
            // SAFETY: valid C string; flags 0.
            if unsafe { libc::swapon(c.as_ptr(), 0) } == 0 {
                return Some(dev);
            }
            log::warn(&format!("swapon {dev}: {}", std::io::Error::last_os_error()));
        }
    }
    None
}

/// What the disk phase settled on.
pub enum Outcome {
    Persistent {
        mnt: String,
        fresh: bool,
    },
    /// No usable disk. `userdata` is a format-me disk's payload when formatting it failed, so its SSH
    /// keys still work for this boot.
    Ram {
        userdata: Vec<userdata::Entry>,
    },
}

/// The whole disk phase. Errors are reported and end in RAM mode, never in a crash.
pub fn setup(forced: Option<&str>, pause: Option<&str>) -> Outcome {
    // Disk drivers came with coldplug; the filesystem is loaded here rather than on the first mount's
    // request_module, so a missing module is named at once.
    if let Err(e) = crate::kmod::ModDb::running().and_then(|db| db.insert("ext4", "")) {
        log::line(&format!("ERROR: load ext4: {e}"));
    }
    let want = forced.map(|f| f.trim_start_matches("/dev/"));
    let mut cands = blockdev::settled_candidates(want);
    if let Some(f) = forced {
        let name = f.trim_start_matches("/dev/");
        cands.retain(|d| d.name == name);
        if cands.is_empty() {
            log::line(&format!("ERROR: ferry.disk={f}: no such disk; running from RAM"));
            return Outcome::Ram { userdata: vec![] };
        }
    }
    let mut found = Vec::new();
    for d in cands {
        match classify(&d) {
            Ok(c) => found.push((d, c)),
            Err(e) => log::line(&format!("disk: {}: {e}; skipping it", d.dev())),
        }
    }
    let (choice, notes) = choose(&found);
    let mut fallback = vec![];
    for n in notes {
        log::line(&format!("disk: {n}"));
    }
    let r = match choice {
        Choice::None => {
            log::line("disk: no data disk (attach a blank or format-me disk to keep data); containers, images and volumes live in RAM");
            return Outcome::Ram { userdata: vec![] };
        }
        Choice::Mount { disk, dev } => {
            log::line(&format!("disk: {dev} is labelled {DATA_LABEL}; mounting it"));
            grow_table(&disk).and_then(|_| mount_data(&dev)).map(|mnt| (disk, mnt, false))
        }
        Choice::Format { disk, blank } => {
            let dev = disk.dev();
            format(&disk, blank, pause).and_then(|p| mount_data(&p)).map(|mnt| (disk, mnt, true)).inspect_err(|_| {
                // The magic is still there (the partition table is written last), so the next boot retries.
                fallback = blockdev::read_at(&dev, 0, HEAD).ok().and_then(|h| userdata::parse(&h).ok()).unwrap_or_default();
            })
        }
    };
    match r {
        Ok((disk, mnt, fresh)) => {
            let swap = swap_on(&disk).map(|s| format!(", swap on {s}")).unwrap_or_default();
            log::line(&format!("disk: data on {mnt}{swap}; /var/lib, /etc/docker, /var/log and /tmp persist"));
            Outcome::Persistent { mnt, fresh }
        }
        Err(e) => {
            log::line(&format!("ERROR: data disk: {e}; running from RAM"));
            Outcome::Ram { userdata: fallback }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, gib: u64) -> Disk {
        Disk { name: name.into(), bytes: gib << 30, read_only: false }
    }

    #[test]
    fn layout_places_swap_first_and_data_last() {
        let l = layout(20 << 30).unwrap();
        assert_eq!(l.swap, (2048, 2048 + 2_048_000 - 1));
        assert_eq!(l.data.0, 2048 + 2_048_000);
        assert_eq!(l.data.1, (20u64 << 30) / 512 - 2048 - 1);
        assert_eq!((l.data.1 + 1) % 2048, 0);
        let t = l.table([[1; 16], [2; 16], [3; 16]]);
        assert!(t.backup().is_ok());
        assert!(layout(1100 * MIB).unwrap_err().to_string().contains("at least"));
    }

    #[test]
    fn classification() {
        let z = vec![0u8; 4096];
        let mut magic = userdata::write(&[userdata::file(userdata::MAGIC, 0, userdata::MAGIC)]);
        magic.resize(4096, 0);
        assert_eq!(classify_bytes(&[], None, &magic, &z), Class::FormatMe);
        assert_eq!(classify_bytes(&[], None, &z, &z), Class::Blank);
        let mut tail = z.clone();
        tail[100] = 1;
        assert!(matches!(classify_bytes(&[], None, &z, &tail), Class::Foreign(_)));
        let mut mbr = z.clone();
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert!(matches!(classify_bytes(&[], None, &mbr, &z), Class::Foreign(w) if w.contains("MBR")));
        assert!(matches!(classify_bytes(&[], Some("other"), &z, &z), Class::Foreign(w) if w.contains("other")));
        let parts = vec![("/dev/sda2".to_string(), None), ("/dev/sda1".to_string(), Some(DATA_LABEL.to_string()))];
        assert_eq!(classify_bytes(&parts, None, &mbr, &z), Class::Ours("/dev/sda1".into()));
        assert_eq!(classify_bytes(&[], Some(DATA_LABEL), &z, &z), Class::Ours(String::new()));
    }

    #[test]
    fn swap_is_ours_by_label_or_by_boot2dockers_mbr_type() {
        assert!(is_our_swap(Some(SWAP_LABEL), None));
        assert!(is_our_swap(Some(""), Some(crate::mbr::TYPE_SWAP)));
        assert!(!is_our_swap(Some(""), Some(crate::mbr::TYPE_LINUX)));
        assert!(!is_our_swap(Some(""), None), "an unlabelled swap on a GPT disk is someone else's");
        assert!(!is_our_swap(Some("other"), Some(crate::mbr::TYPE_SWAP)));
        assert!(!is_our_swap(None, Some(crate::mbr::TYPE_SWAP)), "no signature, no swapon");
    }

    #[test]
    fn choice_follows_the_documented_order() {
        let found = vec![
            (disk("sda", 30), Class::Blank),
            (disk("sdb", 20), Class::FormatMe),
            (disk("sdc", 10), Class::FormatMe),
            (disk("sdd", 5), Class::Foreign("x".into())),
        ];
        let (c, notes) = choose(&found);
        assert_eq!(c, Choice::Format { disk: disk("sdb", 20), blank: false });
        assert!(notes.iter().any(|n| n.contains("/dev/sdc: also a format-me disk")));
        assert!(notes.iter().any(|n| n.contains("/dev/sdd") && n.contains("never written")));
        let mut with_ours = found.clone();
        with_ours.push((disk("vda", 1), Class::Ours("/dev/vda1".into())));
        assert_eq!(choose(&with_ours).0, Choice::Mount { disk: disk("vda", 1), dev: "/dev/vda1".into() });
        assert_eq!(choose(&found[3..]).0, Choice::None);
        assert_eq!(choose(&found[..1]).0, Choice::Format { disk: disk("sda", 30), blank: true });
    }
}
