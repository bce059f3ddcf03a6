//! Shared-folder figures from one run (a bench, not a timed test): inside a container, untar a tree of
//! 10,000 small files onto (a) a virtio-9p share as `ferry up` makes it, (b) a virtiofs share served by
//! QEMU's virtiofsd, (c) the VM's own data disk; then read every file back. One VM carries all three, so
//! the figures are comparable. Prints a Markdown row for docs/figures.md.
use ferry_builder::machine::Machine;
use ferry_builder::ping;
use qemu_tests::*;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
const FILES: usize = 10_000;

fn main() {
    isolate_guests();
    let home = std::env::temp_dir().join(format!("ferry-bench-shares-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let (p9, vfs) = (home.join("p9"), home.join("vfs"));
    std::fs::create_dir_all(&p9).unwrap();
    std::fs::create_dir_all(&vfs).unwrap();
    std::env::set_var("FERRY_HOME", &home);
    let _guard = KillGuard { home: home.clone() };

    let sock = home.join("virtiofsd.sock");
    let mut daemon: Child = Command::new(VIRTIOFSD)
        .arg(format!("--socket-path={}", sock.display()))
        .args(["-o", &format!("source={}", vfs.display()), "-o", "cache=auto", "-o", "sandbox=chroot"])
        .spawn()
        .expect("virtiofsd (qemu-system-common) runs as root");
    let t = Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }

    let m = Machine::named("shares").unwrap();
    m.create(Some(8 << 30)).unwrap();
    m.save_shares(&[ferry_builder::shares::HostShare { host: p9.clone(), guest: "/srv/p9".into(), read_only: false }]).unwrap();
    // virtiofs needs the guest's RAM shared with virtiofsd.
    std::env::set_var(
        "FERRY_QEMU_ARGS",
        format!("-chardev socket,id=vfs,path={} -device vhost-user-fs-pci,chardev=vfs,tag=vfsbench -object memory-backend-memfd,id=mem,size=2048M,share=on -numa node,memdev=mem", sock.display()),
    );
    std::env::set_var("FERRY_MEMORY", "2048");
    let launch = m.launch(&out_dir(), "console=ttyS0,115200 quiet panic=-1 ferry.hostname=shares").unwrap();
    launch.start().unwrap();
    let p = m.ports().unwrap();
    let cfg = Arc::new(ping::client_config(&m.dir).unwrap());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], p.api));
    let t = Instant::now();
    while !ping::ping(addr, cfg.clone()) {
        assert!(t.elapsed() < Duration::from_secs(900), "no /_ping after 900s");
        std::thread::sleep(Duration::from_secs(1));
    }
    let env = DockerEnv { host: format!("tcp://127.0.0.1:{}", p.api), cert_path: m.dir.display().to_string() };
    ferry(
        &home,
        &["ssh", "shares", "--", "sudo mkdir -p /srv/vfs && sudo mount -t virtiofs vfsbench /srv/vfs && sudo mkdir -p /mnt/vda1/bench"],
        2 * MIN,
    )
    .expect("mount virtiofs in the guest");
    env.run(&["import", "-", "bb:bench"], Some(&busybox_rootfs_tar().unwrap()), 5 * MIN).unwrap();

    // The tree is made once inside the container's own layer, then untarred onto each target.
    // Times from /proc/uptime in centiseconds (busybox's date has no %N).
    let script = format!(
        "cs() {{ read a b < /proc/uptime; echo ${{a%.*}}${{a#*.}}; }}; cd /tmp && mkdir t && i=0; while [ $i -lt {FILES} ]; do echo file-$i > t/f$i; i=$((i+1)); done; busybox tar cf /tmp/t.tar t; rm -rf t; \
         for d in /p9 /vfs /disk; do cd $d; s=$(cs); busybox tar xf /tmp/t.tar; m=$(cs); n=$(busybox cat t/* | busybox wc -l); e=$(cs); \
         rm -rf t; echo \"$d write_ms=$(( (m-s)*10 )) read_ms=$(( (e-m)*10 )) files=$n\"; done"
    );
    let out = env
        .run(
            &[
                "run",
                "--rm",
                "-v",
                "/srv/p9:/p9",
                "-v",
                "/srv/vfs:/vfs",
                "-v",
                "/mnt/vda1/bench:/disk",
                "bb:bench",
                "busybox",
                "sh",
                "-c",
                &script,
            ],
            None,
            60 * MIN,
        )
        .expect("the workload");
    let _ = ferry(&home, &["stop", "shares"], 3 * MIN);
    let _ = daemon.kill();
    let _ = daemon.wait();
    let fig = |d: &str, k: &str| -> f64 {
        out.lines()
            .find(|l| l.starts_with(d))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix(&format!("{k}="))))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1000.0
    };
    println!("{out}");
    println!("accelerator: {}", ferry_builder::qemu::accel());
    let date = run(Command::new("date").args(["-u", "+%Y-%m-%d"]), None, MIN).unwrap_or_default();
    let (pw, pr, vw, vr, dw, dr) = (
        fig("/p9", "write_ms"),
        fig("/p9", "read_ms"),
        fig("/vfs", "write_ms"),
        fig("/vfs", "read_ms"),
        fig("/disk", "write_ms"),
        fig("/disk", "read_ms"),
    );
    println!("| date | accel | files | 9p untar | 9p read | virtiofs untar | virtiofs read | VM disk untar | VM disk read | 9p ÷ disk (untar) | virtiofs ÷ disk (untar) |");
    println!(
        "| {} | {} | {FILES} | {pw:.1} s | {pr:.1} s | {vw:.1} s | {vr:.1} s | {dw:.1} s | {dr:.1} s | {:.1} | {:.1} |",
        date.trim(),
        ferry_builder::qemu::accel(),
        pw / dw,
        vw / dw
    );
    let _ = std::fs::remove_dir_all(&home);
}
