//! What the image is made of, carried inside the `ferry` binary (see image-builder/build.rs): the data
//! files of rootfs/, kernel-config/ and image-builder/media/, and the guest binaries init and ferry-engine.
//! A copy of `ferry` anywhere builds the same image as the checkout it was compiled from.
use crate::error::{Context, Result};
use std::path::Path;

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// Write the embedded data files under `dir`, keeping their relative paths and executable bits, so the
/// build reads them as it reads a checkout.
pub fn unpack(dir: &Path) -> Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    for (rel, data, exec) in FILES {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).ctx(|| format!("create {}", parent.display()))?;
        }
        std::fs::write(&p, data).ctx(|| format!("write {}", p.display()))?;
        let mode = if *exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).ctx(|| format!("chmod {}", p.display()))?;
    }
    Ok(FILES.len())
}

/// Everything above as bytes, for the build fingerprint: paths, contents, modes, both guest binaries and
/// the builder's own image-making sources.
pub fn fingerprint_input() -> Vec<u8> {
    let mut all = Vec::new();
    for (rel, data, exec) in FILES {
        all.extend_from_slice(rel.as_bytes());
        all.push(0);
        all.extend_from_slice(&(data.len() as u64).to_le_bytes());
        all.extend_from_slice(data);
        all.push(*exec as u8);
    }
    for bin in [INIT, FERRY_ENGINE] {
        all.extend_from_slice(&(bin.len() as u64).to_le_bytes());
        all.extend_from_slice(bin);
    }
    all.extend_from_slice(&BUILDER_SOURCES.to_le_bytes());
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_the_image_data_and_nothing_else() {
        let names: Vec<&str> = FILES.iter().map(|f| f.0).collect();
        for want in ["rootfs/packages.txt", "rootfs/trim.txt", "kernel-config/modules.txt", "image-builder/media/files.txt"] {
            assert!(names.contains(&want), "{want} is not embedded: {names:?}");
        }
        assert!(names.iter().any(|n| n.starts_with("rootfs/overlay/")), "no overlay file embedded");
        assert!(
            names.iter().all(|n| ["rootfs/", "kernel-config/", "image-builder/media/"].iter().any(|d| n.starts_with(d))),
            "something outside the image's inputs is embedded: {names:?}"
        );
        // Both guest binaries are static x86_64 ELF executables.
        for bin in [INIT, FERRY_ENGINE] {
            assert_eq!(&bin[..4], b"\x7fELF");
            assert_eq!(u16::from_le_bytes([bin[18], bin[19]]), 62, "not x86_64");
        }
    }

    #[test]
    fn unpacks_what_it_carries() {
        let dir = std::env::temp_dir().join(format!("ferry-assets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(unpack(&dir).unwrap(), FILES.len());
        for (rel, data, _) in FILES {
            assert_eq!(&std::fs::read(dir.join(rel)).unwrap(), data, "{rel}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
