//! A FAT16/FAT32 filesystem image written from a list of files (Microsoft's FAT specification, "FAT: General
//! Overview of On-Disk Format"). It is the EFI system partition of both the ISO and the raw image.
//!
//! Layout choices, and why:
//! - 2 KiB clusters, and the data area starts on a 2 KiB boundary: every file then starts on an ISO 9660
//!   block, so the ISO's directory can point at the kernel and initrd inside this image (stored once).
//! - Every file is one contiguous run of clusters (nothing is ever deleted, so nothing fragments).
//! - The FAT type follows from the cluster count, as the spec says: at least 4085 clusters (FAT16), and
//!   FAT32 from 65525. Tiny images are padded up to FAT16 rather than written as FAT12.
//! - Names that are not upper-case 8.3 get VFAT long-name entries, so "loader.conf" reads back as written.
//! - Timestamps are SOURCE_DATE_EPOCH and the volume serial is given by the caller: same input, same bytes.
use crate::error::{Error, Result};
use std::collections::BTreeMap;

const SECTOR: usize = 512;
const SECTORS_PER_CLUSTER: usize = 4;
pub const CLUSTER: usize = SECTOR * SECTORS_PER_CLUSTER;
const FAT16_MIN_CLUSTERS: usize = 4085;
const FAT32_MIN_CLUSTERS: usize = 65525;
/// FAT16's fixed root directory: 512 entries = 16 KiB, a whole number of clusters (keeps the alignment).
const FAT16_ROOT_ENTRIES: usize = 512;

pub struct Options {
    /// Volume label (upper-cased, at most 11 bytes).
    pub label: String,
    pub serial: u32,
    /// Sectors before this filesystem on its disk (the partition's start), recorded in the boot sector.
    pub hidden_sectors: u32,
    pub epoch: i64,
}

/// The image and, for each file, where its bytes are: (offset in the image, length).
pub struct Image {
    pub bytes: Vec<u8>,
    pub extents: BTreeMap<String, (u64, u64)>,
    pub fat32: bool,
}

#[derive(Default)]
struct Dir {
    dirs: BTreeMap<String, Dir>,
    files: BTreeMap<String, usize>,
    first_cluster: u32,
    clusters: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Fat16,
    Fat32,
}

/// Build the image. `files` are (path with '/' separators, contents); parent directories are implied.
pub fn build(files: &[(&str, &[u8])], o: &Options) -> Result<Image> {
    let mut root = Dir::default();
    for (i, (path, _)) in files.iter().enumerate() {
        insert(&mut root, path, i)?;
    }
    // Directory sizes first (they do not depend on where anything lands).
    size_dirs(&mut root, true)?;
    let file_clusters: usize = files.iter().map(|(_, d)| d.len().div_ceil(CLUSTER).max(1)).sum();
    let dir_clusters = count_dir_clusters(&root, true);
    let used_fat16 = file_clusters + dir_clusters;
    // FAT32 keeps its root directory in the data area.
    let used_fat32 = used_fat16 + root.clusters.max(1);
    let (kind, clusters) = if used_fat16 < FAT32_MIN_CLUSTERS {
        (Kind::Fat16, used_fat16.max(FAT16_MIN_CLUSTERS))
    } else {
        (Kind::Fat32, used_fat32.max(FAT32_MIN_CLUSTERS))
    };
    if clusters > 0x0FFF_FFF5 {
        return Err(Error::msg(format!("FAT: {clusters} clusters of {CLUSTER} bytes is more than FAT32 can address")));
    }
    let entry_bytes = if kind == Kind::Fat16 { 2 } else { 4 };
    let fat_sectors = ((clusters + 2) * entry_bytes).div_ceil(SECTOR);
    let root_sectors = if kind == Kind::Fat16 { FAT16_ROOT_ENTRIES * 32 / SECTOR } else { 0 };
    let mut reserved = if kind == Kind::Fat16 { 1 } else { 32 };
    while (reserved + 2 * fat_sectors + root_sectors) % SECTORS_PER_CLUSTER != 0 {
        reserved += 1;
    }
    let data_start = reserved + 2 * fat_sectors + root_sectors;
    let total_sectors = data_start + clusters * SECTORS_PER_CLUSTER;
    if total_sectors > u32::MAX as usize {
        return Err(Error::msg("FAT: the payload is larger than a FAT filesystem can hold".to_string()));
    }
    let mut img = vec![0u8; total_sectors * SECTOR];
    let mut fat = vec![0u32; clusters + 2];
    let eoc = if kind == Kind::Fat16 { 0xFFFF } else { 0x0FFF_FFFF };
    fat[0] = if kind == Kind::Fat16 { 0xFFF8 } else { 0x0FFF_FFF8 };
    fat[1] = eoc;

    // Allocate: directories (breadth-first from the root), then files in path order.
    let mut next = 2u32;
    let mut chain = |fat: &mut Vec<u32>, n: usize| -> u32 {
        let first = next;
        for i in 0..n {
            let c = next as usize + i;
            fat[c] = if i + 1 == n { eoc } else { (c + 1) as u32 };
        }
        next += n as u32;
        first
    };
    if kind == Kind::Fat32 {
        root.clusters = root.clusters.max(1);
        root.first_cluster = chain(&mut fat, root.clusters);
    }
    alloc_dirs(&mut root, &mut |n| chain(&mut fat, n));
    let mut file_first = vec![0u32; files.len()];
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by(|a, b| files[*a].0.cmp(files[*b].0));
    for i in order {
        file_first[i] = if files[i].1.is_empty() { 0 } else { chain(&mut fat, files[i].1.len().div_ceil(CLUSTER)) };
    }
    let cluster_offset = |c: u32| (data_start + (c as usize - 2) * SECTORS_PER_CLUSTER) * SECTOR;

    // File contents.
    let mut extents = BTreeMap::new();
    for (i, (path, data)) in files.iter().enumerate() {
        if file_first[i] != 0 {
            let at = cluster_offset(file_first[i]);
            img[at..at + data.len()].copy_from_slice(data);
            extents.insert(path.trim_matches('/').to_string(), (at as u64, data.len() as u64));
        } else {
            extents.insert(path.trim_matches('/').to_string(), (0, 0));
        }
    }

    // Directories.
    let (date, time) = fat_datetime(o.epoch);
    let label = label_bytes(&o.label);
    let ctx = Ctx { files, file_first: &file_first, date, time };
    let root_first = if kind == Kind::Fat32 { root.first_cluster } else { 0 };
    let mut root_bytes = vec![short_entry(&label, 0x08, 0, 0, 0, date, time)];
    root_bytes.extend(dir_entries(&root, &ctx));
    let root_bytes: Vec<u8> = root_bytes.concat();
    if kind == Kind::Fat16 {
        if root_bytes.len() > FAT16_ROOT_ENTRIES * 32 {
            return Err(Error::msg(format!("FAT: more than {FAT16_ROOT_ENTRIES} entries in the root directory")));
        }
        let at = (reserved + 2 * fat_sectors) * SECTOR;
        img[at..at + root_bytes.len()].copy_from_slice(&root_bytes);
    } else {
        let at = cluster_offset(root_first);
        img[at..at + root_bytes.len()].copy_from_slice(&root_bytes);
    }
    // ".." of the root's children is cluster 0, whatever the root's own cluster is (FAT32).
    write_subdirs(&root, 0, &ctx, &mut img, &cluster_offset);

    // FATs (two identical copies).
    let mut fat_bytes = vec![0u8; fat_sectors * SECTOR];
    for (i, v) in fat.iter().enumerate() {
        if kind == Kind::Fat16 {
            fat_bytes[2 * i..2 * i + 2].copy_from_slice(&(*v as u16).to_le_bytes());
        } else {
            fat_bytes[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    for copy in 0..2 {
        let at = (reserved + copy * fat_sectors) * SECTOR;
        img[at..at + fat_bytes.len()].copy_from_slice(&fat_bytes);
    }

    // Boot sector (and for FAT32 the FSInfo sector and their backups at 6 and 7).
    let bs = boot_sector(kind, o, &label, reserved, fat_sectors, total_sectors);
    img[..SECTOR].copy_from_slice(&bs);
    if kind == Kind::Fat32 {
        let free = (clusters + 2 - next as usize) as u32;
        let info = fsinfo(free, next);
        img[SECTOR..2 * SECTOR].copy_from_slice(&info);
        img[6 * SECTOR..7 * SECTOR].copy_from_slice(&bs);
        img[7 * SECTOR..8 * SECTOR].copy_from_slice(&info);
    }
    Ok(Image { bytes: img, extents, fat32: kind == Kind::Fat32 })
}

/// Record where the filesystem starts on its disk, in the boot sector and (FAT32) its backup.
pub fn set_hidden_sectors(img: &mut [u8], sectors: u32) {
    if img.len() < 7 * SECTOR {
        return;
    }
    img[28..32].copy_from_slice(&sectors.to_le_bytes());
    let fat32 = img[22..24] == [0, 0];
    if fat32 {
        img[6 * SECTOR + 28..6 * SECTOR + 32].copy_from_slice(&sectors.to_le_bytes());
    }
}

fn insert(root: &mut Dir, path: &str, index: usize) -> Result<()> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let Some((name, dirs)) = parts.split_last() else {
        return Err(Error::msg(format!("FAT: empty file name {path:?}")));
    };
    let mut d = root;
    for p in dirs {
        check_name(p, path)?;
        if d.files.contains_key(*p) {
            return Err(Error::msg(format!("FAT: {path:?}: {p:?} is both a file and a directory")));
        }
        d = d.dirs.entry(p.to_string()).or_default();
    }
    check_name(name, path)?;
    if d.files.insert(name.to_string(), index).is_some() || d.dirs.contains_key(*name) {
        return Err(Error::msg(format!("FAT: {path:?} given twice")));
    }
    Ok(())
}

fn check_name(name: &str, path: &str) -> Result<()> {
    let bad =
        name.chars().any(|c| c < ' ' || "\"*/:<>?\\|".contains(c)) || name == "." || name == ".." || name.encode_utf16().count() > 255;
    if bad {
        return Err(Error::msg(format!("FAT: {path:?}: {name:?} is not a valid FAT long name")));
    }
    Ok(())
}

/// How many 32-byte entries a name takes (long-name entries + the short one).
fn entries_for(name: &str) -> usize {
    if short_only(name).is_some() {
        1
    } else {
        1 + name.encode_utf16().count().div_ceil(13)
    }
}

fn size_dirs(d: &mut Dir, is_root: bool) -> Result<()> {
    let mut n = if is_root { 1 } else { 2 }; // the label, or "." and ".."
    for name in d.dirs.keys().chain(d.files.keys()) {
        n += entries_for(name);
    }
    d.clusters = (n * 32).div_ceil(CLUSTER);
    for sub in d.dirs.values_mut() {
        size_dirs(sub, false)?;
    }
    Ok(())
}

fn count_dir_clusters(d: &Dir, is_root: bool) -> usize {
    let own = if is_root { 0 } else { d.clusters };
    own + d.dirs.values().map(|s| count_dir_clusters(s, false)).sum::<usize>()
}

fn alloc_dirs(d: &mut Dir, chain: &mut dyn FnMut(usize) -> u32) {
    for sub in d.dirs.values_mut() {
        sub.first_cluster = chain(sub.clusters);
    }
    for sub in d.dirs.values_mut() {
        alloc_dirs(sub, chain);
    }
}

struct Ctx<'a> {
    files: &'a [(&'a str, &'a [u8])],
    file_first: &'a [u32],
    date: u16,
    time: u16,
}

/// Entries for a directory's children (without "."/".." or the label), short names unique in the directory.
fn dir_entries(d: &Dir, c: &Ctx) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut taken = std::collections::HashSet::new();
    let children = d.dirs.iter().map(|(n, s)| (n, Some(s), None)).chain(d.files.iter().map(|(n, i)| (n, None, Some(*i))));
    for (name, sub, file) in children {
        let (cluster, size, attr) = match (sub, file) {
            (Some(s), _) => (s.first_cluster, 0u32, 0x10),
            (_, Some(i)) => (c.file_first[i], c.files[i].1.len() as u32, 0x20),
            _ => continue,
        };
        let short = match short_only(name) {
            Some(s) => s,
            None => {
                let s = alias(name, &taken);
                out.push(lfn_entries(name, &s));
                s
            }
        };
        taken.insert(short);
        out.push(short_entry(&short, attr, cluster, size, 0, c.date, c.time));
    }
    out
}

fn write_subdirs(d: &Dir, self_cluster: u32, c: &Ctx, img: &mut [u8], at: &dyn Fn(u32) -> usize) {
    for sub in d.dirs.values() {
        let mut dot = [b' '; 11];
        dot[0] = b'.';
        let mut dotdot = dot;
        dotdot[1] = b'.';
        let mut bytes = vec![
            short_entry(&dot, 0x10, sub.first_cluster, 0, 0, c.date, c.time),
            short_entry(&dotdot, 0x10, self_cluster, 0, 0, c.date, c.time),
        ];
        bytes.extend(dir_entries(sub, c));
        let bytes = bytes.concat();
        let off = at(sub.first_cluster);
        img[off..off + bytes.len()].copy_from_slice(&bytes);
        write_subdirs(sub, sub.first_cluster, c, img, at);
    }
}

/// An upper-case 8.3 name stored as is, if the name is one.
fn short_only(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) => (b, e),
        None => (name, ""),
    };
    let ok = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"!#$%&'()-@^_`{}~".contains(&b))
    };
    if !ok(base, 8) || !(ext.is_empty() || ok(ext, 3)) || (name.contains('.') && ext.is_empty()) {
        return None;
    }
    let mut s = [b' '; 11];
    s[..base.len()].copy_from_slice(base.as_bytes());
    s[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Some(s)
}

/// The short alias of a long name: BASE~N.EXT from its upper-cased legal characters.
fn alias(name: &str, taken: &std::collections::HashSet<[u8; 11]>) -> [u8; 11] {
    let legal = |s: &str| -> Vec<u8> {
        s.bytes().filter(|b| b.is_ascii_alphanumeric() || b"!#$%&'()-@^_`{}~".contains(b)).map(|b| b.to_ascii_uppercase()).collect()
    };
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) if !b.is_empty() => (legal(b), legal(e)),
        _ => (legal(name), Vec::new()),
    };
    for n in 1u32.. {
        let tail = format!("~{n}");
        let keep = (8 - tail.len()).min(base.len());
        let mut s = [b' '; 11];
        s[..keep].copy_from_slice(&base[..keep]);
        s[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
        let e = ext.len().min(3);
        s[8..8 + e].copy_from_slice(&ext[..e]);
        if !taken.contains(&s) {
            return s;
        }
    }
    unreachable!("the alias counter is unbounded")
}

fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, b| ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(*b))
}

/// Long-name entries, last part first as they are stored.
fn lfn_entries(name: &str, short: &[u8; 11]) -> Vec<u8> {
    let mut units: Vec<u16> = name.encode_utf16().collect();
    let parts = units.len().div_ceil(13);
    if !units.len().is_multiple_of(13) {
        units.push(0);
    }
    units.resize(parts * 13, 0xFFFF);
    let sum = lfn_checksum(short);
    let mut out = Vec::new();
    for p in (0..parts).rev() {
        let mut e = [0u8; 32];
        e[0] = (p + 1) as u8 | if p + 1 == parts { 0x40 } else { 0 };
        e[11] = 0x0F;
        e[13] = sum;
        let chunk = &units[p * 13..p * 13 + 13];
        let slots = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
        for (u, at) in chunk.iter().zip(slots) {
            e[at..at + 2].copy_from_slice(&u.to_le_bytes());
        }
        out.extend_from_slice(&e);
    }
    out
}

fn short_entry(name: &[u8; 11], attr: u8, cluster: u32, size: u32, case: u8, date: u16, time: u16) -> Vec<u8> {
    let mut e = vec![0u8; 32];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    e[12] = case;
    e[14..16].copy_from_slice(&time.to_le_bytes());
    e[16..18].copy_from_slice(&date.to_le_bytes());
    e[18..20].copy_from_slice(&date.to_le_bytes());
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&time.to_le_bytes());
    e[24..26].copy_from_slice(&date.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

fn label_bytes(label: &str) -> [u8; 11] {
    let mut l = [b' '; 11];
    for (i, b) in label.bytes().filter(|b| b.is_ascii_graphic() && !b"\"*+,./:;<=>?[\\]|".contains(b)).take(11).enumerate() {
        l[i] = b.to_ascii_uppercase();
    }
    l
}

/// FAT date and time words (FAT counts from 1980; earlier instants are clamped to it).
fn fat_datetime(epoch: i64) -> (u16, u16) {
    let t = time::OffsetDateTime::from_unix_timestamp(epoch.max(315_532_800)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let year = (t.year() - 1980).clamp(0, 127) as u16;
    let date = (year << 9) | ((t.month() as u16) << 5) | t.day() as u16;
    let time = ((t.hour() as u16) << 11) | ((t.minute() as u16) << 5) | (t.second() as u16 / 2);
    (date, time)
}

fn boot_sector(kind: Kind, o: &Options, label: &[u8; 11], reserved: usize, fat_sectors: usize, total: usize) -> Vec<u8> {
    let mut b = vec![0u8; SECTOR];
    let (jump_to, ext) = if kind == Kind::Fat16 { (0x3E, 36) } else { (0x5A, 64) };
    b[0] = 0xEB;
    b[1] = (jump_to - 2) as u8;
    b[2] = 0x90;
    b[3..11].copy_from_slice(b"FERRY   ");
    b[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    b[13] = SECTORS_PER_CLUSTER as u8;
    b[14..16].copy_from_slice(&(reserved as u16).to_le_bytes());
    b[16] = 2;
    if kind == Kind::Fat16 {
        b[17..19].copy_from_slice(&(FAT16_ROOT_ENTRIES as u16).to_le_bytes());
        b[22..24].copy_from_slice(&(fat_sectors as u16).to_le_bytes());
    }
    if total < 0x10000 && kind == Kind::Fat16 {
        b[19..21].copy_from_slice(&(total as u16).to_le_bytes());
    } else {
        b[32..36].copy_from_slice(&(total as u32).to_le_bytes());
    }
    b[21] = 0xF8;
    b[24..26].copy_from_slice(&32u16.to_le_bytes());
    b[26..28].copy_from_slice(&64u16.to_le_bytes());
    b[28..32].copy_from_slice(&o.hidden_sectors.to_le_bytes());
    if kind == Kind::Fat32 {
        b[36..40].copy_from_slice(&(fat_sectors as u32).to_le_bytes());
        b[44..48].copy_from_slice(&2u32.to_le_bytes());
        b[48..50].copy_from_slice(&1u16.to_le_bytes());
        b[50..52].copy_from_slice(&6u16.to_le_bytes());
    }
    b[ext] = 0x80;
    b[ext + 2] = 0x29;
    b[ext + 3..ext + 7].copy_from_slice(&o.serial.to_le_bytes());
    b[ext + 7..ext + 18].copy_from_slice(label);
    b[ext + 18..ext + 26].copy_from_slice(if kind == Kind::Fat16 { b"FAT16   " } else { b"FAT32   " });
    // Not a boot disk for BIOS: "int 18h" asks the firmware for the next boot device, then halt.
    b[jump_to..jump_to + 5].copy_from_slice(&[0xCD, 0x18, 0xF4, 0xEB, 0xFD]);
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

fn fsinfo(free: u32, next: u32) -> Vec<u8> {
    let mut s = vec![0u8; SECTOR];
    s[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    s[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    s[488..492].copy_from_slice(&free.to_le_bytes());
    s[492..496].copy_from_slice(&next.to_le_bytes());
    s[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options { label: "Ferry".into(), serial: 0x1234_5678, hidden_sectors: 0, epoch: 1_700_000_000 }
    }

    #[test]
    fn short_names_and_aliases() {
        assert_eq!(&short_only("BOOTX64.EFI").unwrap(), b"BOOTX64 EFI");
        assert_eq!(&short_only("EFI").unwrap(), b"EFI        ");
        assert!(short_only("loader.conf").is_none());
        assert!(short_only("grubx64.efi").is_none());
        let mut taken = std::collections::HashSet::new();
        let a = alias("loader.conf", &taken);
        assert_eq!(&a, b"LOADER~1CON");
        taken.insert(a);
        assert_eq!(&alias("loader.config", &taken), b"LOADER~2CON");
    }

    #[test]
    fn lfn_checksum_matches_the_spec_example() {
        // The checksum is a rotate-right-and-add over the 11 bytes; check it against a hand computation.
        let s = *b"LOADER~1CON";
        let mut sum: u8 = 0;
        for b in s {
            sum = sum.rotate_right(1).wrapping_add(b);
        }
        assert_eq!(lfn_checksum(&s), sum);
    }

    #[test]
    fn files_are_contiguous_and_aligned() {
        let big = vec![7u8; 3 * CLUSTER + 5];
        let files: Vec<(&str, &[u8])> = vec![("EFI/BOOT/BOOTX64.EFI", b"shim"), ("vmlinuz", &big), ("loader/loader.conf", b"timeout 0\n")];
        let img = build(&files, &opts()).unwrap();
        assert!(!img.fat32);
        for (path, data) in &files {
            let (at, len) = img.extents[*path];
            assert_eq!(at % 2048, 0, "{path} starts on a 2 KiB boundary");
            assert_eq!(&img.bytes[at as usize..(at + len) as usize], *data);
        }
        assert_eq!(&img.bytes[510..512], &[0x55, 0xAA]);
    }

    #[test]
    fn large_payloads_become_fat32() {
        let big = vec![1u8; FAT32_MIN_CLUSTERS * CLUSTER];
        let img = build(&[("initrd.img", &big)], &opts()).unwrap();
        assert!(img.fat32);
        assert_eq!(&img.bytes[82..90], b"FAT32   ");
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(build(&[("a/b?c", b"x")], &opts()).is_err());
        assert!(build(&[("a", b"x"), ("a/b", b"y")], &opts()).is_err());
        assert!(build(&[("a", b"x"), ("a", b"y")], &opts()).is_err());
    }

    /// Read an image back with the reference tools (dosfstools' fsck.fat, mtools); ./ferry installs both.
    fn read_back(img: &Image, name: &str, path: &str) -> String {
        let f = std::env::temp_dir().join(format!("ferry-fat-{}-{name}.img", std::process::id()));
        std::fs::write(&f, &img.bytes).unwrap();
        let fsck = std::process::Command::new("fsck.fat")
            .arg("-n")
            .arg(&f)
            .output()
            .expect("fsck.fat (apt-get install dosfstools; ./ferry installs it)");
        let mtype = std::process::Command::new("mtype")
            .arg("-i")
            .arg(&f)
            .arg(format!("::/{path}"))
            .output()
            .expect("mtype (apt-get install mtools; ./ferry installs it)");
        let _ = std::fs::remove_file(&f);
        assert!(fsck.status.success(), "fsck.fat: {}{}", String::from_utf8_lossy(&fsck.stdout), String::from_utf8_lossy(&fsck.stderr));
        assert!(mtype.status.success(), "mtype {path}: {}", String::from_utf8_lossy(&mtype.stderr));
        String::from_utf8_lossy(&mtype.stdout).to_string()
    }

    #[test]
    fn fsck_fat_and_mtools_read_fat16_back() {
        let many: Vec<String> = (0..40).map(|i| format!("loader/entries/entry-number-{i:02}.conf")).collect();
        let mut files: Vec<(&str, &[u8])> = many.iter().map(|p| (p.as_str(), b"title x\n".as_slice())).collect();
        files.push(("loader/loader.conf", b"default ferry.conf\n"));
        files.push(("EFI/BOOT/BOOTX64.EFI", b"MZ"));
        let img = build(&files, &opts()).unwrap();
        assert_eq!(read_back(&img, "16", "loader/loader.conf"), "default ferry.conf\n");
        assert_eq!(read_back(&img, "16b", "loader/entries/entry-number-39.conf"), "title x\n");
    }

    #[test]
    fn fsck_fat_and_mtools_read_fat32_back() {
        let big = vec![0x5Au8; FAT32_MIN_CLUSTERS * CLUSTER];
        let img = build(&[("initrd.img", &big), ("loader/entries/ferry.conf", b"linux /vmlinuz\n")], &opts()).unwrap();
        assert!(img.fat32);
        assert_eq!(read_back(&img, "32", "loader/entries/ferry.conf"), "linux /vmlinuz\n");
    }

    #[test]
    fn same_input_same_bytes() {
        let files: Vec<(&str, &[u8])> = vec![("b.txt", b"b"), ("a/c.txt", b"c")];
        assert_eq!(build(&files, &opts()).unwrap().bytes, build(&files, &opts()).unwrap().bytes);
    }
}
