//! Write every target's built-in seeds to DIR/TARGET/seed-N, to start a cargo-fuzz run from well-formed
//! inputs: `cargo run -p ferry-fuzz --example seeds -- /tmp/seeds`, then
//! `cargo +nightly fuzz run --features libfuzzer -s none TARGET fuzz/corpus/TARGET /tmp/seeds/TARGET`.
fn main() {
    let Some(dir) = std::env::args_os().nth(1).map(std::path::PathBuf::from) else {
        eprintln!("usage: seeds DIR (writes DIR/TARGET/seed-N for every fuzz target)");
        std::process::exit(2);
    };
    for t in ferry_fuzz::TARGETS {
        let d = dir.join(t.name);
        let written = std::fs::create_dir_all(&d).and_then(|_| {
            ferry_fuzz::seeds::of(t.name).iter().enumerate().try_for_each(|(i, s)| std::fs::write(d.join(format!("seed-{i}")), s))
        });
        if let Err(e) = written {
            eprintln!("seeds: {}: {e}", d.display());
            std::process::exit(1);
        }
    }
}
