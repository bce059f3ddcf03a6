//! `ferry build`: kernel + rootfs from Debian, trimmed and completed, squashed; an initramfs that carries it;
//! out/vmlinuz, out/initrd.img, out/manifest.json. Every artefact is written to a temp name and renamed.
use crate::cpio::{self, Body};
use crate::error::{Context, Error, Result};
use crate::modules::Catalog;
use crate::util::{self, Step};
use crate::{debian, kconfig, media, rootfs};
use ferry_contract::paths;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Inputs {
    pub out: PathBuf,
    pub epoch: i64,
}

/// Instants every format we write can store: FAT starts in 1980, squashfs stores 32-bit seconds.
pub const EPOCH_RANGE: std::ops::RangeInclusive<i64> = 315_532_800..=4_294_967_295;

/// The build time when SOURCE_DATE_EPOCH is not set: this release's date (2026-11-30 00:00 UTC). Fixed,
/// so the image depends on its inputs only (not on git, a clock or where the binary sits); moved forward
/// with each release, since the guest takes it as the earliest believable time for its clock.
pub const RELEASE_EPOCH: i64 = 1_795_996_800;

/// SOURCE_DATE_EPOCH when set, else [`RELEASE_EPOCH`].
pub fn source_date_epoch() -> Result<i64> {
    let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") else {
        return Ok(RELEASE_EPOCH);
    };
    v.trim().parse::<i64>().ok().filter(|e| EPOCH_RANGE.contains(e)).ok_or_else(|| {
        Error::msg(format!(
            "SOURCE_DATE_EPOCH={v:?} is not a time the media can record: give seconds since 1970 between {} (1980, FAT's first year) and {} (2106, squashfs's last)",
            EPOCH_RANGE.start(),
            EPOCH_RANGE.end()
        ))
    })
}

impl Inputs {
    pub fn discover(out: PathBuf) -> Result<Inputs> {
        Ok(Inputs { epoch: source_date_epoch()?, out })
    }

    /// Hash of everything the image is made from (except Debian's archive, which the manifest records):
    /// the data and guest binaries embedded in this `ferry`, its image-making sources, its version and the
    /// build time. Docs, tests, CI scripts and the CLI's own code are not among them.
    pub fn fingerprint(&self) -> String {
        let mut all = crate::assets::fingerprint_input();
        all.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
        all.extend_from_slice(self.epoch.to_string().as_bytes());
        util::sha256_hex(&all)
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                collect(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

/// What `build` writes into out/ (besides manifest.json).
pub const ARTIFACTS: [&str; 5] = ["vmlinuz", "initrd.img", "kernel.config", "ferry.iso", "ferry.img"];

/// Is out/ up to date with these inputs?
fn is_current(inp: &Inputs) -> bool {
    let m = std::fs::read_to_string(inp.out.join("manifest.json")).ok().and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
    let fp = inp.fingerprint();
    matches!(m, Some(m) if m["inputs"].as_str() == Some(fp.as_str())
        && ARTIFACTS.iter().all(|a| inp.out.join(a).is_file()))
}

/// Build into out/ unless it is already current (or `force`); true when it built. One build at a time
/// per out/: a second `ferry up` or `ferry build` started meanwhile waits for the first and then finds
/// out/ current. (Two at once both wrote out/.work, and one booted a squashfs the other had replaced.)
pub fn ensure(inp: &Inputs, force: bool) -> Result<bool> {
    std::fs::create_dir_all(&inp.out).ctx(|| format!("create {}", inp.out.display()))?;
    let _lock = out_lock(&inp.out)?;
    if !force && is_current(inp) {
        return Ok(false);
    }
    build(inp)?;
    Ok(true)
}

/// An exclusive flock on `<out>/.lock`, released when dropped (or when the process dies).
fn out_lock(out: &Path) -> Result<util::FileLock> {
    util::FileLock::take(&out.join(".lock"), &format!("another build into {} is running; waiting for it to finish", out.display()))
}

fn kernel_version(tree: &Path) -> Result<String> {
    let dir = tree.join("usr/lib/modules");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .ctx(|| format!("list {}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v.pop().ok_or_else(|| Error::msg(format!("no kernel modules in {}", dir.display())))
}

/// The recipe of the static iptables (a data file run in the build chroot).
const IPTABLES_SCRIPT: &str = "rootfs/iptables-static.sh";

/// A Debian tree cached as a tarball in ~/.cache/ferry/trees, keyed by what it was made from (package
/// list, suite). FERRY_REFRESH=1 makes it again (e.g. to pick up a Debian point release).
fn cached_tree(name: &str, key: &[&str], dest: &Path, make: impl FnOnce(&Path) -> Result<()>) -> Result<bool> {
    let dir = util::cache_dir().join("trees");
    std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
    let hash = util::sha256_hex(key.join("\n").as_bytes());
    let tarball = dir.join(format!("{name}-{}.tar", &hash[..16]));
    let refresh = std::env::var_os("FERRY_REFRESH").is_some();
    if tarball.is_file() && !refresh {
        std::fs::create_dir_all(dest).ctx(|| format!("create {}", dest.display()))?;
        util::run(
            Command::new("tar").args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"]).arg(&tarball).arg("-C").arg(dest),
        )?;
        return Ok(true);
    }
    make(dest)?;
    // Per process: two builders into different out/ directories may fill the same cache entry at once.
    let part = tarball.with_extension(format!("{}.part", std::process::id()));
    util::run(
        Command::new("tar").args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-cf"]).arg(&part).arg("-C").arg(dest).arg("."),
    )?;
    std::fs::rename(&part, &tarball).ctx(|| format!("rename {}", part.display()))?;
    Ok(false)
}

/// Replace an output file: readers see the old file or the whole new one, never a part (`ferry_contract::file`).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    ferry_contract::file::write_atomic(path, data, 0o644).ctx(|| format!("write {}", path.display()))
}

/// Build everything into out/. On failure the work directory goes too: out/ keeps only whole artefacts.
fn build(inp: &Inputs) -> Result<serde_json::Value> {
    let r = build_steps(inp);
    if r.is_err() && std::env::var_os("FERRY_KEEP_WORK").is_none() {
        let _ = std::fs::remove_dir_all(inp.out.join(".work"));
    }
    r
}

fn build_steps(inp: &Inputs) -> Result<serde_json::Value> {
    let all = Step::start(format!("build into {} (SOURCE_DATE_EPOCH={})", inp.out.display(), inp.epoch));
    let work = inp.out.join(".work");
    if work.exists() {
        std::fs::remove_dir_all(&work).ctx(|| format!("clean {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).ctx(|| format!("create {}", work.display()))?;
    // The checkout's data as this binary carries it, read from files like any checkout.
    let repo = &work.join("inputs");
    crate::assets::unpack(repo)?;

    let s = Step::start("kernel: extract Debian's linux-image-amd64");
    let ktree = work.join("kernel");
    let hit = cached_tree("kernel", &[debian::SUITE, "linux-image-amd64"], &ktree, |d| {
        debian::extract(d, &["linux-image-amd64".into()], inp.epoch, "kernel")
    })?;
    let kver = kernel_version(&ktree)?;
    let config = std::fs::read_to_string(ktree.join(format!("boot/config-{kver}"))).ctx(|| "read the kernel config".into())?;
    let req = std::fs::read_to_string(repo.join("kernel-config/requirements.txt")).ctx(|| "read kernel-config/requirements.txt".into())?;
    let problems = kconfig::check(&config, &req);
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| format!("  {} is {}, Ferry needs {}", p.option, p.have, p.want)).collect();
        return Err(Error::msg(format!("kernel {kver} lacks options Ferry needs:\n{}", list.join("\n"))));
    }
    s.done(&format!("{kver}{}", if hit { ", from cache" } else { "" }));

    let s = Step::start("rootfs: mmdebstrap Debian trixie");
    let root = work.join("rootfs");
    let packages = util::read_data_file(&repo.join("rootfs/packages.txt"))?;
    let customize = util::read_data_file(&repo.join("rootfs/customize.txt"))?;
    let key: Vec<String> =
        [debian::SUITE.to_string()].into_iter().chain(packages.iter().cloned()).chain(customize.iter().cloned()).collect();
    let key: Vec<&str> = key.iter().map(String::as_str).collect();
    let hit = cached_tree("rootfs", &key, &root, |d| debian::rootfs(d, &packages, &customize, inp.epoch))?;
    let versions = debian::package_versions(&root)?;
    s.done(&format!("{} packages{}", versions.len(), if hit { ", from cache" } else { "" }));

    let s = Step::start("iptables: the legacy backend built static from Debian's source");
    let script = repo.join(IPTABLES_SCRIPT);
    let recipe = std::fs::read_to_string(&script).ctx(|| format!("read {}", script.display()))?;
    let ipt = work.join("iptables");
    let hit =
        cached_tree("iptables", &[debian::SUITE, &recipe], &ipt, |d| debian::build_in_chroot(d, &script, inp.epoch, "static iptables"))?;
    let ipt_prog = std::fs::read(ipt.join("xtables-legacy-multi")).ctx(|| format!("read the static iptables from {}", ipt.display()))?;
    if crate::elf::has_interpreter(&ipt_prog) != Some(false) {
        return Err(Error::msg(format!("{}: the iptables it built is not a static x86_64 program", script.display())));
    }
    let fact = |f: &str| std::fs::read_to_string(ipt.join(f)).unwrap_or_default().trim().to_string();
    let (ipt_version, ipt_source) = (fact("version"), fact("source"));
    s.done(&format!("iptables {ipt_version}, {} KB{}", ipt_prog.len() >> 10, if hit { ", from cache" } else { "" }));

    let s = Step::start("rootfs: trim, overlay, Ferry binaries, modules");
    let freed = rootfs::trim(&root, &util::read_data_file(&repo.join("rootfs/trim.txt"))?)?;
    let n = rootfs::apply_overlay(&repo.join("rootfs/overlay"), &repo.join("rootfs/modes.txt"), &root)?;
    rootfs::install_ferry_binaries(&root, crate::assets::INIT, crate::assets::FERRY_ENGINE)?;
    // Debian's alternatives point iptables at the legacy backend (rootfs/customize.txt); this is its program.
    rootfs::install_file(&root.join("usr/sbin/xtables-legacy-multi"), &ipt_prog, 0o755)?;
    rootfs::install_file(&root.join(paths::relative(paths::BUILD_EPOCH)), format!("{}\n", inp.epoch).as_bytes(), 0o644)?;
    rootfs::install_file(&root.join(paths::relative(paths::VERSION)), format!("{}\n", env!("CARGO_PKG_VERSION")).as_bytes(), 0o644)?;
    let moddir = ktree.join("usr/lib/modules").join(&kver);
    let mut cat = Catalog::scan(&moddir)?;
    let chosen = cat.select(&moddir, &util::read_data_file(&repo.join("kernel-config/modules.txt"))?)?;
    let root_mods = root.join("usr/lib/modules").join(&kver);
    if root_mods.exists() {
        std::fs::remove_dir_all(&root_mods).ctx(|| format!("clean {}", root_mods.display()))?;
    }
    cat.install(&moddir, &chosen, &root_mods)?;
    s.done(&format!("{} MB trimmed, {n} overlay files, {} modules", freed >> 20, chosen.len()));

    let s = Step::start("firmware: the files the shipped drivers name");
    let fw_pkgs = util::read_data_file(&repo.join("kernel-config/firmware.txt"))?;
    let fwtree = work.join("firmware");
    let key: Vec<&str> = [debian::SUITE, debian::FIRMWARE_COMPONENTS].into_iter().chain(fw_pkgs.iter().map(String::as_str)).collect();
    let hit =
        cached_tree("firmware", &key, &fwtree, |d| debian::extract_from(d, &fw_pkgs, debian::FIRMWARE_COMPONENTS, inp.epoch, "firmware"))?;
    let wanted = cat.firmware(&moddir, &chosen)?;
    let firmware = rootfs::install_firmware(&fwtree.join("usr/lib/firmware"), &wanted, &root.join("usr/lib/firmware"))?;
    s.done(&format!("{} of {} named files{}", firmware.len(), wanted.len(), if hit { ", from cache" } else { "" }));

    let s = Step::start("rootfs: mksquashfs (zstd)");
    let squash = work.join("rootfs.squashfs");
    let e = inp.epoch.to_string();
    // Times come from the flags; mksquashfs refuses SOURCE_DATE_EPOCH in its environment as well.
    util::run(Command::new("mksquashfs").env_remove("SOURCE_DATE_EPOCH").arg(&root).arg(&squash).args([
        "-noappend",
        "-comp",
        "zstd",
        "-Xcompression-level",
        "15",
        "-b",
        "256K",
        "-no-progress",
        "-quiet",
        "-mkfs-time",
        &e,
        "-all-time",
        &e,
    ]))?;
    let squash_bytes = std::fs::read(&squash).ctx(|| format!("read {}", squash.display()))?;
    s.done(&format!("{} MB", squash_bytes.len() >> 20));

    let s = Step::start("initramfs: cpio + gzip");
    let early = cat.select(&moddir, &util::read_data_file(&repo.join("kernel-config/initramfs-modules.txt"))?)?;
    let early_dir = work.join("initramfs-modules");
    cat.install(&moddir, &early, &early_dir)?;
    let busybox = std::fs::read(root.join("usr/bin/busybox")).ctx(|| "read busybox from the rootfs (package busybox-static)".into())?;
    let initrd = initramfs(inp, &kver, &early_dir, &busybox, &squash_bytes)?;
    s.done(&format!("{} MB, {} early modules", initrd.len() >> 20, early.len()));

    let s = Step::start("media: ESP (FAT), hybrid ISO, GPT raw image");
    let media_dir = repo.join("image-builder/media");
    let boot_pkgs = util::read_data_file(&media_dir.join("packages.txt"))?;
    let btree = work.join("boot");
    let key: Vec<&str> = [debian::SUITE].into_iter().chain(boot_pkgs.iter().map(String::as_str)).collect();
    let hit = cached_tree("boot", &key, &btree, |d| debian::extract(d, &boot_pkgs, inp.epoch, "boot loaders"))?;
    let boot_versions = debian::deb_versions(&btree, &boot_pkgs)?;
    let kpath = ktree.join(format!("boot/vmlinuz-{kver}"));
    let vmlinuz = std::fs::read(&kpath).ctx(|| {
        format!("read the kernel image {} (linux-image-amd64 extracted without it? FERRY_REFRESH=1 fetches it again)", kpath.display())
    })?;
    let version = env!("CARGO_PKG_VERSION");
    let files = media::boot_files(&media_dir, &btree, version)?;
    let m = media::assemble(&files, &vmlinuz, &initrd, version, inp.epoch)?;
    s.done(&format!(
        "ISO {} MB, raw {} MB, ESP {} MB {}{}",
        m.iso.len() >> 20,
        m.img.len() >> 20,
        m.esp_bytes >> 20,
        if m.fat32 { "FAT32" } else { "FAT16" },
        if hit { ", boot loaders from cache" } else { "" }
    ));

    let s = Step::start("write out/");
    // Every artefact goes to a temp name first; nothing half-written is ever left under its real name.
    write_atomic(&inp.out.join("vmlinuz"), &vmlinuz)?;
    write_atomic(&inp.out.join("initrd.img"), &initrd)?;
    write_atomic(&inp.out.join("kernel.config"), config.as_bytes())?;
    write_atomic(&inp.out.join("ferry.iso"), &m.iso)?;
    write_atomic(&inp.out.join("ferry.img"), &m.img)?;
    let manifest = serde_json::json!({
        "ferry_version": env!("CARGO_PKG_VERSION"),
        "source_date_epoch": inp.epoch,
        "inputs": inp.fingerprint(),
        "kernel": kver,
        "suite": debian::SUITE,
        "boot_packages": boot_versions.iter().map(|(p, v)| serde_json::json!({"name": p, "version": v})).collect::<Vec<_>>(),
        "built_from_source": [{"program": "/usr/sbin/xtables-legacy-multi", "package": "iptables", "version": ipt_version, "source": ipt_source}],
        "packages": versions.iter().map(|(p, v)| serde_json::json!({"name": p, "version": v})).collect::<Vec<_>>(),
        "modules": chosen.iter().collect::<Vec<_>>(),
        "firmware": firmware,
        "artifacts": {
            "vmlinuz": {"sha256": util::sha256_hex(&vmlinuz), "bytes": vmlinuz.len()},
            "initrd.img": {"sha256": util::sha256_hex(&initrd), "bytes": initrd.len()},
            "ferry.iso": {"sha256": util::sha256_hex(&m.iso), "bytes": m.iso.len()},
            "ferry.img": {"sha256": util::sha256_hex(&m.img), "bytes": m.img.len()},
            "rootfs.squashfs (inside initrd.img)": {"sha256": util::sha256_hex(&squash_bytes), "bytes": squash_bytes.len()},
        },
    });
    let text = serde_json::to_string_pretty(&manifest).ctx(|| "serialise manifest".into())?;
    write_atomic(&inp.out.join("manifest.json"), text.as_bytes())?;
    s.done("");
    if std::env::var_os("FERRY_KEEP_WORK").is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    all.done("");
    Ok(manifest)
}

/// Two concatenated newc archives: a gzip-compressed one with init, busybox and early modules, then the
/// already-compressed squashfs uncompressed (gzip over zstd would only cost boot time; the kernel accepts
/// mixed segments).
fn initramfs(inp: &Inputs, kver: &str, early_dir: &Path, busybox: &[u8], squash: &[u8]) -> Result<Vec<u8>> {
    let mtime = inp.epoch as u32;
    let mut w = cpio::Writer::new(mtime);
    for d in ["bin", "dev", "lib", "lib/modules", "proc", "sys"] {
        w.add(d, 0o755, Body::Dir);
    }
    w.add("dev/console", 0o600, Body::CharDev(5, 1));
    w.add("dev/null", 0o666, Body::CharDev(1, 3));
    w.add("bin/busybox", 0o755, Body::File(busybox));
    w.add("bin/sh", 0, Body::Symlink("busybox"));
    w.add("init", 0o755, Body::File(crate::assets::INIT));
    w.add(paths::relative(paths::INITRAMFS_MARKER), 0o644, Body::File(b"ferry initramfs\n"));
    let mut files = Vec::new();
    collect(early_dir, &mut files);
    files.sort();
    let base = format!("lib/modules/{kver}");
    let mut dirs = std::collections::BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(early_dir).unwrap_or(f);
        for a in rel.ancestors().skip(1) {
            if !a.as_os_str().is_empty() {
                dirs.insert(a.to_path_buf());
            }
        }
    }
    w.add(&base, 0o755, Body::Dir);
    for d in &dirs {
        w.add(&format!("{base}/{}", d.display()), 0o755, Body::Dir);
    }
    for f in &files {
        let rel = f.strip_prefix(early_dir).unwrap_or(f);
        let data = std::fs::read(f).ctx(|| format!("read {}", f.display()))?;
        w.add(&format!("{base}/{}", rel.display()), 0o644, Body::File(&data));
    }
    let first = w.finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&first).ctx(|| "gzip the initramfs".into())?;
    let mut out = gz.finish().ctx(|| "gzip the initramfs".into())?;
    while out.len() % 4 != 0 {
        out.push(0);
    }
    let mut w2 = cpio::Writer::new(mtime);
    w2.add(paths::relative(paths::ROOT_IMAGE), 0o444, Body::File(squash));
    out.extend_from_slice(&w2.finish());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::out_lock;
    use std::time::{Duration, Instant};

    /// A second taker waits until the first lock is dropped.
    #[test]
    fn the_out_lock_makes_a_second_build_wait() {
        let out = std::env::temp_dir().join(format!("ferry-outlock-{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        let first = out_lock(&out).unwrap();
        let o = out.clone();
        let second = std::thread::spawn(move || {
            let t = Instant::now();
            let _l = out_lock(&o).unwrap();
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
        let waited = second.join().unwrap();
        assert!(waited >= Duration::from_millis(250), "the second lock was granted after {waited:?} while the first was held");
        let _ = std::fs::remove_dir_all(&out);
    }

    /// The fingerprint reads nothing from disk or git: the same binary gives the same one wherever it runs,
    /// and only the build time (besides what the binary carries) moves it.
    #[test]
    fn the_fingerprint_depends_on_the_inputs_only() {
        let at = |epoch| super::Inputs { out: "/nonexistent".into(), epoch }.fingerprint();
        let here = at(super::RELEASE_EPOCH);
        let cwd = std::env::current_dir().unwrap();
        std::env::set_current_dir("/").unwrap();
        let elsewhere = at(super::RELEASE_EPOCH);
        std::env::set_current_dir(cwd).unwrap();
        assert_eq!(here, elsewhere);
        assert_ne!(here, at(super::RELEASE_EPOCH + 1));
        assert!(super::EPOCH_RANGE.contains(&super::RELEASE_EPOCH));
    }
}
