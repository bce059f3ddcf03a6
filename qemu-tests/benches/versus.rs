//! Ferry next to a stock Debian VM, in one run with the same kernel, QEMU settings, CPUs and memory
//! (issue 17): the peer is an mmdebstrap'd trixie with systemd as init and Debian's docker.io (the same
//! dockerd), booted from a raw ext4 disk with its own initramfs-tools initramfs; its dockerd listens on
//! 2376 with its own TLS (DOCKER_OPTS in /etc/default/docker, Debian's way). The kernel-only floor is the
//! same kernel with a tiny initramfs that powers off (median of three). Rows:
//!   (a) boot → the first mTLS /_ping answered on 2376 (first boot: Ferry formats its disk, the peer's
//!       systemd makes its machine id);
//!   (b) idle memory 20 s after that (MemTotal − MemAvailable, read over ssh);
//!   (c) image size: Ferry's ISO; the peer's disk as a compressed qcow2 (what cloud images ship);
//!   (d) `docker run --rm` of a tiny imported image, create → exit, through the docker CLI: median of 10;
//!   (e) ACPI power button (QMP system_powerdown) → QEMU exited;
//!   (f) Ferry only: `docker load` of a 500 MiB image through the front door and through dockerd's own
//!       TLS listener in the same VM (`ferry.bench=dockerd-tls`, engine/src/bench.rs), twice each.
//! The peer's root tree is cached in ~/.cache/ferry/peer (FERRY_REFRESH=1 builds it again).
//! Run: `./ferry build && cargo bench -p qemu-tests --bench versus` (about 20 minutes under TCG, half of
//! it row f; the first run adds the peer's mmdebstrap, about 2 minutes).
use ferry_builder::machine::Machine;
use ferry_builder::qemu::{self, DirectKernel, Drive};
use ferry_builder::{ping, util};
use qemu_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The peer's packages on top of mmdebstrap's minbase, the kernel package (Ferry's kernel version) added.
const PEER_PACKAGES: &[&str] =
    &["systemd-sysv", "udev", "dbus", "initramfs-tools", "docker.io", "openssh-server", "iproute2", "ca-certificates"];

/// Configuration a user of a stock VM would write: DHCP on the NIC with systemd-networkd, a login for
/// ssh, dockerd on 2376 with TLS through Debian's /etc/default/docker.
const PEER_CUSTOMIZE: &[&str] = &[
    "printf '[Match]\\nName=en* eth*\\n\\n[Network]\\nDHCP=yes\\n' > /etc/systemd/network/20-wired.network",
    "systemctl enable systemd-networkd",
    "echo peer > /etc/hostname",
    "printf '/dev/vda / ext4 rw,relatime 0 1\\n' > /etc/fstab",
    "useradd -m -g docker -s /bin/bash docker",
    "printf 'DOCKER_OPTS=\"-H tcp://0.0.0.0:2376 --tlsverify --tlscacert=/etc/docker/tls/ca.pem --tlscert=/etc/docker/tls/server.pem --tlskey=/etc/docker/tls/server-key.pem\"\\n' > /etc/default/docker",
];

const RUNS: usize = 10;
/// Row (f)'s image: one layer holding a file of this many MiB of incompressible bytes.
const LOAD_MIB: usize = 500;

struct Figures {
    boot: Duration,
    idle_mib: u64,
    image_mib: f64,
    run_median: Duration,
    stop: Duration,
    /// Row (f), Ferry only: `docker load` MB/s through the front door and through dockerd's own TLS.
    throughput: Option<(f64, f64)>,
}

fn main() {
    // Like the test suites: no guest traffic leaves this machine (SNTP off, QEMU's network restricted).
    isolate_guests();
    let out = out_dir();
    let vmlinuz = out.join("vmlinuz");
    let kver = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(out.join("manifest.json")).unwrap_or_default())
        .ok()
        .and_then(|m| m["kernel"].as_str().map(str::to_string));
    let Some(kver) = kver.filter(|_| vmlinuz.is_file()) else {
        eprintln!("versus: {} has no image (vmlinuz, manifest.json); run ./ferry build first", out.display());
        std::process::exit(1);
    };
    let home = std::env::temp_dir().join(format!("ferry-versus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::env::set_var("FERRY_HOME", &home);
    let _guard = KillGuard { home: home.clone() };
    println!("versus: Ferry and a stock Debian trixie VM, kernel {kver}, {} (one run)", qemu::accel());

    // The floor first, on a quiet host (building the peer writes half a gigabyte), median of three.
    let mut floors: Vec<Duration> = (0..3).map(|_| kernel_only_boot(&vmlinuz, &home).unwrap_or_else(|e| fail(&e))).collect();
    floors.sort();
    let floor = floors[1];
    println!("kernel-only floor: {:?} s", floors.iter().map(|d| format!("{:.1}", d.as_secs_f64())).collect::<Vec<_>>());
    let peer_tar = peer_root(&kver).unwrap_or_else(|e| fail(&format!("the peer's root: {e}")));
    let tar = busybox_rootfs_tar().unwrap_or_else(|e| fail(&e));
    // A peer built just now leaves half a gigabyte for the host to write back: not during Ferry's boot.
    let _ = std::process::Command::new("sync").status();

    let native_port = ferry_builder::machine::free_port().unwrap_or_else(|e| fail(&format!("a free port: {e}")));
    let ferry = measure("ferry", &tar, Some(native_port), |m| {
        // As `ferry up` makes it: a 20 GiB sparse format-me data disk, formatted on this first boot.
        m.create(Some(20 << 30)).map_err(|e| e.to_string())?;
        let mut l = m
            .launch(&out, &format!("console=ttyS0,115200 quiet panic=-1 ferry.hostname={} {}", m.name, ferry_engine::bench::OPTION))
            .map_err(|e| e.to_string())?;
        // Row (f): dockerd's own TLS listener, beside the front door (bench only).
        l.forwards.push((native_port, ferry_engine::bench::PORT));
        let iso = std::fs::metadata(out.join("ferry.iso")).map_err(|e| format!("ferry.iso: {e}"))?.len();
        Ok((l, iso as f64 / (1 << 20) as f64))
    })
    .unwrap_or_else(|e| fail(&format!("ferry: {e}")));
    let peer = measure("peer", &tar, None, |m| {
        m.create(None).map_err(|e| e.to_string())?;
        let (disk, initrd, qcow2) = peer_disk(m, &peer_tar, &kver)?;
        let mut l = m.launch(&out, "").map_err(|e| e.to_string())?;
        l.direct = Some(DirectKernel { kernel: vmlinuz.clone(), initrd, append: "root=/dev/vda rw console=ttyS0,115200 quiet".into() });
        l.disks = vec![Drive::new(disk, "raw")];
        l.fw_cfg_userdata = None;
        Ok((l, qcow2))
    })
    .unwrap_or_else(|e| fail(&format!("peer: {e}")));
    let _ = std::fs::remove_dir_all(&home);

    let s = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}", a / b) } else { "-".into() };
    let rows = [
        ("(a) boot → API answers", s(ferry.boot), s(peer.boot), ratio(ferry.boot.as_secs_f64(), peer.boot.as_secs_f64())),
        (
            "(b) idle memory",
            format!("{} MiB", ferry.idle_mib),
            format!("{} MiB", peer.idle_mib),
            ratio(ferry.idle_mib as f64, peer.idle_mib as f64),
        ),
        (
            "(c) image (ISO / qcow2)",
            format!("{:.0} MiB", ferry.image_mib),
            format!("{:.0} MiB", peer.image_mib),
            ratio(ferry.image_mib, peer.image_mib),
        ),
        (
            "(d) docker run --rm, median of 10",
            ms(ferry.run_median),
            ms(peer.run_median),
            ratio(ferry.run_median.as_secs_f64(), peer.run_median.as_secs_f64()),
        ),
        ("(e) power button → off", s(ferry.stop), s(peer.stop), ratio(ferry.stop.as_secs_f64(), peer.stop.as_secs_f64())),
    ];
    println!("\n| figure | Ferry | stock Debian VM | Ferry ÷ peer |\n|---|---|---|---|");
    for (name, f, p, r) in rows {
        println!("| {name} | {f} | {p} | {r} |");
    }
    println!(
        "| boot ÷ kernel-only floor ({}) | {} | {} | |",
        s(floor),
        ratio(ferry.boot.as_secs_f64(), floor.as_secs_f64()),
        ratio(peer.boot.as_secs_f64(), floor.as_secs_f64())
    );
    match ferry.throughput {
        Some((front, native)) => println!(
            "| (f) `docker load` of {LOAD_MIB} MiB: front door / dockerd's own TLS (same VM) | {front:.1} MB/s | {native:.1} MB/s (dockerd) | {} |",
            ratio(front, native)
        ),
        None => println!("| (f) front door ÷ dockerd's own TLS | not measured | | |"),
    }
}

/// Stop the run: exiting skips `main`'s KillGuard, so the machines it started (in its own FERRY_HOME,
/// never a user's) are stopped here; their folders stay for a look at the consoles.
fn fail(why: &str) -> ! {
    eprintln!("versus: {why}");
    let home = PathBuf::from(std::env::var_os("FERRY_HOME").unwrap_or_default());
    if home.file_name().is_some_and(|n| n.to_string_lossy().starts_with("ferry-versus-")) {
        drop(KillGuard { home });
    }
    std::process::exit(1)
}

/// Boot machine `name` as `prepare` sets it up (returning its launch and image size), then measure.
fn measure(
    name: &str,
    tar: &[u8],
    native: Option<u16>,
    prepare: impl FnOnce(&Machine) -> Result<(qemu::Launch, f64), String>,
) -> Result<Figures, String> {
    let m = Machine::named(name).map_err(|e| e.to_string())?;
    let (launch, image_mib) = prepare(&m)?;
    let p = m.ports().map_err(|e| e.to_string())?;
    let cfg = Arc::new(ping::client_config(&m.dir).map_err(|e| e.to_string())?);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], p.api));
    let t = Instant::now();
    launch.start().map_err(|e| e.to_string())?;
    while !ping::ping(addr, cfg.clone()) {
        if t.elapsed() > Duration::from_secs(600) {
            return Err(format!("no /_ping after 600 s; console: {}", ferry_builder::machine::console_tail(&m, 30)));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let boot = t.elapsed();
    println!("{name}: API answered after {:.1} s", boot.as_secs_f64());
    std::thread::sleep(Duration::from_secs(20));
    let idle_mib = used_mib(|| m.ssh_command().map_err(|e| e.to_string()))?;
    println!("{name}: {idle_mib} MiB in use 20 s later");

    let env = DockerEnv { host: format!("tcp://127.0.0.1:{}", p.api), cert_path: m.dir.display().to_string() };
    env.run(&["import", "-", "bb:bench"], Some(tar), 5 * MIN)?;
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        env.run(&["run", "--rm", "bb:bench", "busybox", "true"], None, 3 * MIN)?;
        runs.push(t.elapsed());
    }
    runs.sort();
    let run_median = runs[RUNS / 2];
    println!("{name}: docker run --rm: {:?}", runs.iter().map(|d| d.as_millis()).collect::<Vec<_>>());

    let throughput = match native {
        Some(port) => {
            let native = DockerEnv { host: format!("tcp://127.0.0.1:{port}"), cert_path: env.cert_path.clone() };
            Some(front_door_vs_native(&env, &native, &m.dir)?)
        }
        None => None,
    };

    let t = Instant::now();
    qemu::qmp(&m.path("qmp.sock"), "system_powerdown").map_err(|e| e.to_string())?;
    if !qemu::wait_exit(&m.path("qemu.pid"), Duration::from_secs(180)) {
        return Err("still running 180 s after the power button".into());
    }
    let stop = t.elapsed();
    Ok(Figures { boot, idle_mib, image_mib, run_median, stop, throughput })
}

/// The peer's root tree as a tar (mmdebstrap output), cached by kernel version and package list.
fn peer_root(kver: &str) -> Result<PathBuf, String> {
    let mut packages: Vec<String> = PEER_PACKAGES.iter().map(|s| s.to_string()).collect();
    packages.push(format!("linux-image-{kver}"));
    let key = ferry_builder::util::sha256_hex(format!("{packages:?}{PEER_CUSTOMIZE:?}").as_bytes());
    let dir = util::cache_dir().join("peer");
    let tar = dir.join(format!("trixie-{}.tar", &key[..16]));
    if tar.is_file() && std::env::var("FERRY_REFRESH").as_deref() != Ok("1") {
        return Ok(tar);
    }
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let debs = util::cache_dir().join("debs");
    std::fs::create_dir_all(&debs).map_err(|e| e.to_string())?;
    let partial = dir.join("partial.tar");
    let mut c = Command::new("mmdebstrap");
    c.args(["--variant=minbase", "--mode=root", "--components=main", "--aptopt=APT::Install-Recommends \"false\""])
        .arg(format!("--include={}", packages.join(",")))
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!("--setup-hook=sync-in {} /var/cache/apt/archives/", debs.display()))
        .arg(format!("--customize-hook=sync-out /var/cache/apt/archives {}", debs.display()));
    for cmd in PEER_CUSTOMIZE {
        c.arg(format!("--customize-hook=chroot \"$1\" sh -c '{}'", cmd.replace('\'', "'\\''")));
    }
    c.arg("trixie").arg(&partial);
    println!("versus: building the peer's root with mmdebstrap (trixie, {})", packages.join(" "));
    run(&mut c, None, 20 * MIN)?;
    std::fs::rename(&partial, &tar).map_err(|e| e.to_string())?;
    Ok(tar)
}

/// The peer's disk for this run: the cached tree, this machine's TLS material and ssh key, on a fresh
/// 4 GiB ext4 raw disk. Returns the disk, the peer's initramfs and its compressed size (MiB).
fn peer_disk(m: &Machine, tar: &Path, kver: &str) -> Result<(PathBuf, PathBuf, f64), String> {
    let root = m.path("root");
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    run(Command::new("tar").args(["-xpf"]).arg(tar).arg("--numeric-owner").arg("-C").arg(&root), None, 5 * MIN)?;
    let entries =
        ferry_contract::userdata::parse(&std::fs::read(m.path("userdata.tar")).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let body = |name: &str| {
        entries.iter().find(|e| e.path == name).and_then(|e| match &e.kind {
            ferry_contract::userdata::Kind::File(d) => Some(d.clone()),
            ferry_contract::userdata::Kind::Dir => None,
        })
    };
    let tls = root.join("etc/docker/tls");
    std::fs::create_dir_all(&tls).map_err(|e| e.to_string())?;
    for f in ["ca.pem", "server.pem", "server-key.pem"] {
        std::fs::write(tls.join(f), body(&format!("tls/{f}")).ok_or(format!("userdata.tar has no tls/{f}"))?).map_err(|e| e.to_string())?;
    }
    let ssh = root.join("home/docker/.ssh");
    std::fs::create_dir_all(&ssh).map_err(|e| e.to_string())?;
    std::fs::write(ssh.join("authorized_keys"), body(".ssh/authorized_keys").ok_or("userdata.tar has no ssh key")?)
        .map_err(|e| e.to_string())?;
    run(Command::new("chown").args(["-R", "--reference"]).arg(root.join("home/docker")).arg(&ssh), None, MIN)?;
    let initrd = m.path("peer-initrd.img");
    std::fs::copy(root.join(format!("boot/initrd.img-{kver}")), &initrd).map_err(|e| format!("the peer's initramfs: {e}"))?;
    let disk = m.path("peer.img");
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-L", "peer", "-d"]).arg(&root).arg(&disk).arg("4G"), None, 10 * MIN)?;
    let _ = std::fs::remove_dir_all(&root);
    let qcow2 = m.path("peer.qcow2");
    run(Command::new("qemu-img").args(["convert", "-c", "-O", "qcow2"]).arg(&disk).arg(&qcow2), None, 20 * MIN)?;
    let size = std::fs::metadata(&qcow2).map_err(|e| e.to_string())?.len() as f64 / (1 << 20) as f64;
    let _ = std::fs::remove_file(&qcow2);
    Ok((disk, initrd, size))
}

/// Row (f): an image of one LOAD_MIB MiB layer (imported, then saved to the host), loaded through the
/// front door and through dockerd's own TLS listener in turn, twice each; MB/s of the best of each.
fn front_door_vs_native(front: &DockerEnv, native: &DockerEnv, scratch: &Path) -> Result<(f64, f64), String> {
    native.run(&["version", "--format", "{{.Server.Version}}"], None, 2 * MIN).map_err(|e| format!("dockerd's own TLS listener: {e}"))?;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..LOAD_MIB << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let rootfs = ferry_contract::userdata::write(&[ferry_contract::userdata::file("blob", 0o644, noise)]);
    front.run(&["import", "-", "big:bench"], Some(&rootfs), 20 * MIN)?;
    drop(rootfs);
    let saved = scratch.join("big.tar");
    front.run(&["save", "-o", &saved.display().to_string(), "big:bench"], None, 20 * MIN)?;
    let bytes = std::fs::metadata(&saved).map_err(|e| e.to_string())?.len() as f64;
    let (mut best_front, mut best_native) = (0f64, 0f64);
    // Front door, native, native, front door: the loads speed up as the VM warms, so neither side gets
    // all the later turns.
    for round in 0..4 {
        let via_front = round == 0 || round == 3;
        let env = if via_front { front } else { native };
        front.run(&["rmi", "-f", "big:bench"], None, 5 * MIN)?;
        let t = Instant::now();
        env.run(&["load", "-q", "-i", &saved.display().to_string()], None, 20 * MIN)?;
        let mbs = bytes / 1e6 / t.elapsed().as_secs_f64();
        println!(
            "ferry: docker load {:.0} MB via {}: {mbs:.1} MB/s",
            bytes / 1e6,
            if via_front { "the front door" } else { "dockerd's own TLS" }
        );
        if via_front {
            best_front = best_front.max(mbs);
        } else {
            best_native = best_native.max(mbs);
        }
    }
    let _ = std::fs::remove_file(&saved);
    Ok((best_front, best_native))
}
