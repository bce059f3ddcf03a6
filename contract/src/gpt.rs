//! GUID partition tables (UEFI spec, chapter 5): protective MBR, primary and backup headers and entry
//! arrays. Used by init (data disk) and by the image builder (raw image), so it works on byte buffers and
//! takes every GUID as input (random for disks, derived from content for reproducible images).
use crate::error::{Error, Result};

pub const SECTOR: u64 = 512;
const ENTRIES: usize = 128;
const ENTRY_SIZE: usize = 128;
/// Sectors the entry array takes (128 × 128 bytes).
pub const ENTRY_SECTORS: u64 = (ENTRIES * ENTRY_SIZE) as u64 / SECTOR;
/// LBA 0 (protective MBR) + LBA 1 (header) + the entry array.
pub const PRIMARY_SECTORS: u64 = 2 + ENTRY_SECTORS;
/// The smallest disk a table fits on: both copies and one usable sector.
const MIN_SECTORS: u64 = 2 * PRIMARY_SECTORS + 1;

/// Partition type GUIDs, in on-disk (mixed-endian) byte order.
pub const LINUX_FS: [u8; 16] = guid(0x0FC63DAF, 0x8483, 0x4772, [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4]);
pub const LINUX_SWAP: [u8; 16] = guid(0x0657FD6D, 0xA4AB, 0x43C4, [0x84, 0xE5, 0x09, 0x33, 0xC8, 0x4B, 0x4F, 0x4F]);
pub const EFI_SYSTEM: [u8; 16] = guid(0xC12A7328, 0xF81F, 0x11D2, [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B]);

/// A GUID from its textual fields: the first three are stored little-endian.
pub const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]
}

/// Turn 16 arbitrary bytes into a valid version-4 (random) GUID.
pub fn v4(mut b: [u8; 16]) -> [u8; 16] {
    b[7] = (b[7] & 0x0F) | 0x40;
    b[8] = (b[8] & 0x3F) | 0x80;
    b
}

#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    pub type_guid: [u8; 16],
    pub unique: [u8; 16],
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub disk_guid: [u8; 16],
    /// Size of the disk the table describes, in sectors (the backup header sits in the last one).
    pub sectors: u64,
    /// Entry slots in order (slot 0 = partition 1).
    pub partitions: Vec<Partition>,
}

pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3], b[o + 4], b[o + 5], b[o + 6], b[o + 7]])
}

impl Table {
    pub fn first_usable(&self) -> u64 {
        PRIMARY_SECTORS
    }
    /// Saturating: a table too small for its own headers has no usable sector, and the writers refuse it.
    pub fn last_usable(&self) -> u64 {
        self.sectors.saturating_sub(ENTRY_SECTORS + 2)
    }

    fn entries(&self) -> Result<Vec<u8>> {
        if self.partitions.len() > ENTRIES {
            return Err(Error::Layout(format!("{} partitions (limit {ENTRIES})", self.partitions.len())));
        }
        let mut out = vec![0u8; ENTRIES * ENTRY_SIZE];
        for (i, p) in self.partitions.iter().enumerate() {
            if p.first_lba < self.first_usable() || p.last_lba > self.last_usable() || p.last_lba < p.first_lba {
                return Err(Error::Layout(format!(
                    "partition {} ({}..{}) outside the usable sectors {}..{}",
                    i + 1,
                    p.first_lba,
                    p.last_lba,
                    self.first_usable(),
                    self.last_usable()
                )));
            }
            let e = &mut out[i * ENTRY_SIZE..(i + 1) * ENTRY_SIZE];
            e[0..16].copy_from_slice(&p.type_guid);
            e[16..32].copy_from_slice(&p.unique);
            e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
            e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
            for (j, u) in p.name.encode_utf16().take(36).enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
            }
        }
        Ok(out)
    }

    fn header(&self, my_lba: u64, alt_lba: u64, entries_lba: u64, entries_crc: u32) -> Vec<u8> {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_usable().to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable().to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// The protective MBR (LBA 0): one 0xEE partition covering the disk. `boot_code` (≤ 440 bytes) lets
    /// hybrid media keep their boot loader.
    pub fn protective_mbr(&self, boot_code: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; SECTOR as usize];
        let n = boot_code.len().min(440);
        m[..n].copy_from_slice(&boot_code[..n]);
        let e = &mut m[446..462];
        e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
        e[4] = 0xEE;
        e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        e[8..12].copy_from_slice(&1u32.to_le_bytes());
        e[12..16].copy_from_slice(&(self.sectors.saturating_sub(1).min(0xFFFF_FFFF) as u32).to_le_bytes());
        m[510] = 0x55;
        m[511] = 0xAA;
        m
    }

    /// LBA 1 onwards: primary header then the entry array (`PRIMARY_SECTORS - 1` sectors).
    pub fn primary_header_and_entries(&self) -> Result<Vec<u8>> {
        self.fits()?;
        let entries = self.entries()?;
        let mut out = self.header(1, self.sectors - 1, 2, crc32(&entries));
        out.extend_from_slice(&entries);
        Ok(out)
    }

    /// The last `ENTRY_SECTORS + 1` sectors: the entry array copy then the backup header.
    pub fn backup(&self) -> Result<Vec<u8>> {
        self.fits()?;
        let entries = self.entries()?;
        let entries_lba = self.sectors - 1 - ENTRY_SECTORS; // fits() holds
        let mut out = entries.clone();
        out.extend_from_slice(&self.header(self.sectors - 1, 1, entries_lba, crc32(&entries)));
        Ok(out)
    }

    fn fits(&self) -> Result<()> {
        if self.sectors < MIN_SECTORS {
            return Err(Error::Layout(format!("a disk of {} sectors is too small for a partition table", self.sectors)));
        }
        Ok(())
    }

    /// Byte offset where `backup()` goes (saturating: `backup()` refuses a table too small for it).
    pub fn backup_offset(&self) -> u64 {
        self.sectors.saturating_sub(1 + ENTRY_SECTORS).saturating_mul(SECTOR)
    }

    /// Parse the primary table from a disk's first `PRIMARY_SECTORS` sectors. Returns the table (with
    /// `sectors` taken from the header's backup location) or an error saying what is wrong.
    pub fn parse_primary(head: &[u8]) -> Result<Table> {
        if head.len() < (PRIMARY_SECTORS * SECTOR) as usize {
            return Err(Error::NoGpt("short read".into()));
        }
        let h = &head[SECTOR as usize..2 * SECTOR as usize];
        if &h[0..8] != b"EFI PART" {
            return Err(Error::NoGpt("no EFI PART signature at LBA 1".into()));
        }
        let hsize = u32_at(h, 12) as usize;
        if !(92..=SECTOR as usize).contains(&hsize) {
            return Err(Error::DamagedGpt(format!("header size {hsize}")));
        }
        let mut hc = h[..hsize].to_vec();
        hc[16..20].fill(0);
        if crc32(&hc) != u32_at(h, 16) {
            return Err(Error::DamagedGpt("header checksum mismatch".into()));
        }
        let (count, esize) = (u32_at(h, 80) as usize, u32_at(h, 84) as usize);
        if u64_at(h, 72) != 2 || count != ENTRIES || esize != ENTRY_SIZE {
            return Err(Error::DamagedGpt(format!("unsupported entry array ({count} × {esize} at LBA {})", u64_at(h, 72))));
        }
        let entries = &head[2 * SECTOR as usize..(2 * SECTOR as usize + ENTRIES * ENTRY_SIZE)];
        if crc32(entries) != u32_at(h, 88) {
            return Err(Error::DamagedGpt("entry array checksum mismatch".into()));
        }
        let mut disk_guid = [0u8; 16];
        disk_guid.copy_from_slice(&h[56..72]);
        let mut partitions = Vec::new();
        for e in entries.chunks(ENTRY_SIZE) {
            if e[0..16].iter().all(|&b| b == 0) {
                break;
            }
            let mut type_guid = [0u8; 16];
            type_guid.copy_from_slice(&e[0..16]);
            let mut unique = [0u8; 16];
            unique.copy_from_slice(&e[16..32]);
            let units: Vec<u16> = e[56..128].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
            partitions.push(Partition {
                type_guid,
                unique,
                first_lba: u64_at(e, 32),
                last_lba: u64_at(e, 40),
                name: String::from_utf16_lossy(&units),
            });
        }
        // The backup header's LBA gives the disk size the table was made for; it comes from the disk, so
        // it is checked before any arithmetic is done with it.
        let sectors = u64_at(h, 32)
            .checked_add(1)
            .filter(|s| *s >= MIN_SECTORS && s.checked_mul(SECTOR).is_some())
            .ok_or_else(|| Error::DamagedGpt(format!("backup header at LBA {}: not the end of a disk", u64_at(h, 32))))?;
        Ok(Table { disk_guid, sectors, partitions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sectors: u64) -> Table {
        Table {
            disk_guid: v4([7; 16]),
            sectors,
            partitions: vec![
                Partition { type_guid: LINUX_FS, unique: v4([1; 16]), first_lba: 4096, last_lba: sectors - 34, name: "data".into() },
                Partition { type_guid: LINUX_SWAP, unique: v4([2; 16]), first_lba: 2048, last_lba: 4095, name: "swap".into() },
            ],
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip_and_layout() {
        let t = sample(1 << 16);
        let mut head = t.protective_mbr(&[]);
        head.extend(t.primary_header_and_entries().unwrap());
        assert_eq!(head.len() as u64, PRIMARY_SECTORS * SECTOR);
        assert_eq!(&head[510..512], &[0x55, 0xAA]);
        assert_eq!(head[450], 0xEE);
        assert_eq!(Table::parse_primary(&head).unwrap(), t);
        assert_eq!(t.backup().unwrap().len() as u64, (ENTRY_SECTORS + 1) * SECTOR);
        assert_eq!(t.backup_offset() + (ENTRY_SECTORS + 1) * SECTOR, t.sectors * SECTOR);
        // The well-known text form of the Linux filesystem type.
        assert_eq!(&LINUX_FS[..4], &[0xAF, 0x3D, 0xC6, 0x0F]);
    }

    #[test]
    fn corruption_and_bad_layouts_are_reported() {
        let t = sample(1 << 16);
        let mut head = t.protective_mbr(&[]);
        head.extend(t.primary_header_and_entries().unwrap());
        let mut bad = head.clone();
        bad[2 * 512 + 60] ^= 1;
        assert!(Table::parse_primary(&bad).unwrap_err().to_string().contains("entry array checksum"));
        bad = head.clone();
        bad[512 + 40] ^= 1;
        assert!(Table::parse_primary(&bad).unwrap_err().to_string().contains("header checksum"));
        let mut over = sample(1 << 16);
        over.partitions[0].last_lba = over.sectors;
        assert!(over.backup().is_err());
        assert!(sample(40).primary_header_and_entries().is_err());
    }

    #[test]
    fn kinds_say_what_to_do_and_sizes_from_the_disk_are_checked() {
        let t = sample(1 << 16);
        let mut head = t.protective_mbr(&[]);
        head.extend(t.primary_header_and_entries().unwrap());
        assert!(matches!(Table::parse_primary(&head[..1024]), Err(Error::NoGpt(_))));
        assert!(matches!(Table::parse_primary(&vec![0u8; head.len()]), Err(Error::NoGpt(_))));
        let mut bad = head.clone();
        bad[512 + 40] ^= 1;
        assert!(matches!(Table::parse_primary(&bad), Err(Error::DamagedGpt(_))));
        // A backup LBA of u64::MAX or 0, with valid checksums: refused, no overflow.
        for alt in [u64::MAX, 0, 10] {
            let mut h = head.clone();
            h[512 + 32..512 + 40].copy_from_slice(&alt.to_le_bytes());
            h[512 + 16..512 + 20].fill(0);
            let crc = crc32(&h[512..512 + 92]);
            h[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
            let e = Table::parse_primary(&h).unwrap_err();
            assert!(matches!(e, Error::DamagedGpt(_)), "{alt}: {e}");
        }
        let tiny = Table { disk_guid: [0; 16], sectors: 1, partitions: vec![] };
        assert_eq!(tiny.last_usable(), 0);
        assert_eq!(tiny.backup_offset(), 0);
        assert!(matches!(tiny.backup(), Err(Error::Layout(_))));
        assert_eq!(tiny.protective_mbr(&[]).len(), 512);
    }
}
