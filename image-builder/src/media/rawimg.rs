//! `ferry.img`: a GPT disk (protective MBR, primary and backup tables) with one partition, the EFI system
//! partition, at 1 MiB. Sized to its content; `dd` it to a USB stick or disk and UEFI firmware boots it.
use super::fat;
use crate::error::{Context, Result};
use ferry_contract::gpt::{self, Partition, Table, SECTOR};

/// Partitions start on 1 MiB boundaries (2048 sectors), like every partitioning tool does today.
const ALIGN: u64 = 2048;

/// The image around `esp` (a FAT image); `seed` gives the GPT GUIDs (derived from content by the caller).
pub fn build(esp: &[u8], seed: &[u8; 32]) -> Result<Vec<u8>> {
    let esp_sectors = (esp.len() as u64).div_ceil(SECTOR);
    let end = (ALIGN + esp_sectors).div_ceil(ALIGN) * ALIGN;
    let sectors = end + gpt::ENTRY_SECTORS + 1;
    let mut disk_guid = [0u8; 16];
    disk_guid.copy_from_slice(&seed[..16]);
    let mut part_guid = [0u8; 16];
    part_guid.copy_from_slice(&seed[16..]);
    let table = Table {
        disk_guid: gpt::v4(disk_guid),
        sectors,
        partitions: vec![Partition {
            type_guid: gpt::EFI_SYSTEM,
            unique: gpt::v4(part_guid),
            first_lba: ALIGN,
            last_lba: ALIGN + esp_sectors - 1,
            name: "EFI system partition".into(),
        }],
    };
    let mut img = vec![0u8; (sectors * SECTOR) as usize];
    img[..SECTOR as usize].copy_from_slice(&table.protective_mbr(&[]));
    let primary = table.primary_header_and_entries().ctx(|| "ferry.img: GPT".into())?;
    img[SECTOR as usize..SECTOR as usize + primary.len()].copy_from_slice(&primary);
    let backup = table.backup().ctx(|| "ferry.img: backup GPT".into())?;
    let at = table.backup_offset() as usize;
    img[at..at + backup.len()].copy_from_slice(&backup);
    let start = (ALIGN * SECTOR) as usize;
    img[start..start + esp.len()].copy_from_slice(esp);
    fat::set_hidden_sectors(&mut img[start..start + esp.len()], ALIGN as u32);
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_round_trips_and_holds_the_esp() {
        let esp = vec![0xAAu8; 3 << 20];
        let img = build(&esp, &[7u8; 32]).unwrap();
        let t = Table::parse_primary(&img[..(gpt::PRIMARY_SECTORS * SECTOR) as usize]).unwrap();
        assert_eq!(t.partitions.len(), 1);
        assert_eq!(t.partitions[0].first_lba, 2048);
        assert_eq!(t.partitions[0].type_guid, gpt::EFI_SYSTEM);
        assert_eq!(t.sectors * SECTOR, img.len() as u64);
        assert_eq!(img[2048 * 512 + 100], 0xAA);
        assert_eq!(&img[510..512], &[0x55, 0xAA]);
        assert_eq!(img[450], 0xEE);
    }
}
