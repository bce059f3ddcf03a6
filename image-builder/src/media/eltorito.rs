//! Boot structures around the ISO 9660 volume: the El Torito boot catalog (BIOS and UEFI entries), ISOLINUX's
//! boot information table, and the isohybrid MBR that lets the same file boot from a USB disk.
//! Facts from the El Torito 1.0 specification and syslinux's documented isohybrid layout.

/// Sector count for the UEFI entry. The field is 16 bits of 512-byte sectors; an EFI image larger than that
/// gets 0, which EDK2-based firmware reads as "from this LBA to the end of the volume" (our EFI image is the
/// last thing in the volume, so that is exactly the image).
pub fn efi_sector_count(bytes: u64) -> u16 {
    let sectors = bytes.div_ceil(512);
    if sectors <= 0xFFFF {
        sectors as u16
    } else {
        0
    }
}

/// A 2 KiB boot catalog: validation entry (x86), the default entry (ISOLINUX, no emulation, 4 sectors), and
/// a final section for platform 0xEF (UEFI) with the EFI image.
pub fn catalog(isolinux_lba: u32, efi_lba: u32, efi_bytes: u64) -> Vec<u8> {
    let mut c = vec![0u8; 2048];
    c[0] = 0x01; // validation entry, platform 0 = x86
    c[4..4 + 5].copy_from_slice(b"FERRY");
    c[30] = 0x55;
    c[31] = 0xAA;
    let sum = (0..16).fold(0u16, |s, i| s.wrapping_add(u16::from_le_bytes([c[2 * i], c[2 * i + 1]])));
    c[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
    boot_entry(&mut c[32..64], 4, isolinux_lba);
    c[64] = 0x91; // final section header
    c[65] = 0xEF;
    c[66..68].copy_from_slice(&1u16.to_le_bytes());
    boot_entry(&mut c[96..128], efi_sector_count(efi_bytes), efi_lba);
    c
}

fn boot_entry(e: &mut [u8], sectors: u16, lba: u32) {
    e[0] = 0x88; // bootable; media 0 = no emulation; load segment 0 = the default 0x7C0
    e[6..8].copy_from_slice(&sectors.to_le_bytes());
    e[8..12].copy_from_slice(&lba.to_le_bytes());
}

/// Fill ISOLINUX's boot information table (bytes 8–63): where the volume descriptor and the file are, its
/// length, and the sum of its 32-bit words from byte 64 on. ISOLINUX finds the rest of itself with it.
pub fn boot_info_table(isolinux: &mut [u8], pvd_lba: u32, file_lba: u32) {
    if isolinux.len() < 64 {
        return;
    }
    let mut sum = 0u32;
    for w in isolinux[64..].chunks(4) {
        let mut b = [0u8; 4];
        b[..w.len()].copy_from_slice(w);
        sum = sum.wrapping_add(u32::from_le_bytes(b));
    }
    let len = isolinux.len() as u32;
    isolinux[8..12].copy_from_slice(&pvd_lba.to_le_bytes());
    isolinux[12..16].copy_from_slice(&file_lba.to_le_bytes());
    isolinux[16..20].copy_from_slice(&len.to_le_bytes());
    isolinux[20..24].copy_from_slice(&sum.to_le_bytes());
    isolinux[24..64].fill(0);
}

/// Does this isolinux.bin support hybrid booting (the signature syslinux puts at byte 0x40)?
pub fn is_hybrid_capable(isolinux: &[u8]) -> bool {
    isolinux.get(0x40..0x44) == Some(&[0xFB, 0xC0, 0x78, 0x70][..])
}

/// Heads and sectors per track of the geometry isohybrid assumes; the image is padded to whole cylinders.
pub const HEADS: u64 = 64;
pub const SECTORS_PER_TRACK: u64 = 32;
pub const CYLINDER: u64 = HEADS * SECTORS_PER_TRACK * 512;

fn chs(lba: u64) -> [u8; 3] {
    let c = lba / (HEADS * SECTORS_PER_TRACK);
    if c > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let h = (lba / SECTORS_PER_TRACK) % HEADS;
    let s = lba % SECTORS_PER_TRACK + 1;
    [h as u8, (s as u8) | (((c >> 8) as u8) << 6), c as u8]
}

fn mbr_entry(e: &mut [u8], active: bool, kind: u8, start: u64, sectors: u64) {
    e[0] = if active { 0x80 } else { 0 };
    e[1..4].copy_from_slice(&chs(start));
    e[4] = kind;
    e[5..8].copy_from_slice(&chs(start + sectors - 1));
    e[8..12].copy_from_slice(&(start as u32).to_le_bytes());
    e[12..16].copy_from_slice(&(sectors.min(u32::MAX as u64) as u32).to_le_bytes());
}

/// The isohybrid MBR: syslinux's 432-byte boot code, isolinux.bin's position in 512-byte sectors at 432,
/// a disk signature at 440, partition 1 (type 0, active) over the whole image for BIOS, and partition 2
/// (type 0xEF) over the EFI image so UEFI firmware finds it on a USB disk.
pub fn hybrid_mbr(code: &[u8], isolinux_lba: u32, signature: u32, image_bytes: u64, efi_offset: u64, efi_bytes: u64) -> Vec<u8> {
    let mut m = vec![0u8; 512];
    let n = code.len().min(432);
    m[..n].copy_from_slice(&code[..n]);
    m[432..436].copy_from_slice(&(isolinux_lba * 4).to_le_bytes());
    m[440..444].copy_from_slice(&signature.to_le_bytes());
    mbr_entry(&mut m[446..462], true, 0x00, 0, image_bytes / 512);
    mbr_entry(&mut m[462..478], false, 0xEF, efi_offset / 512, efi_bytes.div_ceil(512));
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_validation_entry_sums_to_zero() {
        let c = catalog(30, 40, 200 << 20);
        let sum = (0..16).fold(0u16, |s, i| s.wrapping_add(u16::from_le_bytes([c[2 * i], c[2 * i + 1]])));
        assert_eq!(sum, 0);
        assert_eq!(c[32], 0x88);
        assert_eq!(u32::from_le_bytes([c[40], c[41], c[42], c[43]]), 30);
        assert_eq!(c[65], 0xEF);
        assert_eq!(u16::from_le_bytes([c[102], c[103]]), 0, "a large EFI image has count 0");
        assert_eq!(efi_sector_count(4096), 8);
    }

    #[test]
    fn boot_info_table_checksum() {
        let mut f = vec![0u8; 2048];
        f[64] = 1;
        f[68] = 2;
        f[2047] = 1;
        boot_info_table(&mut f, 16, 33);
        assert_eq!(&f[8..12], &16u32.to_le_bytes());
        assert_eq!(&f[12..16], &33u32.to_le_bytes());
        assert_eq!(&f[16..20], &2048u32.to_le_bytes());
        assert_eq!(&f[20..24], &(3u32 + (1 << 24)).to_le_bytes());
    }

    #[test]
    fn mbr_layout() {
        let m = hybrid_mbr(&[0x33; 432], 35, 0xDEADBEEF, 4 * CYLINDER, 1 << 20, 3 << 20);
        assert_eq!(&m[432..436], &140u32.to_le_bytes());
        assert_eq!(&m[440..444], &0xDEADBEEFu32.to_le_bytes());
        assert_eq!(m[446], 0x80);
        assert_eq!(m[450], 0x00);
        assert_eq!(m[466], 0xEF);
        assert_eq!(&m[470..474], &2048u32.to_le_bytes());
        assert_eq!(&m[474..478], &6144u32.to_le_bytes());
        assert_eq!(&m[510..], &[0x55, 0xAA]);
        // Last sector of 4 cylinders: cylinder 3, head 63, sector 32.
        assert_eq!(chs(4 * HEADS * SECTORS_PER_TRACK - 1), [63, 32, 3]);
    }
}
