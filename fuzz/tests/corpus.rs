//! The fuzz targets on stable, in CI: every saved corpus file (coverage-guided finds and every crash ever
//! found, kept as regression cases), the built-in seeds, then a fixed-seed mutation loop over them
//! (each target's `stable_runs`, or FERRY_FUZZ_ITERATIONS for all; a failing input is saved and its path
//! printed).
use ferry_fuzz::{mutate, seeds, Target, TARGETS};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn corpus_dir(t: &Target) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(t.name)
}

fn saved(t: &Target) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(t);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (every target keeps a corpus folder)", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))).collect()
}

/// Run one input; on a panic, save it where it can be replayed and say how.
fn check(t: &Target, input: &[u8], what: &str) {
    if catch_unwind(AssertUnwindSafe(|| (t.run)(input))).is_err() {
        let out = std::env::temp_dir().join(format!("ferry-fuzz-{}-failure.bin", t.name));
        let _ = std::fs::write(&out, input);
        panic!(
            "target {}: {what} failed ({} bytes, saved to {}); once fixed, copy it into {} as a regression case",
            t.name,
            input.len(),
            out.display(),
            corpus_dir(t).display()
        );
    }
}

fn iterations(t: &Target) -> usize {
    std::env::var("FERRY_FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(t.stable_runs)
}

fn run_target(name: &str) {
    let t = ferry_fuzz::target(name).expect("a known target");
    let files = saved(t);
    assert!(!files.is_empty(), "{}: the corpus is empty", corpus_dir(t).display());
    for (path, data) in &files {
        check(t, data, &format!("corpus file {}", path.display()));
    }
    let seeds = seeds::of(t.name);
    assert!(!seeds.is_empty(), "target {} has no seeds", t.name);
    for (i, s) in seeds.iter().enumerate() {
        check(t, s, &format!("seed {i}"));
    }
    let (n_seeds, n_files) = (seeds.len(), files.len());
    let pool: Vec<Vec<u8>> = seeds.into_iter().chain(files.into_iter().map(|(_, d)| d)).collect();
    let n = iterations(t);
    let mut rng = mutate::Rng::new(0x5EED ^ name.len() as u64);
    for i in 0..n {
        let base = &pool[rng.below(pool.len())];
        let input = mutate::mutate(&mut rng, base, &pool, t.max_len);
        check(t, &input, &format!("mutation {i} of {n}"));
    }
    println!("{name}: {n_files} corpus files, {n_seeds} seeds and {n} mutations passed");
}

#[test]
fn every_target_is_run_here() {
    let here = ["userdata", "gpt", "mbr", "dhcp", "sntp", "profile", "cmdline", "shares"];
    let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    assert_eq!(names, here, "a target was added: give it a #[test] below and a corpus folder");
    for t in TARGETS {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz_targets").join(format!("{}.rs", t.name));
        assert!(bin.is_file(), "{}: the cargo-fuzz binary of target {} is missing", bin.display(), t.name);
    }
}

#[test]
fn userdata() {
    run_target("userdata");
}
#[test]
fn gpt() {
    run_target("gpt");
}
#[test]
fn mbr() {
    run_target("mbr");
}
#[test]
fn dhcp() {
    run_target("dhcp");
}
#[test]
fn sntp() {
    run_target("sntp");
}
#[test]
fn profile() {
    run_target("profile");
}
#[test]
fn cmdline() {
    run_target("cmdline");
}
#[test]
fn shares() {
    run_target("shares");
}

/// A target that breaks its promise fails the run, saves the input and says where.
#[test]
#[should_panic(expected = "saved to")]
fn a_failing_input_fails_the_run() {
    let t = Target { name: "always-fails", run: |d| assert!(d.is_empty(), "not empty"), max_len: 8, stable_runs: 1 };
    check(&t, b"x", "a test input");
}
