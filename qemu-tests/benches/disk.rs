//! Data disk figures from one run (a bench, not a timed test): the first boot of a fresh 20 GiB format-me
//! disk (the disk phase's duration = format time, and boot → first mTLS /_ping) and a second boot of the
//! same disk (disk phase = detect + mount, and boot → first /_ping). Prints a Markdown row for
//! docs/figures.md.
use ferry_builder::machine::Machine;
use ferry_builder::{ping, qemu};
use qemu_tests::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Boot, wait for the first answered /_ping; returns (wall time, the console's "[disk] done in" seconds).
fn boot(m: &Machine) -> (f64, f64) {
    let p = m.ports().expect("ports");
    let cfg = Arc::new(ping::client_config(&m.dir).expect("client config"));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], p.api));
    let launch = m.launch(&out_dir(), "console=ttyS0,115200 quiet panic=-1 ferry.hostname=bench").expect("launch");
    let t = Instant::now();
    launch.start().expect("start QEMU");
    while !ping::ping(addr, cfg.clone()) {
        assert!(t.elapsed() < Duration::from_secs(600), "no /_ping after 600s");
        std::thread::sleep(Duration::from_millis(250));
    }
    let wall = t.elapsed().as_secs_f64();
    let console = std::fs::read_to_string(m.path("console.log")).unwrap_or_default();
    let disk = console
        .lines()
        .find_map(|l| l.split("[disk] done in ").nth(1))
        .and_then(|s| s.trim_end_matches('s').trim().parse().ok())
        .unwrap_or(f64::NAN);
    let _ = qemu::qmp(&m.path("qmp.sock"), "system_powerdown");
    qemu::wait_exit(&m.path("qemu.pid"), Duration::from_secs(90));
    (wall, disk)
}

fn main() {
    // Like the test suites: no guest traffic leaves this machine (SNTP off, QEMU's network restricted).
    isolate_guests();
    let home = std::env::temp_dir().join(format!("ferry-bench-disk-{}", std::process::id()));
    std::env::set_var("FERRY_HOME", &home);
    let _guard = KillGuard { home: home.clone() };
    let m = Machine::named("bench").expect("name");
    m.create(Some(20 << 30)).expect("machine with a 20 GiB disk");
    let (first_wall, first_disk) = boot(&m);
    let (second_wall, second_disk) = boot(&m);
    let _ = std::fs::remove_dir_all(&home);
    println!("accelerator:                         {}", qemu::accel());
    println!("first boot, disk phase (20 GiB):     {first_disk:.2} s (detect, format, mount)");
    println!("first boot -> first mTLS /_ping:     {first_wall:.1} s");
    println!("second boot, disk phase:             {second_disk:.2} s (detect, mount)");
    println!("second boot -> first mTLS /_ping:    {second_wall:.1} s");
    println!(
        "\n| {} | {} | {first_disk:.2} s | {first_wall:.1} s | {second_disk:.2} s | {second_wall:.1} s |",
        std::env::var("BENCH_DATE").unwrap_or_else(|_| "today".into()),
        qemu::accel()
    );
}
