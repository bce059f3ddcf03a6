//! `ferry disk create`: a "format-me" data disk. Byte 0 holds the userdata tar exactly as docker-machine
//! writes it (magic file, .ssh, authorized_keys, authorized_keys2), optionally followed by Ferry's TLS
//! files; the rest is zeros. Raw and fixed VHD are written here; other formats go through qemu-img.
use crate::error::{Context, Error, Result};
use ferry_contract::userdata;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format {
    Raw,
    Qcow2,
    Vmdk,
    Vhd,
    Vhdx,
    Vdi,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format> {
        Ok(match s {
            "raw" | "img" => Format::Raw,
            "qcow2" => Format::Qcow2,
            "vmdk" => Format::Vmdk,
            "vhd" | "vpc" => Format::Vhd,
            "vhdx" => Format::Vhdx,
            "vdi" => Format::Vdi,
            _ => return Err(Error::msg(format!("unknown disk format {s:?}: use raw, qcow2, vmdk, vhd, vhdx or vdi"))),
        })
    }
    /// QEMU's name for the format (`-drive format=`, `qemu-img -O`).
    pub fn qemu_name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vpc",
            Format::Vhdx => "vhdx",
            Format::Vdi => "vdi",
        }
    }
}

/// "20G", "512M", "1T", "1048576" (bytes). Binary units.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(Error::msg(format!("size {s:?}: use a number with K, M, G or T"))),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num.trim_end_matches(['i', 'I']).parse().map_err(|_| Error::msg(format!("size {s:?}: use a number with K, M, G or T")))?;
    n.checked_mul(mult).filter(|&b| b > 0).ok_or_else(|| Error::msg(format!("size {s:?} is out of range")))
}

/// The TLS files a Ferry disk may carry (installed into /var/lib/boot2docker/tls on first boot).
pub struct Tls {
    pub ca: Vec<u8>,
    pub server: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl Tls {
    pub fn from_dir(dir: &Path) -> Result<Tls> {
        let read = |n: &str| {
            std::fs::read(dir.join(n)).ctx(|| format!("--tls {}: read {n} (expected ca.pem, server.pem, server-key.pem)", dir.display()))
        };
        Ok(Tls { ca: read("ca.pem")?, server: read("server.pem")?, server_key: read("server-key.pem")? })
    }
}

/// The userdata tar. With only a key it is byte-identical to docker-machine's.
pub fn userdata_tar(ssh_pub: Option<&[u8]>, tls: Option<&Tls>) -> Vec<u8> {
    let mut e = vec![userdata::file(userdata::MAGIC, 0, userdata::MAGIC)];
    if let Some(k) = ssh_pub {
        e.push(userdata::dir(".ssh", 0o700));
        e.push(userdata::file(".ssh/authorized_keys", 0o644, k));
        e.push(userdata::file(".ssh/authorized_keys2", 0o644, k));
    }
    if let Some(t) = tls {
        e.push(userdata::dir("tls", 0o700));
        e.push(userdata::file("tls/ca.pem", 0o644, t.ca.clone()));
        e.push(userdata::file("tls/server.pem", 0o644, t.server.clone()));
        e.push(userdata::file("tls/server-key.pem", 0o600, t.server_key.clone()));
    }
    userdata::write(&e)
}

/// VHD (fixed) sizes must be whole CHS geometries so that readers using the geometry (Virtual PC, QEMU)
/// and readers using the footer's size (Hyper-V) agree. Returns (bytes, cylinders, heads, sectors).
pub fn vhd_geometry(bytes: u64) -> (u64, u16, u8, u8) {
    let sectors = bytes.div_ceil(512);
    // Each step: heads × sectors-per-track, rounded so the size is also a whole number of MiB.
    for spt in [63u64, 255] {
        let unit = lcm(16 * spt, 2048);
        let total = sectors.div_ceil(unit) * unit;
        let cyl = total / (16 * spt);
        if cyl <= 65535 {
            return (total * 512, cyl as u16, 16, spt as u8);
        }
    }
    // Beyond 127 GiB the geometry saturates and every reader uses the footer's size.
    (bytes.div_ceil(MIB) * MIB, 65535, 16, 255)
}

fn lcm(a: u64, b: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    a / gcd(a, b) * b
}

/// The 512-byte fixed-VHD footer (Virtual Hard Disk Image Format Specification).
pub fn vhd_footer(bytes: u64, geometry: (u16, u8, u8), unique_id: [u8; 16]) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // fixed disks have no dynamic header
    f[28..32].copy_from_slice(b"fery");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&bytes.to_be_bytes());
    f[48..56].copy_from_slice(&bytes.to_be_bytes());
    f[56..58].copy_from_slice(&geometry.0.to_be_bytes());
    f[58] = geometry.1;
    f[59] = geometry.2;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // fixed
    f[68..84].copy_from_slice(&unique_id);
    let sum: u32 = f.iter().map(|&b| b as u32).fold(0, u32::wrapping_add);
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
}

pub struct Spec {
    pub path: PathBuf,
    pub bytes: u64,
    pub format: Format,
    pub ssh_pub: Option<Vec<u8>>,
    pub tls: Option<Tls>,
}

/// Write the disk to a temporary name and rename it into place; never overwrite an existing file.
pub fn create(spec: &Spec) -> Result<()> {
    let path = &spec.path;
    if path.exists() {
        return Err(Error::msg(format!("{} exists; remove it first (a disk may hold data)", path.display())));
    }
    let bytes = spec.bytes.div_ceil(MIB) * MIB;
    let tar = userdata_tar(spec.ssh_pub.as_deref(), spec.tls.as_ref());
    let tmp = path.with_extension("ferry-tmp");
    let raw = path.with_extension("ferry-raw-tmp");
    let r = (|| -> Result<()> {
        match spec.format {
            Format::Raw => write_raw(&tmp, &tar, bytes, None),
            Format::Vhd => {
                let (size, c, h, s) = vhd_geometry(bytes);
                let id = unique_id(&tar, path);
                write_raw(&tmp, &tar, size, Some(vhd_footer(size, (c, h, s), id)))
            }
            other => {
                write_raw(&raw, &tar, bytes, None)?;
                let mut cmd = Command::new("qemu-img");
                cmd.args(["convert", "-q", "-f", "raw", "-O", other.qemu_name()]);
                if other == Format::Vhdx {
                    cmd.args(["-o", "subformat=dynamic"]);
                }
                cmd.arg(&raw).arg(&tmp);
                let r = crate::util::run(&mut cmd).map(|_| ());
                let _ = std::fs::remove_file(&raw);
                r
            }
        }
    })();
    match r {
        Ok(()) => std::fs::rename(&tmp, path).ctx(|| format!("rename {} to {}", tmp.display(), path.display())),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// A per-disk identifier: unique is what matters (Hyper-V tracks disks by it), not reproducibility.
fn unique_id(tar: &[u8], path: &Path) -> [u8; 16] {
    use sha2::Digest;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut h = sha2::Sha256::new();
    h.update(tar);
    h.update(path.as_os_str().as_encoded_bytes());
    h.update(now.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    ferry_contract::gpt::v4(id)
}

fn write_raw(path: &Path, tar: &[u8], bytes: u64, footer: Option<[u8; 512]>) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(path).ctx(|| format!("create {}", path.display()))?;
    f.write_all(tar).ctx(|| format!("write {}", path.display()))?;
    // Sparse: the rest of the disk reads as zeros without taking space.
    f.set_len(bytes).ctx(|| format!("size {}", path.display()))?;
    if let Some(ft) = footer {
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::Start(bytes)).ctx(|| format!("seek {}", path.display()))?;
        f.write_all(&ft).ctx(|| format!("write the VHD footer of {}", path.display()))?;
    }
    f.sync_all().ctx(|| format!("fsync {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2GiB").unwrap_or(0), 0, "GiB is not accepted as-is");
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn userdata_layout_matches_docker_machine() {
        let t = userdata_tar(Some(b"ssh-rsa AAAA key\n"), None);
        assert!(t.starts_with(userdata::MAGIC.as_bytes()));
        let e = userdata::parse(&t).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(names, [userdata::MAGIC, ".ssh", ".ssh/authorized_keys", ".ssh/authorized_keys2"]);
        assert_eq!(e[0].mode, 0);
        assert_eq!(e[0].kind, userdata::Kind::File(userdata::MAGIC.as_bytes().to_vec()));
        assert_eq!(e[1].mode, 0o700);
        assert_eq!(e[2].mode, 0o644);
    }

    #[test]
    fn vhd_geometry_is_exact_and_mib_aligned() {
        for gib in [1u64, 20, 31, 40, 100, 200] {
            let (b, c, h, s) = vhd_geometry(gib << 30);
            assert!(b >= gib << 30);
            assert_eq!(b % MIB, 0, "{gib} GiB");
            if c < 65535 {
                assert_eq!(c as u64 * h as u64 * s as u64 * 512, b, "{gib} GiB");
            }
        }
        let f = vhd_footer(1 << 30, (1040, 16, 63), [1; 16]);
        let sum: u32 = f.iter().enumerate().filter(|(i, _)| !(64..68).contains(i)).map(|(_, &b)| b as u32).sum();
        assert_eq!(u32::from_be_bytes([f[64], f[65], f[66], f[67]]), !sum);
    }
}
