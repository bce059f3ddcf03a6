//! An ISO 9660 (ECMA-119) volume: primary volume descriptor, optional El Torito boot record, path tables,
//! directories and file extents. Level 1 names (upper-case 8.3) are all Ferry needs, so there is no Joliet or
//! Rock Ridge. The contents live in "blobs" placed one after another on 2 KiB blocks; a file is a window into
//! a blob, which is how the kernel and initrd are stored once, inside the EFI image, and still appear as
//! /VMLINUZ and /INITRD.IMG for ISOLINUX.
use crate::error::{Error, Result};
use std::collections::BTreeMap;

pub const BLOCK: u64 = 2048;
/// Blocks 0–15 are the system area (the hybrid MBR lives there); descriptors start at 16.
const FIRST_DESCRIPTOR: u32 = 16;

pub struct Tree {
    pub volume_id: String,
    pub epoch: i64,
    pub files: Vec<File>,
    /// Write an El Torito boot record pointing at this blob (the boot catalog).
    pub boot_catalog: Option<usize>,
}

pub struct File {
    /// Upper-case 8.3 path, e.g. "ISOLINUX/ISOLINUX.BIN".
    pub path: String,
    pub blob: usize,
    /// Offset inside the blob (a multiple of BLOCK) and length.
    pub offset: u64,
    pub len: u64,
}

pub struct Plan {
    pub blob_lba: Vec<u32>,
    /// Size of the volume in blocks.
    pub blocks: u32,
    dirs: BTreeMap<String, (u32, u32)>,
    path_table_size: u32,
    l_table: u32,
    m_table: u32,
}

impl File {
    pub fn lba(&self, plan: &Plan) -> u32 {
        plan.blob_lba[self.blob] + (self.offset / BLOCK) as u32
    }
}

/// Directory paths ("" is the root) and their children, from the file list.
fn dirs(tree: &Tree) -> Result<BTreeMap<String, Vec<Child>>> {
    let mut out: BTreeMap<String, Vec<Child>> = BTreeMap::new();
    out.insert(String::new(), Vec::new());
    for (i, f) in tree.files.iter().enumerate() {
        let parts: Vec<&str> = f.path.split('/').collect();
        let mut parent = String::new();
        for (depth, p) in parts.iter().enumerate() {
            let last = depth + 1 == parts.len();
            check_name(p, !last, &f.path)?;
            let here = if parent.is_empty() { p.to_string() } else { format!("{parent}/{p}") };
            let kids = out.entry(parent.clone()).or_default();
            if last {
                if kids.iter().any(|c| c.name == *p) {
                    return Err(Error::msg(format!("ISO 9660: {} given twice", f.path)));
                }
                kids.push(Child { name: p.to_string(), file: Some(i) });
            } else {
                if !kids.iter().any(|c| c.name == *p) {
                    kids.push(Child { name: p.to_string(), file: None });
                }
                out.entry(here.clone()).or_default();
            }
            parent = here;
        }
        if f.offset % BLOCK != 0 {
            return Err(Error::msg(format!("ISO 9660: {} does not start on a 2 KiB block of its blob", f.path)));
        }
    }
    for kids in out.values_mut() {
        kids.sort_by_key(|c| sort_key(&c.name));
    }
    Ok(out)
}

struct Child {
    name: String,
    file: Option<usize>,
}

fn check_name(name: &str, is_dir: bool, path: &str) -> Result<()> {
    let (base, ext) = name.split_once('.').unwrap_or((name, ""));
    let dchars = |s: &str| s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    let ok = !base.is_empty() && base.len() <= 8 && ext.len() <= 3 && dchars(base) && dchars(ext) && !(is_dir && name.contains('.'));
    if !ok {
        return Err(Error::msg(format!("ISO 9660: {path:?}: {name:?} is not an upper-case 8.3 (level 1) name")));
    }
    Ok(())
}

/// ECMA-119 9.3: names compare with the shorter one padded with spaces, the extension after the name.
fn sort_key(name: &str) -> (String, String) {
    let (b, e) = name.split_once('.').unwrap_or((name, ""));
    (format!("{b:<8}"), format!("{e:<3}"))
}

fn identifier(c: &Child) -> Vec<u8> {
    if c.file.is_some() {
        let n = if c.name.contains('.') { c.name.clone() } else { format!("{}.", c.name) };
        format!("{n};1").into_bytes()
    } else {
        c.name.clone().into_bytes()
    }
}

fn record_len(id_len: usize) -> usize {
    33 + id_len + (id_len + 1) % 2
}

/// Bytes a directory's extent takes: records never straddle a block.
fn dir_size(kids: &[Child]) -> u32 {
    let mut lens = vec![record_len(1), record_len(1)];
    lens.extend(kids.iter().map(|c| record_len(identifier(c).len())));
    let mut blocks = 1u32;
    let mut used = 0usize;
    for l in lens {
        if used + l > BLOCK as usize {
            blocks += 1;
            used = 0;
        }
        used += l;
    }
    blocks * BLOCK as u32
}

/// Directory paths in path-table order: by depth, then parent's position, then name.
fn table_order(all: &BTreeMap<String, Vec<Child>>) -> Vec<String> {
    let mut order = vec![String::new()];
    let mut i = 0;
    while i < order.len() {
        let here = order[i].clone();
        for c in &all[&here] {
            if c.file.is_none() {
                order.push(if here.is_empty() { c.name.clone() } else { format!("{here}/{}", c.name) });
            }
        }
        i += 1;
    }
    order
}

fn path_table(order: &[String], dirs: &BTreeMap<String, (u32, u32)>, big_endian: bool) -> Vec<u8> {
    let mut t = Vec::new();
    for d in order {
        let name = d.rsplit('/').next().unwrap_or("");
        let id: &[u8] = if d.is_empty() { &[0] } else { name.as_bytes() };
        let parent = d.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        let parent_no = if d.is_empty() { 1 } else { order.iter().position(|o| o == parent).unwrap_or(0) as u16 + 1 };
        let lba = dirs[d].0;
        t.push(id.len() as u8);
        t.push(0);
        t.extend_from_slice(&if big_endian { lba.to_be_bytes() } else { lba.to_le_bytes() });
        t.extend_from_slice(&if big_endian { parent_no.to_be_bytes() } else { parent_no.to_le_bytes() });
        t.extend_from_slice(id);
        if id.len() % 2 == 1 {
            t.push(0);
        }
    }
    t
}

pub fn plan(tree: &Tree, blob_sizes: &[u64]) -> Result<Plan> {
    let all = dirs(tree)?;
    let order = table_order(&all);
    for f in &tree.files {
        let size = blob_sizes.get(f.blob).copied().ok_or_else(|| Error::msg(format!("ISO 9660: {} names a missing blob", f.path)))?;
        if f.offset + f.len > size {
            return Err(Error::msg(format!("ISO 9660: {} reaches past the end of its blob", f.path)));
        }
        if f.len > u32::MAX as u64 {
            return Err(Error::msg(format!("ISO 9660: {} is larger than 4 GiB", f.path)));
        }
    }
    let mut next = FIRST_DESCRIPTOR + if tree.boot_catalog.is_some() { 3 } else { 2 };
    let mut dirs: BTreeMap<String, (u32, u32)> = order.iter().map(|d| (d.clone(), (0, dir_size(&all[d])))).collect();
    let path_table_size = path_table(&order, &dirs, false).len() as u32;
    let pt_blocks = path_table_size.div_ceil(BLOCK as u32);
    let l_table = next;
    let m_table = next + pt_blocks;
    next += 2 * pt_blocks;
    for d in &order {
        let e = dirs.get_mut(d).ok_or_else(|| Error::msg("ISO 9660: directory table".to_string()))?;
        e.0 = next;
        next += e.1 / BLOCK as u32;
    }
    let mut blob_lba = Vec::new();
    for s in blob_sizes {
        blob_lba.push(next);
        let blocks = s.div_ceil(BLOCK);
        if next as u64 + blocks > u32::MAX as u64 {
            return Err(Error::msg("ISO 9660: the volume is larger than 8 TiB".to_string()));
        }
        next += blocks as u32;
    }
    Ok(Plan { blob_lba, blocks: next, dirs, path_table_size, l_table, m_table })
}

fn both32(v: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&v.to_le_bytes());
    b[4..].copy_from_slice(&v.to_be_bytes());
    b
}

fn both16(v: u16) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&v.to_le_bytes());
    b[2..].copy_from_slice(&v.to_be_bytes());
    b
}

fn record(id: &[u8], lba: u32, size: u32, is_dir: bool, date: &[u8; 7]) -> Vec<u8> {
    let mut r = vec![0u8; record_len(id.len())];
    r[0] = r.len() as u8;
    r[2..10].copy_from_slice(&both32(lba));
    r[10..18].copy_from_slice(&both32(size));
    r[18..25].copy_from_slice(date);
    r[25] = if is_dir { 0x02 } else { 0 };
    r[28..32].copy_from_slice(&both16(1));
    r[32] = id.len() as u8;
    r[33..33 + id.len()].copy_from_slice(id);
    r
}

fn fill(dst: &mut [u8], s: &str) {
    for (i, d) in dst.iter_mut().enumerate() {
        *d = s.as_bytes().get(i).copied().unwrap_or(b' ');
    }
}

/// Write the volume. `blobs` are placed at `plan.blob_lba`; the system area (blocks 0–15) is left zero.
pub fn write(tree: &Tree, plan: &Plan, blobs: &[&[u8]]) -> Result<Vec<u8>> {
    let all = dirs(tree)?;
    let order = table_order(&all);
    let t = time::OffsetDateTime::from_unix_timestamp(tree.epoch)
        .map_err(|e| Error::msg(format!("ISO 9660: SOURCE_DATE_EPOCH {}: {e}", tree.epoch)))?;
    if !(1900..2155).contains(&t.year()) {
        return Err(Error::msg(format!("ISO 9660: SOURCE_DATE_EPOCH {} is outside the years ISO 9660 can record", tree.epoch)));
    }
    let date7 = [(t.year() - 1900) as u8, t.month() as u8, t.day(), t.hour(), t.minute(), t.second(), 0];
    let date17 = format!("{:04}{:02}{:02}{:02}{:02}{:02}00", t.year(), t.month() as u8, t.day(), t.hour(), t.minute(), t.second());
    let mut img = vec![0u8; plan.blocks as usize * BLOCK as usize];
    let at = |lba: u32| lba as usize * BLOCK as usize;

    // Primary volume descriptor.
    let root = plan.dirs[""];
    let p = &mut img[at(FIRST_DESCRIPTOR)..at(FIRST_DESCRIPTOR + 1)];
    p[0] = 1;
    p[1..6].copy_from_slice(b"CD001");
    p[6] = 1;
    fill(&mut p[8..40], "LINUX");
    fill(&mut p[40..72], &tree.volume_id);
    p[80..88].copy_from_slice(&both32(plan.blocks));
    p[120..124].copy_from_slice(&both16(1));
    p[124..128].copy_from_slice(&both16(1));
    p[128..132].copy_from_slice(&both16(BLOCK as u16));
    p[132..140].copy_from_slice(&both32(plan.path_table_size));
    p[140..144].copy_from_slice(&plan.l_table.to_le_bytes());
    p[148..152].copy_from_slice(&plan.m_table.to_be_bytes());
    p[156..190].copy_from_slice(&record(&[0], root.0, root.1, true, &date7));
    fill(&mut p[190..318], "");
    fill(&mut p[318..446], "");
    fill(&mut p[446..574], "");
    fill(&mut p[574..702], "FERRY IMAGE BUILDER");
    fill(&mut p[702..813], "");
    for off in [813, 830, 864] {
        p[off..off + 16].copy_from_slice(date17.as_bytes());
    }
    p[847..863].copy_from_slice(b"0000000000000000");
    p[881] = 1;

    let mut next = FIRST_DESCRIPTOR + 1;
    if let Some(cat) = tree.boot_catalog {
        let b = &mut img[at(next)..at(next + 1)];
        b[1..6].copy_from_slice(b"CD001");
        b[6] = 1;
        b[7..30].copy_from_slice(b"EL TORITO SPECIFICATION");
        b[71..75].copy_from_slice(&plan.blob_lba[cat].to_le_bytes());
        next += 1;
    }
    let term = &mut img[at(next)..at(next + 1)];
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;

    let l = path_table(&order, &plan.dirs, false);
    img[at(plan.l_table)..at(plan.l_table) + l.len()].copy_from_slice(&l);
    let m = path_table(&order, &plan.dirs, true);
    img[at(plan.m_table)..at(plan.m_table) + m.len()].copy_from_slice(&m);

    for d in &order {
        let (lba, size) = plan.dirs[d];
        let parent = d.rsplit_once('/').map(|(p, _)| p.to_string()).unwrap_or_default();
        let (plba, psize) = plan.dirs[&parent];
        let mut recs = vec![record(&[0], lba, size, true, &date7), record(&[1], plba, psize, true, &date7)];
        for c in &all[d] {
            let id = identifier(c);
            recs.push(match c.file {
                Some(i) => {
                    let f = &tree.files[i];
                    record(&id, if f.len == 0 { 0 } else { f.lba(plan) }, f.len as u32, false, &date7)
                }
                None => {
                    let (clba, csize) = plan.dirs[&if d.is_empty() { c.name.clone() } else { format!("{d}/{}", c.name) }];
                    record(&id, clba, csize, true, &date7)
                }
            });
        }
        let mut off = at(lba);
        let end_of = |o: usize| (o / BLOCK as usize + 1) * BLOCK as usize;
        for r in recs {
            if off + r.len() > end_of(off) {
                off = end_of(off);
            }
            img[off..off + r.len()].copy_from_slice(&r);
            off += r.len();
        }
    }

    if blobs.len() != plan.blob_lba.len() {
        return Err(Error::msg("ISO 9660: blob count differs from the plan".to_string()));
    }
    for (b, lba) in blobs.iter().zip(&plan.blob_lba) {
        img[at(*lba)..at(*lba) + b.len()].copy_from_slice(b);
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: Vec<File>) -> Tree {
        Tree { volume_id: "ferry-v0.1.0".into(), epoch: 1_700_000_000, files, boot_catalog: None }
    }

    #[test]
    fn names_must_be_level_1() {
        for bad in ["vmlinuz", "TOOLONGNAME.TXT", "A.LONG", "DIR.X/FILE"] {
            let t = tree(vec![File { path: bad.into(), blob: 0, offset: 0, len: 1 }]);
            assert!(plan(&t, &[1]).is_err(), "{bad}");
        }
    }

    #[test]
    fn files_point_into_blobs() {
        let blob = vec![9u8; 3 * BLOCK as usize];
        let t = tree(vec![
            File { path: "A/B.BIN".into(), blob: 0, offset: BLOCK, len: 100 },
            File { path: "ALL.BIN".into(), blob: 0, offset: 0, len: blob.len() as u64 },
        ]);
        let p = plan(&t, &[blob.len() as u64]).unwrap();
        let img = write(&t, &p, &[&blob]).unwrap();
        assert_eq!(&img[0x8001..0x8006], b"CD001");
        assert_eq!(&img[0x8028..0x8034], b"ferry-v0.1.0");
        assert_eq!(t.files[0].lba(&p), p.blob_lba[0] + 1);
        assert_eq!(img.len() as u32, p.blocks * BLOCK as u32);
    }

    #[test]
    fn sorted_like_the_standard() {
        let mut v = vec!["INITRD.IMG", "ISOLINUX", "EFI.IMG", "VMLINUZ"];
        v.sort_by_key(|n| sort_key(n));
        assert_eq!(v, ["EFI.IMG", "INITRD.IMG", "ISOLINUX", "VMLINUZ"]);
    }
}
