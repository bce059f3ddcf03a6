//! Read a kernel module's `.modinfo` section (aliases, dependencies, firmware) from a .ko / .ko.xz file.
use crate::error::{Context, Error, Result};
use std::path::Path;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct ModInfo {
    pub aliases: Vec<String>,
    pub depends: Vec<String>,
    /// Firmware files the driver may request, relative to /lib/firmware.
    pub firmware: Vec<String>,
}

pub fn read(path: &Path) -> Result<ModInfo> {
    let raw = std::fs::read(path).ctx(|| format!("read {}", path.display()))?;
    let elf = if path.extension().is_some_and(|e| e == "xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut raw.as_slice(), &mut out).ctx(|| format!("decompress {}", path.display()))?;
        out
    } else {
        raw
    };
    parse_elf(&elf).ok_or_else(|| Error::msg(format!("{}: not an x86_64 ELF module with .modinfo", path.display())))
}

fn u16le(b: &[u8], o: usize) -> Option<usize> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?) as usize)
}
fn u32le(b: &[u8], o: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?) as usize)
}
fn u64le(b: &[u8], o: usize) -> Option<usize> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?) as usize)
}

/// ELF64 little-endian: walk section headers, find `.modinfo`, split its NUL-separated `key=value` strings.
pub fn parse_elf(b: &[u8]) -> Option<ModInfo> {
    if b.get(..4)? != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return None;
    }
    let shoff = u64le(b, 0x28)?;
    let shentsize = u16le(b, 0x3A)?;
    let shnum = u16le(b, 0x3C)?;
    let shstrndx = u16le(b, 0x3E)?;
    let sh = |i: usize| shoff + i * shentsize;
    let strtab_off = u64le(b, sh(shstrndx) + 0x18)?;
    for i in 0..shnum {
        let name_off = u32le(b, sh(i))?;
        let name_start = strtab_off + name_off;
        let name_end = name_start + b.get(name_start..)?.iter().position(|&c| c == 0)?;
        if &b[name_start..name_end] != b".modinfo" {
            continue;
        }
        let off = u64le(b, sh(i) + 0x18)?;
        let size = u64le(b, sh(i) + 0x20)?;
        let data = b.get(off..off + size)?;
        let mut info = ModInfo::default();
        for kv in data.split(|&c| c == 0) {
            let s = String::from_utf8_lossy(kv);
            if let Some(a) = s.strip_prefix("alias=") {
                info.aliases.push(a.to_string());
            } else if let Some(f) = s.strip_prefix("firmware=") {
                info.firmware.push(f.to_string());
            } else if let Some(d) = s.strip_prefix("depends=") {
                info.depends.extend(d.split(',').filter(|x| !x.is_empty()).map(|x| x.replace('-', "_")));
            }
        }
        return Some(info);
    }
    None
}
