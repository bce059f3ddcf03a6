//! Bootable media from the kernel and initrd: one EFI system partition (FAT) holding shim, systemd-boot, its
//! loader entry, the kernel and the initrd; an ISO 9660 hybrid around it (ISOLINUX for BIOS, El Torito UEFI
//! entry, isohybrid MBR); a GPT raw image around it for `dd` to a disk. Which Debian file goes where, the
//! kernel command line and the boot loader configurations are data in image-builder/media/.
pub mod eltorito;
pub mod fat;
pub mod iso9660;
pub mod rawimg;

use crate::error::{Context, Error, Result};
use crate::util;
use std::path::Path;

/// The ISO lists the EFI image, the kernel and the initrd as files, and ISO 9660 sizes are 32 bits.
pub const ESP_MAX: u64 = u32::MAX as u64 - iso9660::BLOCK + 1;

/// Boot loaders and configuration, read from the extracted Debian packages and image-builder/media/.
pub struct BootFiles {
    /// (path in the ESP, contents), without the kernel and initrd.
    pub esp: Vec<(String, Vec<u8>)>,
    /// (path in the ISO 9660 tree, contents).
    pub iso: Vec<(String, Vec<u8>)>,
    /// The isohybrid MBR boot code (432 bytes).
    pub mbr: Vec<u8>,
}

pub struct Media {
    pub iso: Vec<u8>,
    pub img: Vec<u8>,
    pub esp_bytes: u64,
    pub fat32: bool,
}

/// The kernel command line from media/cmdline.txt (comments and blank lines skipped, one line left).
pub fn cmdline(media_dir: &Path) -> Result<String> {
    let lines = util::read_data_file(&media_dir.join("cmdline.txt"))?;
    match lines.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(Error::msg(format!(
            "{}: expected exactly one command line, found {}",
            media_dir.join("cmdline.txt").display(),
            lines.len()
        ))),
    }
}

fn template(path: &Path, cmdline: &str, version: &str) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path).ctx(|| format!("read {}", path.display()))?;
    Ok(text.replace("@CMDLINE@", cmdline).replace("@VERSION@", version).into_bytes())
}

/// Collect the boot files: media/files.txt maps Debian files (under `tree`) to places on the media.
pub fn boot_files(media_dir: &Path, tree: &Path, version: &str) -> Result<BootFiles> {
    let cmd = cmdline(media_dir)?;
    let mut b = BootFiles { esp: Vec::new(), iso: Vec::new(), mbr: Vec::new() };
    let list = media_dir.join("files.txt");
    for line in util::read_data_file(&list)? {
        let mut w = line.split_whitespace();
        let (Some(place), Some(src), None) = (w.next(), w.next(), w.next()) else {
            return Err(Error::msg(format!("{}: {line:?} is not '<place> <path>'", list.display())));
        };
        let from = tree.join(src);
        let data = std::fs::read(&from).map_err(|e| {
            Error::msg(format!(
                "boot file {src} (for {place}) is missing from the extracted boot packages in {}: {e}; check {}",
                tree.display(),
                media_dir.join("packages.txt").display()
            ))
        })?;
        if data.is_empty() {
            return Err(Error::msg(format!("boot file {} (for {place}) is empty", from.display())));
        }
        match place.split_once(':') {
            Some(("esp", p)) => b.esp.push((p.to_string(), data)),
            Some(("iso", p)) => b.iso.push((p.to_string(), data)),
            None if place == "mbr" => b.mbr = data,
            _ => return Err(Error::msg(format!("{}: unknown place {place:?} (esp:PATH, iso:PATH or mbr)", list.display()))),
        }
    }
    if b.mbr.len() < 432 {
        return Err(Error::msg(format!("{}: the isohybrid MBR code must be 432 bytes (got {})", list.display(), b.mbr.len())));
    }
    b.esp.push(("loader/loader.conf".into(), template(&media_dir.join("loader/loader.conf"), &cmd, version)?));
    b.esp.push(("loader/entries/ferry.conf".into(), template(&media_dir.join("loader/entries/ferry.conf"), &cmd, version)?));
    b.iso.push(("ISOLINUX/ISOLINUX.CFG".into(), template(&media_dir.join("isolinux.cfg"), &cmd, version)?));
    Ok(b)
}

/// Refuse a payload the media cannot carry, naming the parts.
pub fn check_esp_size(parts: &[(&str, u64)], max: u64) -> Result<()> {
    let total: u64 = parts.iter().map(|(_, n)| n).sum();
    if total > max {
        let list: Vec<String> = parts.iter().map(|(p, n)| format!("{p} {} MiB", n >> 20)).collect();
        return Err(Error::msg(format!(
            "the EFI system partition would hold {} MiB ({}), more than the {} MiB the ISO can list; trim the rootfs (rootfs/trim.txt) or drop packages",
            total >> 20,
            list.join(", "),
            max >> 20
        )));
    }
    Ok(())
}

fn u32_of(seed: &str, data: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(seed.as_bytes());
    for d in data {
        h.update(Sha256::digest(d));
    }
    h.finalize().into()
}

/// Build both media. Identifiers (FAT serial, MBR signature, GPT GUIDs) derive from the content.
pub fn assemble(b: &BootFiles, vmlinuz: &[u8], initrd: &[u8], version: &str, epoch: i64) -> Result<Media> {
    if vmlinuz.is_empty() || initrd.is_empty() {
        return Err(Error::msg("media: the kernel or the initrd is empty".to_string()));
    }
    let mut parts: Vec<(&str, u64)> = vec![("vmlinuz", vmlinuz.len() as u64), ("initrd.img", initrd.len() as u64)];
    parts.extend(b.esp.iter().map(|(p, d)| (p.as_str(), d.len() as u64)));
    check_esp_size(&parts, ESP_MAX)?;
    let isolinux = b
        .iso
        .iter()
        .find(|(p, _)| p == "ISOLINUX/ISOLINUX.BIN")
        .map(|(_, d)| d.clone())
        .ok_or_else(|| Error::msg("media: no ISOLINUX/ISOLINUX.BIN in image-builder/media/files.txt".to_string()))?;
    if !eltorito::is_hybrid_capable(&isolinux) {
        return Err(Error::msg("media: isolinux.bin lacks the isohybrid signature at byte 0x40 (not syslinux ≥ 3.72?)".to_string()));
    }

    let mut files: Vec<(&str, &[u8])> = vec![("vmlinuz", vmlinuz), ("initrd.img", initrd)];
    files.extend(b.esp.iter().map(|(p, d)| (p.as_str(), d.as_slice())));
    let all: Vec<&[u8]> = files.iter().map(|(_, d)| *d).collect();
    let digest = u32_of("ferry media", &all);
    let serial = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let esp = fat::build(&files, &fat::Options { label: "FERRY".into(), serial, hidden_sectors: 0, epoch })?;

    // The ISO: boot catalog, ISOLINUX files, then the EFI image last (see eltorito::efi_sector_count).
    let mut blobs: Vec<Vec<u8>> = vec![vec![0u8; iso9660::BLOCK as usize]];
    let mut tree = iso9660::Tree { volume_id: format!("ferry-v{version}"), epoch, files: Vec::new(), boot_catalog: Some(0) };
    tree.files.push(iso9660::File { path: "ISOLINUX/BOOT.CAT".into(), blob: 0, offset: 0, len: iso9660::BLOCK });
    let mut isolinux_blob = 0;
    for (p, d) in &b.iso {
        if p == "ISOLINUX/ISOLINUX.BIN" {
            isolinux_blob = blobs.len();
        }
        tree.files.push(iso9660::File { path: p.clone(), blob: blobs.len(), offset: 0, len: d.len() as u64 });
        blobs.push(d.clone());
    }
    let esp_blob = blobs.len();
    tree.files.push(iso9660::File { path: "EFIBOOT.IMG".into(), blob: esp_blob, offset: 0, len: esp.bytes.len() as u64 });
    for (name, iso_name) in [("vmlinuz", "VMLINUZ"), ("initrd.img", "INITRD.IMG")] {
        let (off, len) = esp.extents[name];
        tree.files.push(iso9660::File { path: iso_name.into(), blob: esp_blob, offset: off, len });
    }
    let mut sizes: Vec<u64> = blobs.iter().map(|d| d.len() as u64).collect();
    sizes.push(esp.bytes.len() as u64);
    let plan = iso9660::plan(&tree, &sizes)?;
    let isolinux_lba = plan.blob_lba[isolinux_blob];
    let efi_lba = plan.blob_lba[esp_blob];
    blobs[0] = eltorito::catalog(isolinux_lba, efi_lba, esp.bytes.len() as u64);
    eltorito::boot_info_table(&mut blobs[isolinux_blob], 16, isolinux_lba);
    let mut iso_esp = esp.bytes.clone();
    fat::set_hidden_sectors(&mut iso_esp, efi_lba * 4);
    let mut refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
    refs.push(&iso_esp);
    let mut iso = iso9660::write(&tree, &plan, &refs)?;
    drop(iso_esp);
    // isohybrid: whole cylinders, so BIOSes that use CHS see the entire image.
    let padded = (iso.len() as u64).div_ceil(eltorito::CYLINDER) * eltorito::CYLINDER;
    iso.resize(padded as usize, 0);
    let sig = u32::from_le_bytes([digest[4], digest[5], digest[6], digest[7]]);
    let mbr = eltorito::hybrid_mbr(&b.mbr, isolinux_lba, sig, padded, efi_lba as u64 * iso9660::BLOCK, esp.bytes.len() as u64);
    iso[..512].copy_from_slice(&mbr);

    let img = rawimg::build(&esp.bytes, &digest)?;
    Ok(Media { iso, img, esp_bytes: esp.bytes.len() as u64, fat32: esp.fat32 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_large_payload_names_the_parts() {
        let e = check_esp_size(&[("vmlinuz", 10 << 20), ("initrd.img", 30 << 20)], 32 << 20).unwrap_err().to_string();
        assert!(e.contains("initrd.img 30 MiB") && e.contains("40 MiB") && e.contains("32 MiB"), "{e}");
        assert!(check_esp_size(&[("vmlinuz", 10 << 20)], 32 << 20).is_ok());
    }

    #[test]
    fn missing_boot_file_is_named() {
        let media = Path::new(env!("CARGO_MANIFEST_DIR")).join("media");
        let empty = std::env::temp_dir().join(format!("ferry-empty-tree-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let e = boot_files(&media, &empty, "0.0.0").err().unwrap().to_string();
        let _ = std::fs::remove_dir_all(&empty);
        assert!(e.contains("shimx64.efi.signed") && e.contains("packages.txt"), "{e}");
    }

    #[test]
    fn empty_kernel_or_initrd_is_refused() {
        let b = BootFiles { esp: vec![], iso: vec![], mbr: vec![0; 432] };
        for (k, i) in [(&b""[..], &b"initrd"[..]), (&b"kernel"[..], &b""[..])] {
            let e = assemble(&b, k, i, "0.0.0", 1_700_000_000).err().unwrap().to_string();
            assert!(e.contains("kernel or the initrd is empty"), "{e}");
        }
    }

    #[test]
    fn the_command_line_is_one_line() {
        let media = Path::new(env!("CARGO_MANIFEST_DIR")).join("media");
        let c = cmdline(&media).unwrap();
        assert!(c.contains("console=ttyS0") && !c.contains('\n'));
    }
}
