//! Boot figures from one run (a bench, not a timed test): kernel-only boot (same kernel, a trivial
//! initramfs whose init powers off at once), boot → first successful mTLS /_ping, their ratio, idle memory
//! inside the VM (MemTotal − MemAvailable) and the initrd size. Prints a Markdown row for docs/figures.md.
use ferry_builder::machine::Machine;
use ferry_builder::{ping, qemu};
use qemu_tests::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    // Like the test suites: no guest traffic leaves this machine (SNTP off, QEMU's network restricted).
    isolate_guests();
    let out = out_dir();
    let (vmlinuz, initrd) = (out.join("vmlinuz"), out.join("initrd.img"));
    if !vmlinuz.is_file() || !initrd.is_file() {
        eprintln!("bench: {} has no image; run ./ferry build first", out.display());
        std::process::exit(1);
    }
    let home = std::env::temp_dir().join(format!("ferry-bench-{}", std::process::id()));
    std::env::set_var("FERRY_HOME", &home);

    // 1. Kernel only: init binary alone in a tiny initramfs, powering off as soon as it runs.
    let kernel_only = kernel_only_boot(&vmlinuz, &home).expect("kernel-only boot");

    // 2. Full boot to the first answered /_ping over mTLS.
    let m = Machine::named("bench").unwrap();
    m.create(None).unwrap();
    let p = m.ports().unwrap();
    let launch = m.launch(&out, "console=ttyS0,115200 quiet panic=-1 ferry.hostname=bench").unwrap();
    let cfg = Arc::new(ping::client_config(&m.dir).unwrap());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], p.api));
    let t = Instant::now();
    launch.start().unwrap();
    while !ping::ping(addr, cfg.clone()) {
        assert!(t.elapsed() < Duration::from_secs(600), "no /_ping after 600s");
        std::thread::sleep(Duration::from_millis(250));
    }
    let to_ping = t.elapsed();

    // 3. Idle memory after the engine settles.
    std::thread::sleep(Duration::from_secs(20));
    let used_mib = used_mib(|| m.ssh_command().map_err(|e| e.to_string())).unwrap_or(0);
    let _ = qemu::qmp(&m.path("qmp.sock"), "quit");
    qemu::wait_exit(&m.path("qemu.pid"), Duration::from_secs(30));
    let initrd_mib = std::fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0) as f64 / (1 << 20) as f64;
    let _ = std::fs::remove_dir_all(&home);

    println!("accelerator:                    {}", qemu::accel());
    println!("kernel-only boot (to poweroff): {:.1} s", kernel_only.as_secs_f64());
    println!("boot -> first mTLS /_ping:      {:.1} s", to_ping.as_secs_f64());
    println!("ratio:                          {:.2}", to_ping.as_secs_f64() / kernel_only.as_secs_f64());
    println!("idle memory used in VM:         {used_mib} MiB (MemTotal - MemAvailable)");
    println!("initrd.img:                     {initrd_mib:.1} MiB");
    println!(
        "\n| {} | {} | {:.1} s | {:.1} s | {:.2} | {used_mib} MiB | {initrd_mib:.1} MiB |",
        std::env::var("BENCH_DATE").unwrap_or_else(|_| "today".into()),
        qemu::accel(),
        kernel_only.as_secs_f64(),
        to_ping.as_secs_f64(),
        to_ping.as_secs_f64() / kernel_only.as_secs_f64()
    );
}
