//! userdata.tar: the provisioning bundle (docker-machine's format-me disk payload, or QEMU fw_cfg).
//! A strict USTAR reader (to the end-of-archive, capped, legacy 4096-byte truncation accepted) and writer.
//! Only regular files and directories under relative, clean paths are accepted.
use crate::error::{Error, Result};

pub const MAGIC: &str = "boot2docker, please format-me";
pub const MAX_SIZE: usize = 1 << 20;
/// boot2docker only ever copied this much of the disk's first bytes.
pub const LEGACY_TRUNCATED: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    File(Vec<u8>),
    Dir,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub kind: Kind,
}

fn octal(field: &[u8], what: &str, path: &str) -> Result<u64> {
    let s: String = field.iter().take_while(|&&b| b != 0).map(|&b| b as char).collect();
    let s = s.trim();
    if s.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(s, 8).map_err(|_| Error::MalformedUserdata(format!("bad {what} field {s:?} for {path:?}")))
}

fn cstr_field(f: &[u8]) -> String {
    String::from_utf8_lossy(&f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())]).to_string()
}

/// Reject anything that could escape the destination.
pub fn clean_path(raw: &str) -> Result<String> {
    let p = raw.trim_start_matches("./").trim_end_matches('/');
    if raw.starts_with('/') || p.split('/').any(|c| c == ".." || c.is_empty() && !p.is_empty()) {
        return Err(Error::RefusedUserdata(format!("refusing unsafe path {raw:?}")));
    }
    Ok(p.to_string())
}

/// Keys and certificates are text. One holding NUL bytes is damaged, and the usual cause is an archive cut
/// short: the head read from the disk pads it with what was there before, zeros on a fresh disk (a NUL
/// tail) or an older archive (NUL, then stale bytes), so it parses as whole files. Installing such a key
/// would leave a broken one that fails later with a vaguer message.
fn text_checked<'a>(path: &str, body: &'a [u8]) -> Result<&'a [u8]> {
    let is_text = path.starts_with(".ssh/") || path.ends_with(".pem");
    let Some(first) = body.iter().position(|&b| b == 0).filter(|_| is_text) else {
        return Ok(body);
    };
    if body[first..].iter().all(|&b| b == 0) {
        return Err(Error::MalformedUserdata(format!(
            "{path:?} is truncated (its last {} of {} bytes are NUL: the archive was cut short; write it again)",
            body.len() - first,
            body.len()
        )));
    }
    Err(Error::MalformedUserdata(format!(
        "{path:?} is truncated or damaged: NUL bytes from byte {first} of {} (a key or certificate is text; write the archive again)",
        body.len()
    )))
}

/// Parse a tar stream. `data` may be the whole disk head (zeros after the archive) or the legacy
/// truncated 4096 bytes, in which case a file cut by the truncation is dropped with the rest kept.
pub fn parse(data: &[u8]) -> Result<Vec<Entry>> {
    let data = &data[..data.len().min(MAX_SIZE)];
    let mut out = Vec::new();
    let mut off = 0;
    while off + 512 <= data.len() {
        let h = &data[off..off + 512];
        if h.iter().all(|&b| b == 0) {
            return Ok(out);
        }
        let name = cstr_field(&h[0..100]);
        let prefix = if &h[257..262] == b"ustar" { cstr_field(&h[345..500]) } else { String::new() };
        let full = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        // An unreadable checksum field is the same finding as a wrong one: this is not a tar header.
        let sum = octal(&h[148..156], "checksum", &full).ok();
        let calc: u64 = h.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { b as u64 }).sum();
        if sum != Some(calc) {
            return Err(Error::MalformedUserdata(format!("header checksum mismatch at byte {off} (not a tar archive?)")));
        }
        let mode = octal(&h[100..108], "mode", &full)? as u32 & 0o7777;
        let size = octal(&h[124..136], "size", &full)? as usize;
        // Checked before any sum: offsets stay within MAX_SIZE + 1 KiB, far from overflowing.
        if size > MAX_SIZE {
            return Err(Error::RefusedUserdata(format!("{full:?} claims {size} bytes (limit {MAX_SIZE})")));
        }
        let typ = h[156];
        let body = off + 512;
        let end = body + size;
        let next = body + size.div_ceil(512) * 512;
        match typ {
            b'0' | 0 | b'5' => {}
            b'1' | b'2' => return Err(Error::RefusedUserdata(format!("refusing link {full:?}"))),
            b'3' | b'4' | b'6' => return Err(Error::RefusedUserdata(format!("refusing device or fifo {full:?}"))),
            b'x' | b'g' | b'L' | b'K' => {
                off = next;
                continue;
            }
            t => return Err(Error::RefusedUserdata(format!("unsupported entry type {:?} for {full:?}", t as char))),
        }
        let path = clean_path(&full)?;
        if end > data.len() {
            if data.len() == LEGACY_TRUNCATED {
                return Ok(out);
            }
            return Err(Error::MalformedUserdata(format!("{full:?} is truncated ({} of {size} bytes)", data.len() - body)));
        }
        if path.is_empty() {
            off = next;
            continue;
        }
        let kind = if typ == b'5' { Kind::Dir } else { Kind::File(text_checked(&path, &data[body..end])?.to_vec()) };
        out.push(Entry { path, mode, kind });
        off = next;
    }
    if data.len() == LEGACY_TRUNCATED || off == data.len() {
        return Ok(out);
    }
    Err(Error::MalformedUserdata("ends without an end-of-archive marker".into()))
}

fn put_octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    let s = format!("{v:0w$o}");
    field[..w].copy_from_slice(s.as_bytes());
    field[w] = 0;
}

/// Write a USTAR archive (uid/gid 0, mtime 0, in the order given) ending with two zero blocks.
pub fn write(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = [0u8; 512];
        // Byte-for-byte what Go's archive/tar (docker-machine) writes: directory names without a slash,
        // every numeric field zero-padded octal with a NUL, device numbers included.
        let nb = e.path.as_bytes();
        h[..nb.len().min(100)].copy_from_slice(&nb[..nb.len().min(100)]);
        put_octal(&mut h[100..108], e.mode as u64);
        put_octal(&mut h[108..116], 0);
        put_octal(&mut h[116..124], 0);
        let size = match &e.kind {
            Kind::File(d) => d.len(),
            Kind::Dir => 0,
        };
        put_octal(&mut h[124..136], size as u64);
        put_octal(&mut h[136..148], 0);
        h[156] = if matches!(e.kind, Kind::Dir) { b'5' } else { b'0' };
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        put_octal(&mut h[329..337], 0);
        put_octal(&mut h[337..345], 0);
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&h);
        if let Kind::File(d) = &e.kind {
            out.extend_from_slice(d);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

pub fn file(path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Entry {
    Entry { path: path.into(), mode, kind: Kind::File(data.into()) }
}

pub fn dir(path: &str, mode: u32) -> Entry {
    Entry { path: path.into(), mode, kind: Kind::Dir }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let entries = vec![
            file(MAGIC, 0, Vec::new()),
            dir(".ssh", 0o700),
            file(".ssh/authorized_keys", 0o644, b"ssh-ed25519 AAAA test\n".to_vec()),
            file("tls/ca.pem", 0o644, vec![b'x'; 700]),
        ];
        let t = write(&entries);
        assert_eq!(t.len() % 512, 0);
        assert_eq!(parse(&t).unwrap(), entries);
        // A disk head: archive followed by zeros.
        let mut disk = t.clone();
        disk.resize(1 << 16, 0);
        assert_eq!(parse(&disk).unwrap(), entries);
    }

    #[test]
    fn legacy_truncation_keeps_complete_entries() {
        let big = vec![b'k'; 5000];
        let t = write(&[dir(".ssh", 0o700), file(".ssh/authorized_keys", 0o644, big)]);
        let got = parse(&t[..LEGACY_TRUNCATED]).unwrap();
        assert_eq!(got, vec![dir(".ssh", 0o700)]);
        assert!(parse(&t[..3000]).is_err(), "other truncations are errors");
    }

    #[test]
    fn hostile_entries_are_refused() {
        for bad in ["/etc/passwd", "../x", ".ssh/../../x"] {
            let t = write(&[file(bad, 0o644, b"x".to_vec())]);
            assert!(parse(&t).is_err(), "{bad}");
        }
        let mut t = write(&[file("a", 0o644, b"x".to_vec())]);
        t[156] = b'2';
        // Fix the checksum so the type is what gets refused.
        t[148..156].copy_from_slice(b"        ");
        let sum: u64 = t[..512].iter().map(|&b| b as u64).sum();
        t[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert!(parse(&t).unwrap_err().to_string().contains("link"));
        assert!(parse(&[0x42u8; 4096][..1024]).unwrap_err().to_string().contains("checksum mismatch"));
        assert!(parse(&b"this is not a tar archive\n".repeat(100)).unwrap_err().to_string().contains("checksum mismatch"));
        let mut huge = write(&[file("a", 0o644, b"x".to_vec())]);
        huge[124..136].copy_from_slice(b"17777777777\0");
        huge[148..156].copy_from_slice(b"        ");
        let sum: u64 = huge[..512].iter().map(|&b| b as u64).sum();
        huge[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert!(parse(&huge).unwrap_err().to_string().contains("claims"));
    }

    fn retype(t: &mut [u8], typ: u8) {
        t[156] = typ;
        t[148..156].copy_from_slice(b"        ");
        let sum: u64 = t[..512].iter().map(|&b| b as u64).sum();
        t[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    #[test]
    fn hardlinks_devices_truncation_and_junk_after_the_magic() {
        let mut hard = write(&[file(".ssh/authorized_keys", 0o644, Vec::new())]);
        retype(&mut hard, b'1');
        assert!(parse(&hard).unwrap_err().to_string().contains("refusing link"));
        for dev in [b'3', b'4', b'6'] {
            let mut d = write(&[file("dev", 0o644, Vec::new())]);
            retype(&mut d, dev);
            assert!(parse(&d).unwrap_err().to_string().contains("device or fifo"));
        }
        // Cut in the middle of a file (not at the legacy 4096 bytes): an error naming the file.
        let t = write(&[file(MAGIC, 0, MAGIC), file(".ssh/authorized_keys", 0o644, vec![b'k'; 2000])]);
        let e = parse(&t[..1024 + 512 + 700]).unwrap_err().to_string();
        assert!(e.contains("authorized_keys") && e.contains("truncated"), "{e}");
        // Cut mid-file on a zeroed disk: the missing bytes read as zeros, so only the NUL tail shows the cut.
        let whole = write(&[file(MAGIC, 0, MAGIC), file(".ssh/authorized_keys", 0o644, vec![b'k'; 3000])]);
        let mut disk = whole[..1024 + 512 + 700].to_vec();
        disk.resize(1 << 16, 0);
        let e = parse(&disk).unwrap_err().to_string();
        assert!(e.contains("authorized_keys") && e.contains("is truncated") && e.contains("last 2300 of 3000"), "{e}");
        let mut nul_inside = vec![b'k'; 100];
        nul_inside[40] = 0;
        let e = parse(&write(&[file("tls/ca.pem", 0o644, nul_inside.clone())])).unwrap_err().to_string();
        assert!(e.contains("ca.pem") && e.contains("truncated or damaged: NUL bytes from byte 40 of 100"), "{e}");
        // Cut short over an older archive: NUL padding, then the old archive's bytes.
        let mut over_old = whole[..1024 + 512 + 700].to_vec();
        over_old.resize(1024 + 512 + 1024, 0);
        over_old.extend(write(&[file(".ssh/id_rsa.pub", 0o644, b"ssh-rsa AAAA old\n".to_vec())]));
        over_old.resize(1 << 16, 0);
        let e = parse(&over_old).unwrap_err().to_string();
        assert!(e.contains("authorized_keys") && e.contains("is truncated or damaged: NUL bytes from byte 700 of 3000"), "{e}");
        // Other files may be binary.
        assert!(parse(&write(&[file("bin/tool", 0o755, nul_inside)])).is_ok());
        // The magic file, then bytes that are no tar header.
        let mut junk = write(&[file(MAGIC, 0, MAGIC)]);
        junk.truncate(1024);
        junk.extend(b"#!/bin/sh\nrm -rf /\n".repeat(40));
        assert!(parse(&junk).unwrap_err().to_string().contains("checksum mismatch at byte 1024"));
    }
}
