//! Debian inputs through mmdebstrap: the rootfs (maintainer scripts run) and the kernel package
//! (extracted). Downloaded .debs are cached in ~/.cache/ferry/debs (file names carry name+version+arch and
//! apt verifies their hashes), so a rebuild downloads only the package indexes.
use crate::error::{Context, Error, Result};
use crate::util;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const SUITE: &str = "trixie";

/// Archive components: main for everything but the NIC firmware (kernel-config/firmware.txt).
const MAIN: &str = "main";
/// mmdebstrap's own default, named because the build chroot needs a `deb-src` line beside it.
const MIRROR: &str = "http://deb.debian.org/debian";
pub const FIRMWARE_COMPONENTS: &str = "main,non-free-firmware";

fn base(variant: &str, components: &str, epoch: i64, cache: &Path) -> Command {
    let mut c = Command::new("mmdebstrap");
    c.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .arg(format!("--variant={variant}"))
        .arg("--mode=root")
        .arg(format!("--components={components}"))
        .arg("--aptopt=APT::Install-Recommends \"false\"")
        .arg("--skip=essential/unlink")
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!("--setup-hook=sync-in {} /var/cache/apt/archives/", cache.display()))
        .arg(format!("--customize-hook=sync-out /var/cache/apt/archives {}", cache.display()))
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit());
    c
}

fn run_mmdebstrap(mut c: Command, what: &str) -> Result<()> {
    let st = c.status().ctx(|| "run mmdebstrap (apt-get install mmdebstrap; ./ferry does it for you)".into())?;
    if !st.success() {
        return Err(Error::msg(format!("mmdebstrap for the {what} failed ({st}); see its output above")));
    }
    Ok(())
}

fn deb_cache() -> Result<PathBuf> {
    let d = util::cache_dir().join("debs");
    std::fs::create_dir_all(&d).ctx(|| format!("create {}", d.display()))?;
    Ok(d)
}

/// The rootfs: essential set + packages, with the customize commands (user creation) run in the chroot.
pub fn rootfs(dest: &Path, packages: &[String], customize: &[String], epoch: i64) -> Result<()> {
    let mut c = base("essential", MAIN, epoch, &deb_cache()?);
    c.arg(format!("--include={}", packages.join(",")));
    for cmd in customize {
        c.arg(format!("--customize-hook=chroot \"$1\" sh -c '{}'", cmd.replace('\'', "'\\''")));
    }
    c.arg(SUITE).arg(dest);
    run_mmdebstrap(c, "rootfs")
}

/// Run `script` (sh) as root in a throwaway build chroot (Debian's `buildd` set: the compiler, make,
/// dpkg-dev; Debian's source archive too, for `apt-get source`) and copy what it leaves in `/out` to
/// `dest`. The chroot itself is discarded.
pub fn build_in_chroot(dest: &Path, script: &Path, epoch: i64, what: &str) -> Result<()> {
    std::fs::create_dir_all(dest).ctx(|| format!("create {}", dest.display()))?;
    let mut c = base("buildd", MAIN, epoch, &deb_cache()?);
    c.arg(format!("--customize-hook=copy-in {} /tmp", script.display()));
    let name = script.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    c.arg(format!("--customize-hook=chroot \"$1\" sh -e /tmp/{name}"));
    c.arg(format!("--customize-hook=sync-out /out {}", dest.display()));
    c.arg(SUITE).arg("/dev/null");
    for kind in ["deb", "deb-src"] {
        c.arg(format!("{kind} {MIRROR} {SUITE} {MAIN}"));
    }
    run_mmdebstrap(c, what)
}

/// Packages extracted into a tree, no scripts run: the kernel (/boot/vmlinuz-*, /boot/config-*,
/// /usr/lib/modules/*) and the boot loaders of the media. `what` names them in errors.
pub fn extract(dest: &Path, packages: &[String], epoch: i64, what: &str) -> Result<()> {
    extract_from(dest, packages, MAIN, epoch, what)
}

/// [`extract`] from the given archive components.
pub fn extract_from(dest: &Path, packages: &[String], components: &str, epoch: i64, what: &str) -> Result<()> {
    let mut c = base("extract", components, epoch, &deb_cache()?);
    // Extracted packages leave no dpkg status behind; record what was fetched for the manifest.
    c.arg(format!("--extract-hook=for f in \"$1\"/var/cache/apt/archives/*.deb; do dpkg-deb --show --showformat='${{Package}}\\t${{Version}}\\n' \"$f\"; done > \"$1\"/{VERSIONS_FILE}"));
    c.arg(format!("--include={}", packages.join(","))).arg(SUITE).arg(dest);
    run_mmdebstrap(c, what)
}

const VERSIONS_FILE: &str = ".ferry-package-versions";

/// (package, version) of `packages` in a tree made by `extract`.
pub fn deb_versions(tree: &Path, packages: &[String]) -> Result<Vec<(String, String)>> {
    let f = tree.join(VERSIONS_FILE);
    let text = std::fs::read_to_string(&f).ctx(|| format!("read {} (made by debian::extract)", f.display()))?;
    let all: Vec<(String, String)> = text.lines().filter_map(|l| l.split_once('\t')).map(|(a, b)| (a.to_string(), b.to_string())).collect();
    Ok(packages.iter().filter_map(|p| all.iter().find(|(n, _)| n == p).cloned()).collect())
}

/// `package\tversion` lines of an installed tree.
pub fn package_versions(root: &Path) -> Result<Vec<(String, String)>> {
    let out = util::run(Command::new("dpkg-query").arg(format!("--admindir={}", root.join("var/lib/dpkg").display())).args([
        "-W",
        "-f",
        "${Package}\t${Version}\n",
    ]))?;
    Ok(out.lines().filter_map(|l| l.split_once('\t')).map(|(a, b)| (a.to_string(), b.to_string())).collect())
}
