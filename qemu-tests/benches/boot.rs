//! Boot figures from one run (a bench, not a timed test): kernel-only boot (same kernel, a trivial
//! initramfs whose init powers off at once), boot → first successful mTLS /_ping, their ratio, idle memory
//! inside the VM (MemTotal − MemAvailable) and the initrd size. Prints a Markdown row for docs/figures.md.
use ferry_builder::cpio::{Body, Writer};
use ferry_builder::machine::Machine;
use ferry_builder::{ping, qemu};
use qemu_tests::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let out = out_dir();
    let (vmlinuz, initrd) = (out.join("vmlinuz"), out.join("initrd.img"));
    if !vmlinuz.is_file() || !initrd.is_file() {
        eprintln!("bench: {} has no image; run ./ferry build first", out.display());
        std::process::exit(1);
    }
    let home = std::env::temp_dir().join(format!("ferry-bench-{}", std::process::id()));
    std::env::set_var("FERRY_HOME", &home);

    // 1. Kernel only: init binary alone in a tiny initramfs, powering off as soon as it runs.
    let init = std::fs::read(ferry_bin().with_file_name("init")).expect("target/.../release/init (cargo build --release)");
    let mut w = Writer::new(0);
    w.add("dev", 0o755, Body::Dir);
    w.add("dev/console", 0o600, Body::CharDev(5, 1));
    w.add("proc", 0o755, Body::Dir);
    w.add("sys", 0o755, Body::Dir);
    w.add("init", 0o755, Body::File(&init));
    w.add("ferry-initramfs", 0o644, Body::File(b"bench\n"));
    let tiny = home.join("tiny-initrd.img");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(&tiny, w.finish()).unwrap();
    let t = Instant::now();
    let st = qemu::poweroff_boot(&qemu::accel_arg(), "max", 2048, 2, &vmlinuz, &tiny).status().expect("qemu-system-x86_64");
    let kernel_only = t.elapsed();
    assert!(st.success(), "kernel-only boot failed: {st}");

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
    let meminfo = retry(Duration::from_secs(60), || run(m.ssh_command().unwrap().arg("cat /proc/meminfo"), None, Duration::from_secs(60)))
        .unwrap_or_default();
    let kb =
        |k: &str| meminfo.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()).unwrap_or(0);
    let used_mib = (kb("MemTotal:").saturating_sub(kb("MemAvailable:"))) / 1024;
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
