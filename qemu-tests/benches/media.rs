//! Media figures from one run (a bench, not a timed test): the ISO's size against its payload compressed
//! with xz, and the build time from cached inputs. Two payload baselines:
//! - as carried: xz over vmlinuz and initrd.img as they are (both are already compressed, so xz finds
//!   little; the ratio then shows only what the ISO adds: boot loaders, metadata, duplicates);
//! - unpacked: xz over the kernel plus every file of the initrd (its early cpio and the squashfs rootfs
//!   unpacked), which also counts how well the rootfs is compressed (zstd, chosen for boot speed).
//!
//! Prints a Markdown row for docs/figures.md.
use qemu_tests::*;
use std::process::{Command, Stdio};
use std::time::Instant;

fn xz_size(input: &[u8]) -> u64 {
    use std::io::Write;
    let mut c = Command::new("xz")
        .args(["-6", "-T2", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("xz (apt-get install xz-utils)");
    let mut stdin = c.stdin.take().expect("xz stdin");
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = c.wait_with_output().expect("xz output");
    let _ = writer.join();
    out.stdout.len() as u64
}

fn sh_size(script: &str) -> u64 {
    let o = Command::new("sh").args(["-c", script]).output().expect("sh");
    assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().parse().expect("a byte count")
}

/// The squashfs inside initrd.img: the newc entry named after the image, in the second (uncompressed) part.
fn squashfs_of(initrd: &[u8]) -> &[u8] {
    let name = ferry_contract::paths::relative(ferry_contract::paths::ROOT_IMAGE);
    let mut pat = name.as_bytes().to_vec();
    pat.push(0);
    let at = initrd.windows(pat.len()).rposition(|w| w == pat.as_slice()).expect("the rootfs image in initrd.img");
    let header = at - 110;
    let size = usize::from_str_radix(std::str::from_utf8(&initrd[header + 54..header + 62]).expect("newc size"), 16).expect("newc size");
    let start = (at + pat.len()).div_ceil(4) * 4;
    &initrd[start..start + size]
}

fn main() {
    let out = out_dir();
    let (iso, vmlinuz, initrd) = (out.join("ferry.iso"), out.join("vmlinuz"), out.join("initrd.img"));
    if !iso.is_file() {
        eprintln!("bench: {} has no ferry.iso; run ./ferry build first", out.display());
        std::process::exit(1);
    }
    let work = std::env::temp_dir().join(format!("ferry-media-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let iso_size = std::fs::metadata(&iso).map(|m| m.len()).unwrap_or(0);
    let k = std::fs::read(&vmlinuz).expect("vmlinuz");
    let i = std::fs::read(&initrd).expect("initrd.img");
    let carried = xz_size(&k) + xz_size(&i);

    // Unpacked: the early cpio (gzip) and the squashfs rootfs, as one tar of files, through xz.
    let sq = work.join("rootfs.squashfs");
    std::fs::write(&sq, squashfs_of(&i)).expect("write squashfs");
    let root = work.join("root");
    let early = work.join("early");
    std::fs::create_dir_all(&early).expect("early dir");
    let gz_end = i.len() - squashfs_of(&i).len();
    std::fs::write(work.join("early.cpio.gz"), &i[..gz_end]).expect("write early part");
    let unpack = format!(
        "set -e; unsquashfs -q -n -d {root} {sq} >/dev/null; cd {early} && (zcat ../early.cpio.gz 2>/dev/null || true) | cpio -idm --quiet 2>/dev/null || true; \
         tar -C {work} -cf - root early | xz -6 -T2 -c | wc -c",
        root = root.display(),
        sq = sq.display(),
        early = early.display(),
        work = work.display()
    );
    let unpacked = xz_size(&k) + sh_size(&unpack);

    // Build time from cached inputs, into an empty directory.
    let t = Instant::now();
    let st = Command::new(ferry_bin())
        .arg("build")
        .env("FERRY_OUT", work.join("out"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("ferry build");
    let build = t.elapsed();
    assert!(st.success(), "ferry build failed");
    let _ = std::fs::remove_dir_all(&work);

    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let date = time::OffsetDateTime::now_utc().date();
    println!("| date | ISO | xz(kernel + initrd as carried) | ratio | xz(kernel + initrd unpacked) | ratio | build from cache |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {date} | {:.1} MiB | {:.1} MiB | {:.3} | {:.1} MiB | {:.3} | {:.0} s |",
        mib(iso_size),
        mib(carried),
        iso_size as f64 / carried as f64,
        mib(unpacked),
        iso_size as f64 / unpacked as f64,
        build.as_secs_f64()
    );
}
