//! Hostile inputs, many per boot: foreign disks of several kinds, a read-only format-me disk, garbage on
//! the fw_cfg channel and absurd kernel command-line values in one boot; then hostile userdata.tar
//! variants on a format-me disk (one per boot, with a PEM that does not parse on fw_cfg). Each case: the
//! appliance reaches "engine ready", the console names the problem, nothing is written outside its place.
use crate::{add, blank, machine, ssh, Shared, HOSTILE};
use ferry_builder::qemu::{Bus, Drive};
use ferry_contract::userdata::{dir, file, write, MAGIC};
use qemu_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BASE: &str = "console=ttyS0,115200 quiet panic=-1";

/// Wait for "engine ready" on the console; the seconds it took.
fn wait_ready(m: &ferry_builder::machine::Machine, limit: Duration) -> Result<f64, String> {
    let t = Instant::now();
    wait_console(m, "engine ready", limit).map(|_| t.elapsed().as_secs_f64())
}

pub fn all(o: &Shared, home: &Path, all: bool) {
    disks_cmdline_fwcfg(o, home);
    let variants = userdata_variants();
    for (i, v) in variants.iter().enumerate() {
        // The CI subset boots one variant; `FERRY_RELIABILITY=full` boots them all.
        if all || i == 0 {
            userdata_boot(o, home, i, v, i == 0);
        }
    }
}

/// Foreign disks: (case name, path, a console text that must appear).
fn make_foreign(d: &Path, m: &ferry_builder::machine::Machine) -> Result<Vec<(String, PathBuf, String)>, String> {
    std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    let mut v = Vec::new();
    let ext4 = blank(&d.join("ext4.img"), 64)?;
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-L", "other"]).arg(&ext4), None, MIN)?;
    v.push(("an ext4 filesystem labelled \"other\"".into(), ext4, "an ext filesystem labelled \"other\"".into()));
    let fat = blank(&d.join("fat.img"), 64)?;
    run(Command::new("mkfs.vfat").args(["-n", "OTHERFAT"]).arg(&fat), None, MIN)?;
    v.push(("a FAT filesystem".into(), fat, "an MBR (partition table or boot sector)".into()));
    let gpt = blank(&d.join("gpt.img"), 64)?;
    // -o: sgdisk does nothing to a blank disk without it (and still exits 0).
    run(Command::new("sgdisk").args(["-o", "-n", "1:2048:+16M", "-t", "1:8300", "-c", "1:linux"]).arg(&gpt), None, MIN)?;
    v.push(("a GPT disk with a Linux partition".into(), gpt, "a GPT partition table with 1 partition(s)".into()));
    let mbr = blank(&d.join("mbr.img"), 64)?;
    run(Command::new("sfdisk").args(["-q"]).arg(&mbr), Some(b"label: dos\n,,83\n"), MIN)?;
    v.push(("an MBR partition table".into(), mbr, "an MBR (partition table or boot sector)".into()));
    let swap = blank(&d.join("swap.img"), 64)?;
    run(Command::new("mkswap").args(["-L", "otherswap"]).arg(&swap), None, MIN)?;
    v.push(("a swap signature".into(), swap, "data that is not Ferry's".into()));
    let iso_dir = d.join("iso-content");
    std::fs::create_dir_all(&iso_dir).map_err(|e| e.to_string())?;
    std::fs::write(iso_dir.join("readme.txt"), "not ferry").map_err(|e| e.to_string())?;
    let iso = d.join("other.iso");
    run(Command::new("xorriso").args(["-as", "mkisofs", "-quiet", "-V", "OTHERISO", "-o"]).arg(&iso).arg(&iso_dir), None, MIN)?;
    v.push(("an ISO 9660 image".into(), iso, "data that is not Ferry's".into()));
    let random = d.join("random.img");
    run(
        Command::new("dd").args(["if=/dev/urandom", "bs=1M", "count=8", "status=none"]).arg(format!("of={}", random.display())),
        None,
        MIN,
    )?;
    v.push(("random bytes".into(), random, "data that is not Ferry's".into()));
    // The magic string, but not at byte 0: not a format-me disk.
    let shifted = blank(&d.join("shifted-magic.img"), 64)?;
    write_at(&shifted, 512, MAGIC.as_bytes())?;
    v.push(("the format-me magic at byte 512 instead of 0".into(), shifted, "data that is not Ferry's".into()));
    // A real format-me disk (the machine's key), attached read-only: chosen, refused, left alone.
    let ro = d.join("readonly-magic.img");
    let key = std::fs::read(m.path("id_ed25519.pub")).map_err(|e| e.to_string())?;
    ferry_builder::disk::create(&ferry_builder::disk::Spec {
        path: ro.clone(),
        bytes: 2 << 30,
        format: ferry_builder::disk::Format::Raw,
        ssh_pub: Some(key),
        tls: None,
    })
    .map_err(|e| e.to_string())?;
    v.push(("a read-only format-me disk".into(), ro, "is read-only; cannot format it".into()));
    Ok(v)
}

/// Kernel command-line values: (option, text the console must show).
const CMDLINE: &[(&str, &str)] = &[
    ("ferry.hostname=bad_name!!", "ignoring ferry.hostname=\"bad_name!!\""),
    ("ferry.autologin=banana", "ignoring ferry.autologin=\"banana\""),
    ("ferry.disk=../etc", "ignoring ferry.disk=\"../etc\""),
    ("ferry.debug.pause=nowhere", "ignoring ferry.debug.pause=\"nowhere\""),
    ("ferry.frobnicate=1", "ferry.frobnicate"),
];

fn disks_cmdline_fwcfg(o: &Shared, home: &Path) {
    let setup = (|| {
        let m = machine(home, "hostile-disks")?;
        m.create(None).map_err(|e| e.to_string())?;
        let disks = make_foreign(&home.join("hostile-disks"), &m)?;
        let garbage = home.join("garbage-userdata.bin");
        std::fs::write(&garbage, b"\x7fELF this is not a tar archive at all, just bytes on the fw_cfg channel\n".repeat(40))
            .map_err(|e| e.to_string())?;
        let long_opt = format!("ferry.hostname={}", "x".repeat(300));
        let opts: Vec<&str> = CMDLINE.iter().map(|(k, _)| *k).collect();
        let mut l = m.launch(&out_dir(), &format!("{BASE} {} {long_opt}", opts.join(" "))).map_err(|e| e.to_string())?;
        l.fw_cfg_userdata = Some(garbage);
        l.disks = disks
            .iter()
            .map(|(_, p, _)| Drive {
                path: p.clone(),
                format: "raw".into(),
                bus: Bus::Virtio,
                read_only: p.ends_with("readonly-magic.img"),
                snapshot: false,
            })
            .collect();
        let before: Vec<Option<String>> = disks.iter().map(|(_, p, _)| sha256_file(p)).collect();
        l.start().map_err(|e| e.to_string())?;
        Ok((m, disks, before))
    })();
    let (m, disks, before) = match setup {
        Ok(s) => s,
        Err(e) => {
            add(o, HOSTILE, "hostile disks: set up", Err(e));
            return;
        }
    };
    let ready = wait_ready(&m, 12 * MIN);
    let ok_ready = add(
        o,
        HOSTILE,
        "9 hostile disks, garbage fw_cfg userdata and absurd command-line values in one boot: engine ready",
        ready.map(|s| format!("{s:.0}s")),
    );
    // The appliance answers ssh with the read-only disk's key (its payload is used for this boot).
    let alive = ok_ready && retry(3 * MIN, || ssh(home, "hostile-disks", "echo alive")).is_ok();
    let _ = ferry(home, &["stop", "hostile-disks"], 3 * MIN);
    kill_qemu(&m.path("qemu.pid"));
    let c = console(&m);
    let passed_over = c.matches("not Ferry's, never written").count();
    for (i, (name, p, text)) in disks.iter().enumerate() {
        let case = format!("disk: {name}: named, passed over, byte-identical");
        add(
            o,
            HOSTILE,
            &case,
            (|| {
                text_has(&c, &[text])?;
                if sha256_file(p) != before[i] || before[i].is_none() {
                    return Err(format!("{} changed", p.display()));
                }
                Ok(String::new())
            })(),
        );
    }
    add(
        o,
        HOSTILE,
        "all 8 foreign disks named on the console",
        if passed_over == 8 { Ok("8 \"never written\" lines".into()) } else { Err(format!("{passed_over} \"never written\" lines")) },
    );
    add(
        o,
        HOSTILE,
        "read-only format-me disk: the appliance runs from RAM with its keys (ssh works)",
        if alive { text_has(&c, &["running from RAM"]) } else { Err("ssh did not answer".into()) },
    );
    add(o, HOSTILE, "garbage on the fw_cfg channel: named, ignored", text_has(&c, &["opt/ferry/userdata.tar", "continuing without it"]));
    for (opt, text) in CMDLINE {
        add(o, HOSTILE, &format!("kernel command line {opt}: named, ignored"), text_has(&c, &[text]));
    }
    add(
        o,
        HOSTILE,
        "kernel command line ferry.hostname=<300 characters>: named, ignored",
        text_has(&c, &["ignoring ferry.hostname=\"xxxxxxxx"]),
    );
    let _ = std::fs::remove_dir_all(home.join("hostile-disks"));
}

/// A hostile userdata.tar variant: (name, the tar's bytes after the magic entry, console text).
struct Variant {
    name: &'static str,
    tar: Vec<u8>,
    says: &'static str,
}

fn with_entry(path: &str, data: &[u8]) -> Vec<u8> {
    write(&[file(MAGIC, 0, MAGIC), dir(".ssh", 0o700), file(path, 0o644, data.to_vec())])
}

fn typed(flag: u8, link: &str) -> Vec<u8> {
    let mut t = with_entry(".ssh/authorized_keys", b"");
    edit_tar_header(&mut t, 2, |h| {
        h[156] = flag;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    });
    t
}

fn userdata_variants() -> Vec<Variant> {
    let mut huge = with_entry(".ssh/authorized_keys", b"x");
    edit_tar_header(&mut huge, 2, |h| h[124..136].copy_from_slice(b"17777777777\0"));
    let full = with_entry(".ssh/authorized_keys", &[b'k'; 3000]);
    let truncated = full[..512 * 4 + 700].to_vec();
    let mut not_tar = write(&[file(MAGIC, 0, MAGIC)]);
    not_tar.truncate(1024);
    not_tar.extend_from_slice(&b"PK\x03\x04 this is a zip, not a tar ".repeat(30));
    vec![
        Variant {
            name: "a path with ..",
            tar: with_entry("../../etc/ferry-pwned", b"x"),
            says: "refusing unsafe path \"../../etc/ferry-pwned\"",
        },
        Variant { name: "an absolute path", tar: with_entry("/etc/ferry-pwned", b"x"), says: "refusing unsafe path" },
        Variant { name: "a symlink to /etc/shadow", tar: typed(b'2', "/etc/shadow"), says: "refusing link" },
        Variant { name: "a hardlink to /etc/shadow", tar: typed(b'1', "/etc/shadow"), says: "refusing link" },
        Variant { name: "a character device", tar: typed(b'3', ""), says: "refusing device or fifo" },
        Variant { name: "a fifo", tar: typed(b'6', ""), says: "refusing device or fifo" },
        Variant { name: "a 2 GB size field", tar: huge, says: "claims" },
        Variant { name: "truncated mid-file", tar: truncated, says: "is truncated" },
        Variant { name: "a zip after the magic entry", tar: not_tar, says: "not a tar archive?" },
        Variant { name: "an unknown entry type", tar: typed(b'Z', ""), says: "unsupported entry type" },
    ]
}

fn userdata_boot(o: &Shared, home: &Path, i: usize, v: &Variant, bad_pem: bool) {
    let name = format!("hostile-ud{i}");
    let case = format!("userdata.tar on the format-me disk with {}: named, disk formatted without it, nothing written outside", v.name);
    let res = (|| {
        let m = machine(home, &name)?;
        m.create(Some(3 << 30)).map_err(|e| e.to_string())?;
        write_at(&m.disk(), 0, &v.tar)?;
        // fw_cfg brings the SSH key (so the test can look inside) and, once, a server.pem that does not parse.
        let key = std::fs::read(m.path("id_ed25519.pub")).map_err(|e| e.to_string())?;
        let mut entries = vec![dir(".ssh", 0o700), file(".ssh/authorized_keys", 0o644, key)];
        if bad_pem {
            entries.extend([
                dir("tls", 0o700),
                file("tls/ca.pem", 0o644, b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n".to_vec()),
                file("tls/server.pem", 0o644, b"garbage".to_vec()),
                file("tls/server-key.pem", 0o600, b"garbage".to_vec()),
            ]);
        }
        let fw = home.join(format!("{name}-fwcfg.tar"));
        std::fs::write(&fw, write(&entries)).map_err(|e| e.to_string())?;
        let mut l = m.launch(&out_dir(), &format!("{BASE} ferry.hostname={name}")).map_err(|e| e.to_string())?;
        l.fw_cfg_userdata = Some(fw);
        l.start().map_err(|e| e.to_string())?;
        let s = wait_ready(&m, 12 * MIN)?;
        let c = console(&m);
        text_has(&c, &[v.says, "formatting without userdata"])?;
        let inside = retry(3 * MIN, || {
            ssh(home, &name, "test -e /etc/ferry-pwned && echo PWNED; sudo find /home/docker \\( -type l -o -type p -o -type c \\) | sed 's/^/ODD /'; grep -c ' /mnt/vda1 ' /proc/mounts")
        })?;
        if inside.contains("PWNED") || inside.contains("ODD ") {
            return Err(format!("found inside: {}", inside.trim()));
        }
        if !inside.trim_end().ends_with('1') {
            return Err(format!("the data disk is not mounted: {}", inside.trim()));
        }
        let mut note = format!("engine ready after {s:.0}s");
        if bad_pem {
            text_has(&c, &["using generated certificates"]).map_err(|e| format!("unparsable server.pem on fw_cfg: {e}"))?;
            note.push_str("; fw_cfg's unparsable PEM named, generated certificates used");
        }
        let _ = ferry(home, &["stop", &name], 3 * MIN);
        Ok(note)
    })();
    add(o, HOSTILE, &case, res);
    kill_qemu(&home.join("machines").join(&name).join("qemu.pid"));
    let _ = std::fs::remove_file(home.join("machines").join(&name).join("disk.img"));
}
