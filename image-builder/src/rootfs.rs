//! Rootfs assembly after mmdebstrap: trim (rootfs/trim.txt), overlay (rootfs/overlay with modes from
//! rootfs/modes.txt), Ferry's binaries and applet links, build facts.
use crate::error::{Context, Error, Result};
use crate::util;
use ferry_contract::glob;
use std::path::Path;

/// Delete every path (relative to root) matching a trim glob. Returns bytes freed.
pub fn trim(root: &Path, globs: &[String]) -> Result<u64> {
    fn walk(root: &Path, dir: &Path, globs: &[String], freed: &mut u64) -> Result<()> {
        let entries = std::fs::read_dir(dir).ctx(|| format!("list {}", dir.display()))?;
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).map(|r| r.to_string_lossy().to_string()).unwrap_or_default();
            let md = std::fs::symlink_metadata(&p).ctx(|| format!("stat {}", p.display()))?;
            if globs.iter().any(|g| glob::matches(g, &rel)) {
                *freed += size_of(&p);
                if md.is_dir() {
                    std::fs::remove_dir_all(&p).ctx(|| format!("remove {}", p.display()))?;
                } else {
                    std::fs::remove_file(&p).ctx(|| format!("remove {}", p.display()))?;
                }
            } else if md.is_dir() {
                walk(root, &p, globs, freed)?;
            }
        }
        Ok(())
    }
    let mut freed = 0;
    walk(root, root, globs, &mut freed)?;
    Ok(freed)
}

fn size_of(p: &Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(p) else { return 0 };
    if md.is_dir() {
        std::fs::read_dir(p).map(|r| r.flatten().map(|e| size_of(&e.path())).sum()).unwrap_or(0)
    } else {
        md.len()
    }
}

/// Install a file, replacing whatever is there (including a symlink, e.g. Debian's /etc/os-release).
pub fn install_file(dest: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).ctx(|| format!("create {}", parent.display()))?;
    }
    if std::fs::symlink_metadata(dest).is_ok() {
        std::fs::remove_file(dest).ctx(|| format!("replace {}", dest.display()))?;
    }
    std::fs::write(dest, data).ctx(|| format!("write {}", dest.display()))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode)).ctx(|| format!("chmod {}", dest.display()))
}

pub fn symlink(target: &str, link: &Path) -> Result<()> {
    if std::fs::symlink_metadata(link).is_ok() {
        std::fs::remove_file(link).ctx(|| format!("replace {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, link).ctx(|| format!("link {} -> {target}", link.display()))
}

/// Copy rootfs/overlay into the tree. Modes: executable bit from git, exceptions from modes.txt.
pub fn apply_overlay(overlay: &Path, modes_file: &Path, root: &Path) -> Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    let mut modes = std::collections::HashMap::new();
    for l in util::read_data_file(modes_file)? {
        let mut w = l.split_whitespace();
        if let (Some(p), Some(m)) = (w.next(), w.next()) {
            let m = u32::from_str_radix(m, 8).map_err(|_| Error::msg(format!("{}: bad mode {m:?} for {p}", modes_file.display())))?;
            modes.insert(p.to_string(), m);
        }
    }
    fn walk(base: &Path, dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
        for e in std::fs::read_dir(dir).ctx(|| format!("list {}", dir.display()))?.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out)?;
            } else {
                out.push(p.strip_prefix(base).unwrap_or(&p).to_path_buf());
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(overlay, overlay, &mut files)?;
    files.sort();
    for rel in &files {
        let src = overlay.join(rel);
        let data = std::fs::read(&src).ctx(|| format!("read {}", src.display()))?;
        let exec = std::fs::metadata(&src).map(|m| m.permissions().mode() & 0o111 != 0).unwrap_or(false);
        let key = rel.to_string_lossy().to_string();
        let mode = modes.get(&key).copied().unwrap_or(if exec { 0o755 } else { 0o644 });
        install_file(&root.join(rel), &data, mode)?;
    }
    Ok(files.len())
}

/// Copy the firmware files in `wanted` that `from` has (as they are, or compressed as .zst/.xz, which
/// the kernel's loader also reads) to `to`. Returns the files copied, relative to `to`; a wanted file
/// Debian does not ship is simply absent (drivers list every revision they know).
pub fn install_firmware(from: &Path, wanted: &std::collections::BTreeSet<String>, to: &Path) -> Result<Vec<String>> {
    let mut copied = Vec::new();
    for w in wanted {
        for name in [w.clone(), format!("{w}.zst"), format!("{w}.xz")] {
            let src = from.join(&name);
            // Debian's firmware trees use symlinks for aliases: read through them, install plain files.
            if let Ok(data) = std::fs::read(&src) {
                install_file(&to.join(&name), &data, 0o644)?;
                copied.push(name);
                break;
            }
        }
    }
    Ok(copied)
}

/// Ferry's own binaries: init (multi-call) with its applet links, and the engine manager.
pub fn install_ferry_binaries(root: &Path, init: &[u8], engine: &[u8]) -> Result<()> {
    install_file(&root.join("usr/sbin/init"), init, 0o755)?;
    for applet in ["poweroff", "reboot", "halt", "modprobe"] {
        symlink("init", &root.join("usr/sbin").join(applet))?;
    }
    symlink("../sbin/init", &root.join("usr/bin/sethostname"))?;
    install_file(&root.join("usr/local/bin/ferry-engine"), engine, 0o755)
}

#[cfg(test)]
mod tests {
    #[test]
    fn firmware_named_by_drivers_is_copied_plain_or_compressed_and_missing_files_are_skipped() {
        let t = std::env::temp_dir().join(format!("ferry-fw-{}", std::process::id()));
        let (from, to) = (t.join("deb/usr/lib/firmware"), t.join("root/usr/lib/firmware"));
        std::fs::create_dir_all(from.join("rtl_nic")).unwrap();
        std::fs::write(from.join("rtl_nic/rtl8168h-2.fw"), b"plain").unwrap();
        std::fs::write(from.join("rtl_nic/rtl8125b-2.fw.zst"), b"zstd").unwrap();
        std::fs::write(from.join("rtl_nic/unwanted.fw"), b"x").unwrap();
        let wanted = ["rtl_nic/rtl8168h-2.fw", "rtl_nic/rtl8125b-2.fw", "tigon/tg3.bin"].iter().map(|s| s.to_string()).collect();
        let got = super::install_firmware(&from, &wanted, &to).unwrap();
        assert_eq!(got, ["rtl_nic/rtl8125b-2.fw.zst", "rtl_nic/rtl8168h-2.fw"]);
        assert_eq!(std::fs::read(to.join("rtl_nic/rtl8125b-2.fw.zst")).unwrap(), b"zstd");
        assert!(!to.join("rtl_nic/unwanted.fw").exists());
        let _ = std::fs::remove_dir_all(&t);
    }
}
