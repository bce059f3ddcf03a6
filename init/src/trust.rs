//! Registry CAs (boot2docker's habit): PEM certificates in `/var/lib/boot2docker/certs/` (`*.pem`,
//! `*.crt`) join the system trust store before dockerd starts, so pulls from a private registry signed by
//! them work. The store is the bundle Debian's tools and Go read; the root is a RAM overlay, so this is
//! redone every boot from the persistent directory.
use crate::error::{Error, Result};
use crate::{log, sys};

pub const BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// The certificate blocks of a PEM text, each checked to be base64 of a DER SEQUENCE. Err says why the
/// text is not a certificate file.
pub fn certificates(text: &[u8]) -> std::result::Result<Vec<String>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "not text (a DER file? convert it to PEM)".to_string())?;
    let mut out = vec![];
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let body_from = start + BEGIN.len();
        let len = rest[body_from..].find(END).ok_or("a certificate block has no END line")?;
        let body: String = rest[body_from..body_from + len].chars().filter(|c| !c.is_whitespace()).collect();
        match decode_base64(&body) {
            Some(der) if der.len() > 64 && der[0] == 0x30 => out.push(format!("{BEGIN}\n{}\n{END}\n", wrap(&body))),
            _ => return Err("a certificate block is not valid base64 DER".into()),
        }
        rest = &rest[body_from + len + END.len()..];
    }
    if out.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(out)
}

fn wrap(b64: &str) -> String {
    b64.as_bytes().chunks(64).map(|c| String::from_utf8_lossy(c).to_string()).collect::<Vec<_>>().join("\n")
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

/// Add the directory's certificates to the bundle. Returns the console summary; each file that is not a
/// certificate is named on the console and skipped.
pub fn add_registry_cas(dir: &str, bundle: &str) -> Result<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(format!("no {dir}")),
        Err(e) => return Err(Error::io(format!("read {dir}"), e)),
    };
    names.sort();
    let mut added = String::new();
    let mut files = 0;
    for name in names {
        let path = format!("{dir}/{name}");
        if !(name.ends_with(".pem") || name.ends_with(".crt")) {
            log::warn(&format!("registry CAs: {path}: skipped (only *.pem and *.crt files are read)"));
            continue;
        }
        match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|t| certificates(&t)) {
            Ok(certs) => {
                added.push_str(&format!("# {path} (added at boot by Ferry)\n"));
                added.push_str(&certs.concat());
                files += 1;
            }
            Err(why) => log::warn(&format!("registry CAs: {path}: {why}; skipped")),
        }
    }
    if files == 0 {
        return Ok(format!("no certificate in {dir}"));
    }
    let mut text = std::fs::read(bundle).map_err(|e| Error::io(format!("read {bundle}"), e))?;
    if !text.ends_with(b"\n") && !text.is_empty() {
        text.push(b'\n');
    }
    text.extend_from_slice(added.as_bytes());
    sys::write_atomic(bundle, &text, 0o644)?;
    Ok(format!("{files} file(s) from {dir} added to {bundle}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real certificate's PEM (any self-signed one; its content does not matter here).
    fn pem() -> String {
        let der: Vec<u8> = std::iter::once(0x30).chain(std::iter::once(0x82)).chain((0..200).map(|i| i as u8)).collect();
        format!("{BEGIN}\n{}\n{END}\n", wrap(&encode(&der)))
    }

    fn encode(b: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..=c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        while !s.len().is_multiple_of(4) {
            s.push('=');
        }
        s
    }

    #[test]
    fn base64_round_trips() {
        for n in 0..20 {
            let b: Vec<u8> = (0..n).map(|i| (i * 37) as u8).collect();
            assert_eq!(decode_base64(&encode(&b)).unwrap(), b);
        }
        assert!(decode_base64("a*bc").is_none());
    }

    #[test]
    fn certificates_and_refusals() {
        let two = format!("subject=x\n{}{}", pem(), pem());
        assert_eq!(certificates(two.as_bytes()).unwrap().len(), 2);
        assert!(certificates(b"hello").unwrap_err().contains("no PEM"));
        assert!(certificates(&[0x30, 0x82, 0xff, 0xfe]).unwrap_err().contains("DER"));
        assert!(certificates(format!("{BEGIN}\n!!!!\n{END}\n").as_bytes()).unwrap_err().contains("base64"));
        assert!(certificates(format!("{BEGIN}\nAAAA\n").as_bytes()).unwrap_err().contains("END"));
        let key = pem().replace("CERTIFICATE", "PRIVATE KEY");
        assert!(certificates(key.as_bytes()).is_err(), "a key is not a certificate");
    }

    #[test]
    fn the_bundle_gains_the_good_files_only() {
        let root = std::env::temp_dir().join(format!("ferry-trust-{}", std::process::id()));
        let dir = root.join("certs");
        std::fs::create_dir_all(&dir).unwrap();
        let bundle = root.join("bundle.crt");
        std::fs::write(&bundle, "SYSTEM").unwrap();
        let (d, b) = (dir.to_str().unwrap(), bundle.to_str().unwrap());
        assert!(add_registry_cas(root.join("none").to_str().unwrap(), b).unwrap().starts_with("no "));
        std::fs::write(dir.join("a.crt"), pem()).unwrap();
        std::fs::write(dir.join("b.pem"), "not a cert").unwrap();
        std::fs::write(dir.join("c.txt"), pem()).unwrap();
        assert!(add_registry_cas(d, b).unwrap().starts_with("1 file(s)"));
        let text = std::fs::read_to_string(&bundle).unwrap();
        assert!(text.starts_with("SYSTEM\n# ") && text.matches(BEGIN).count() == 1, "{text}");
        let _ = std::fs::remove_dir_all(root);
    }
}
