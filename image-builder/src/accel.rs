//! KVM when it works, TCG otherwise. `/dev/kvm` existing is not enough: on nested hosts KVM opens fine and
//! the guest then dies with "emulation failure". So a tiny probe VM (the real kernel with the real initrd
//! and `ferry.bench=poweroff`, which powers off as soon as PID 1 runs) must boot under KVM first. The
//! verdict is cached per host kernel and QEMU binary; `FERRY_ACCEL=kvm|tcg` overrides everything.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Kvm,
    Tcg,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kvm => "kvm",
            Kind::Tcg => "tcg",
        }
    }
    fn parse(s: &str) -> Option<Kind> {
        match s.trim() {
            "kvm" => Some(Kind::Kvm),
            "tcg" => Some(Kind::Tcg),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Choice {
    pub kind: Kind,
    pub reason: String,
}

/// How long a probe may take. Under working KVM it powers off in about a second; a nested KVM that
/// fails either exits at once or leaves QEMU paused on the error, which only the timeout ends.
const PROBE_LIMIT: Duration = Duration::from_secs(30);

/// How long a probe that only ran out of time is believed: a busy host is slow under KVM too, so such a
/// verdict is tried again later, but not by every QEMU started meanwhile.
const INCONCLUSIVE_FOR: Duration = Duration::from_secs(3600);

/// The acceleration for every QEMU this process starts, decided once and said once on stderr.
pub fn choice() -> &'static Choice {
    static CHOICE: OnceLock<Choice> = OnceLock::new();
    CHOICE.get_or_init(|| {
        let c = decide(std::env::var("FERRY_ACCEL").ok().as_deref(), Path::new("/dev/kvm").exists(), &cache_file(), &probe_kernel());
        eprintln!("ferry: acceleration {} ({})", c.kind.name(), c.reason);
        c
    })
}

/// The decision, with its inputs spelled out so it can be tested without a VM where none is needed.
pub fn decide(forced: Option<&str>, dev_kvm: bool, cache: &Path, kernel: &Option<(PathBuf, PathBuf)>) -> Choice {
    match forced.map(str::trim) {
        Some("") | None => {}
        Some(f) => match Kind::parse(f) {
            Some(kind) => return Choice { kind, reason: format!("FERRY_ACCEL={f}") },
            None => eprintln!("ferry: FERRY_ACCEL={f:?} is neither kvm nor tcg; deciding by probe"),
        },
    }
    if !dev_kvm {
        return Choice { kind: Kind::Tcg, reason: "no /dev/kvm".into() };
    }
    let key = host_key();
    if let Some(c) = read_cache(cache, &key) {
        return Choice { kind: c.kind, reason: format!("{}; cached in {}", c.reason, cache.display()) };
    }
    let Some((kernel, initrd)) = kernel else {
        return Choice { kind: Kind::Tcg, reason: "/dev/kvm exists but there is no built image to probe it with yet".into() };
    };
    // One probe per host at a time: test suites start several QEMUs at once.
    let _lock = lock(cache);
    if let Some(c) = read_cache(cache, &key) {
        return Choice { kind: c.kind, reason: format!("{}; cached in {}", c.reason, cache.display()) };
    }
    let small = early_segment(initrd, &cache.with_extension("initrd"));
    let (c, conclusive) = probe(kernel, small.as_deref().unwrap_or(initrd));
    let until = (!conclusive).then(|| unix_now() + INCONCLUSIVE_FOR.as_secs());
    write_cache(cache, &key, &c, until);
    c
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The choice, and whether it is conclusive (the VM powered off, or QEMU reported a KVM failure).
fn probe(kernel: &Path, initrd: &Path) -> (Choice, bool) {
    let t = Instant::now();
    let child = crate::qemu::poweroff_boot("kvm", "host", 512, 1, kernel, initrd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (Choice { kind: Kind::Tcg, reason: format!("KVM probe: cannot run qemu-system-x86_64: {e}") }, false),
    };
    // QEMU prints the KVM failure and then sits paused: watch stderr and end the probe at once.
    let err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    if let Some(mut e) = child.stderr.take() {
        let err = err.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = e.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = err.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
    }
    let failed = || err.lock().map(|s| s.contains("KVM internal error") || s.contains("emulation failure")).unwrap_or(false);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if t.elapsed() > PROBE_LIMIT || failed() => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break None,
        }
    };
    std::thread::sleep(Duration::from_millis(50));
    let err = err.lock().map(|s| s.clone()).unwrap_or_default();
    let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
    let secs = t.elapsed().as_secs_f64();
    let choice = match status {
        Some(st) if st.success() => Choice { kind: Kind::Kvm, reason: format!("a probe VM booted under KVM in {secs:.1}s") },
        Some(st) => Choice {
            kind: Kind::Tcg,
            reason: format!(
                "/dev/kvm exists but the probe VM failed under it ({st}{}); using software emulation",
                if first.is_empty() { String::new() } else { format!(": {first}") }
            ),
        },
        None if !first.is_empty() => Choice {
            kind: Kind::Tcg,
            reason: format!("/dev/kvm exists but the probe VM failed under it after {secs:.1}s ({first}); using software emulation"),
        },
        None => Choice {
            kind: Kind::Tcg,
            reason: format!(
                "/dev/kvm exists but the probe VM did not power off within {}s; using software emulation, probing again in an hour",
                PROBE_LIMIT.as_secs()
            ),
        },
    };
    let conclusive = status.is_some() || !first.is_empty();
    (choice, conclusive)
}

/// initrd.img is a small gzip-compressed newc archive (init, busybox, early modules) followed by the
/// uncompressed squashfs one; `ferry.bench=poweroff` needs only the first. Copying 109 MB into guest memory
/// is what makes a probe slow under nested KVM, so write the first segment to `to` and boot that.
fn early_segment(initrd: &Path, to: &Path) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(initrd).ok()?.take(64 << 20).read_to_end(&mut head).ok()?;
    let mut d = flate2::bufread::GzDecoder::new(&head[..]);
    std::io::copy(&mut d, &mut std::io::sink()).ok()?;
    let used = head.len() - d.into_inner().len();
    ferry_contract::file::write_atomic(to, &head[..used], 0o644).ok()?;
    Some(to.to_path_buf())
}

/// The kernel and initrd the probe boots: the build's own (see util::out_dir).
fn probe_kernel() -> Option<(PathBuf, PathBuf)> {
    let out = crate::util::out_dir();
    let (k, i) = (out.join("vmlinuz"), out.join("initrd.img"));
    (k.is_file() && i.is_file()).then_some((k, i))
}

fn cache_file() -> PathBuf {
    crate::util::cache_dir().join("accel")
}

/// What the verdict depends on: the host kernel (KVM lives there) and the QEMU binary.
fn host_key() -> String {
    let kernel = ["/proc/sys/kernel/osrelease", "/proc/sys/kernel/version"]
        .map(|p| std::fs::read_to_string(p).unwrap_or_default().trim().to_string())
        .join(" ");
    let qemu = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("qemu-system-x86_64")).find(|p| p.is_file()))
        .and_then(|p| {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(&p).ok()?;
            Some(format!("{} {} {}", p.display(), m.size(), m.mtime()))
        })
        .unwrap_or_default();
    format!("{kernel} | {qemu}")
}

/// Cache format: line 1 the host key, line 2 `kvm` or `tcg`, line 3 the reason, line 4 (optional) the
/// unix time after which the verdict no longer counts.
fn read_cache(path: &Path, key: &str) -> Option<Choice> {
    let t = std::fs::read_to_string(path).ok()?;
    let mut l = t.lines();
    if l.next()? != key {
        return None;
    }
    let kind = Kind::parse(l.next()?)?;
    let reason = l.next().unwrap_or("").to_string();
    if let Some(until) = l.next().and_then(|u| u.trim().parse::<u64>().ok()) {
        if unix_now() > until {
            return None;
        }
    }
    Some(Choice { kind, reason })
}

fn write_cache(path: &Path, key: &str, c: &Choice, until: Option<u64>) {
    if let Some(d) = path.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let until = until.map(|u| format!("{u}\n")).unwrap_or_default();
    // Best effort: without the cache the next start probes again.
    let _ = ferry_contract::file::write_atomic(path, format!("{key}\n{}\n{}\n{until}", c.kind.name(), c.reason).as_bytes(), 0o644);
}

fn lock(cache: &Path) -> Option<crate::util::FileLock> {
    if let Some(d) = cache.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    crate::util::FileLock::take(&cache.with_extension("lock"), "another process is probing KVM; waiting for its verdict").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-accel-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("accel")
    }

    #[test]
    fn forced_choice_wins_and_bad_values_are_ignored() {
        let c = tmp("forced");
        assert_eq!(decide(Some("kvm"), false, &c, &None).kind, Kind::Kvm);
        assert_eq!(decide(Some("tcg"), true, &c, &None).kind, Kind::Tcg);
        let d = decide(Some("fast"), false, &c, &None);
        assert_eq!((d.kind, d.reason.as_str()), (Kind::Tcg, "no /dev/kvm"));
    }

    #[test]
    fn cache_is_used_only_for_the_same_host() {
        let c = tmp("cache");
        write_cache(&c, &host_key(), &Choice { kind: Kind::Kvm, reason: "probe ok".into() }, None);
        let d = decide(None, true, &c, &None);
        assert_eq!(d.kind, Kind::Kvm);
        assert!(d.reason.contains("probe ok") && d.reason.contains("cached"), "{}", d.reason);
        // Another kernel or QEMU: the entry does not count, and without an image nothing is probed.
        write_cache(&c, "another kernel | another qemu", &Choice { kind: Kind::Kvm, reason: "old".into() }, None);
        let d = decide(None, true, &c, &None);
        assert_eq!(d.kind, Kind::Tcg);
        assert!(d.reason.contains("no built image"), "{}", d.reason);
        // No /dev/kvm: the cache is not even read.
        assert_eq!(decide(None, false, &c, &None).reason, "no /dev/kvm");
        // A timed-out verdict counts until its time is up, then the host is probed again.
        write_cache(&c, &host_key(), &Choice { kind: Kind::Tcg, reason: "timed out".into() }, Some(unix_now() + 60));
        assert!(decide(None, true, &c, &None).reason.contains("timed out"));
        write_cache(&c, &host_key(), &Choice { kind: Kind::Tcg, reason: "timed out".into() }, Some(unix_now() - 1));
        assert!(decide(None, true, &c, &None).reason.contains("no built image"), "expired: probed again (no image here)");
    }
}
