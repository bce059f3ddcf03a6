//! Reproducible on any machine: the committed HEAD, cloned to two checkouts at different paths and built
//! by `./ferry build` with two different cargo homes, gives bit-identical guest binaries and images; and
//! no binary names the cargo home it was built with. Not part of `./ferry test` (two whole builds, about
//! 7 minutes on 2 cores with warm caches); run it with `cargo test --release -p qemu-tests --test reproducible`.
use qemu_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const BUILD_LIMIT: std::time::Duration = std::time::Duration::from_secs(3600);
/// What is compared: the guest binaries (what the image embeds) and every artefact of the image.
const ARTEFACTS: &[&str] = &[
    "target/x86_64-unknown-linux-gnu/release/init",
    "target/x86_64-unknown-linux-gnu/release/ferry-engine",
    "out/vmlinuz",
    "out/initrd.img",
    "out/ferry.iso",
    "out/ferry.img",
];

fn main() {
    let mut r = Report::default();
    let ws = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let base = std::env::temp_dir().join(format!("ferry-repro-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    println!("reproducible: HEAD of {} built twice (cargo homes {} and a copy of it)", ws.display(), home.display());
    // The second cargo home holds a copy of the first one's downloads, so nothing is fetched again.
    let other_home = base.join("second-cargo-home");
    let prepared = std::fs::create_dir_all(&other_home).map_err(|e| e.to_string()).and_then(|_| {
        run(Command::new("cp").arg("-a").arg(home.join("registry")).arg(&other_home), None, BUILD_LIMIT).map(|_| String::new())
    });
    if !r.check("a second cargo home with the same downloads", prepared) {
        r.finish("reproducible");
    }
    let builds = [(base.join("a"), home.clone()), (base.join("second/checkout-with-a-longer-path"), other_home.clone())];
    for (dir, cargo_home) in &builds {
        let built = build(&ws, dir, cargo_home);
        if !r.check(&format!("./ferry build in {} with CARGO_HOME={}", dir.display(), cargo_home.display()), built) {
            r.finish("reproducible");
        }
    }
    for a in ARTEFACTS {
        r.check(&format!("{a} is bit-identical"), same(&builds[0].0.join(a), &builds[1].0.join(a)));
    }
    for (dir, cargo_home) in &builds {
        for b in &ARTEFACTS[..2] {
            r.check(&format!("{b} ({}) does not name its cargo home", dir.display()), lacks(&dir.join(b), cargo_home));
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    r.finish("reproducible");
}

/// Clone HEAD to `dir` and build it there as a user would, with `cargo_home`.
fn build(ws: &Path, dir: &Path, cargo_home: &Path) -> Result<String, String> {
    std::fs::create_dir_all(dir.parent().unwrap_or(dir)).map_err(|e| e.to_string())?;
    run(Command::new("git").arg("clone").arg("-q").arg(ws).arg(dir), None, BUILD_LIMIT)?;
    let epoch = run(Command::new("git").args(["log", "-1", "--format=%ct"]).current_dir(dir), None, BUILD_LIMIT)?;
    let mut cmd = Command::new("./ferry");
    cmd.arg("build").current_dir(dir).env("CARGO_HOME", cargo_home).env("SOURCE_DATE_EPOCH", epoch.trim());
    // Nothing of this test's own build leaks in (its target dir, flags, the suites' image directory).
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME") || k.starts_with("RUSTC") || k == "RUSTFLAGS" || k.starts_with("FERRY_") {
            cmd.env_remove(&k);
        }
    }
    // rustup's proxies are found through the first cargo home's bin directory.
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", std::env::var("HOME").map(|h| format!("{h}/.cargo/bin")).unwrap_or_default()));
    run(&mut cmd, None, BUILD_LIMIT).map(|_| String::new())
}

fn same(a: &Path, b: &Path) -> Result<String, String> {
    let (x, y) =
        (std::fs::read(a).map_err(|e| format!("{}: {e}", a.display()))?, std::fs::read(b).map_err(|e| format!("{}: {e}", b.display()))?);
    if x == y {
        Ok(format!("{} bytes", x.len()))
    } else {
        let at = x.iter().zip(&y).position(|(p, q)| p != q).unwrap_or(x.len().min(y.len()));
        Err(format!("{} and {} differ from byte {at} ({} vs {} bytes)", a.display(), b.display(), x.len(), y.len()))
    }
}

fn lacks(file: &Path, needle: &Path) -> Result<String, String> {
    let data = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let n = needle.as_os_str().as_encoded_bytes();
    let count = data.windows(n.len()).filter(|w| *w == n).count();
    if count == 0 {
        Ok(String::new())
    } else {
        Err(format!("{} names {} {count} times", file.display(), needle.display()))
    }
}
