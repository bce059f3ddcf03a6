//! boot2docker compatibility, end to end under QEMU. Two boots of a disk made exactly as boot2docker's
//! automount made it (MBR, unlabelled swap as partition 2, ext4 `boot2docker-data` as partition 1), with
//! its boot hooks, registry CAs, a whole userdata.tar and a daemon.json asking for a TCP socket: the data
//! and swap are used, the hooks run (and a hanging or failing one does not stop the boot), a private
//! registry signed by the CA is trusted, every spelling of `-H` is refused, docker-machine's API 1.15
//! answers, the disk grows, and the generated client bundle is back after the reboot. Then one boot with
//! a second NIC on a bridge inside a network namespace this test creates, where Debian's dnsmasq hands
//! out 2-minute leases: renewal, a changed address (and the server certificate following it), MTU,
//! classless routes, the search list, the hostname, and the address dropped when the lease expires.
use ferry_builder::machine::Machine;
use ferry_builder::qemu::Drive;
use ferry_contract::userdata;
use qemu_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const APPEND: &str = "console=ttyS0,115200 quiet panic=-1";
const GIB: u64 = 1 << 30;
/// What boot2docker's hooks leave behind, read back over ssh.
const BOOTSYNC: &str = "echo hello from bootsync\n\
{ echo \"uid=$(id -u)\"; echo \"addresses=$(ip -4 -o addr show scope global | wc -l)\"; \
if [ -S /var/run/docker.sock ]; then echo engine-up; else echo engine-down; fi; } > /var/lib/boot2docker/bootsync.out\n";
const BOOTLOCAL: &str =
    "echo hello from bootlocal\ndocker version --format 'engine {{.Server.Version}}' > /var/lib/boot2docker/bootlocal.out 2>&1\n";

fn main() {
    isolate_guests();
    let cases = Cases::from_args("compat", &["boot2docker-disk", "dhcp-leases"]);
    let mut r = Report::default();
    println!("compat: boot2docker compatibility under QEMU ({}), ferry = {}", ferry_builder::qemu::accel(), ferry_bin().display());
    let home = std::env::temp_dir().join(format!("ferry-compat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let _ = std::fs::create_dir_all(&home);
    std::env::set_var("FERRY_HOME", &home);
    let _guard = KillGuard { home: home.clone() };

    cases.run("boot2docker-disk", || boot2docker_disk(&mut r, &home));
    cases.run("dhcp-leases", || dhcp_leases(&mut r, &home));
    let _ = std::fs::remove_dir_all(&home);
    cases.finish(r);
}

fn ssh(home: &Path, name: &str, cmd: &str) -> Result<String, String> {
    ferry(home, &["ssh", name, "--", cmd], 2 * MIN)
}

fn err(e: impl ToString) -> String {
    e.to_string()
}

/// A machine whose fw_cfg userdata carries only its SSH key, so the engine generates its own TLS
/// material (and the docker user's client bundle) as on a bare boot2docker disk.
fn keys_only_machine(name: &str) -> Result<(Machine, PathBuf), String> {
    let m = Machine::named(name).map_err(err)?;
    m.create(None).map_err(err)?;
    let key = std::fs::read(m.path("id_ed25519.pub")).map_err(err)?;
    let tar = m.path("keys-only.tar");
    std::fs::write(&tar, userdata::write(&[userdata::dir(".ssh", 0o700), userdata::file(".ssh/authorized_keys", 0o644, key)]))
        .map_err(err)?;
    Ok((m, tar))
}

fn launch(m: &Machine, userdata_tar: &Path, disks: Vec<Drive>, extra: &[String], restrict: bool) -> Result<(), String> {
    let mut l = m.launch(&out_dir(), &format!("{APPEND} ferry.hostname={}", m.name)).map_err(err)?;
    l.fw_cfg_userdata = Some(userdata_tar.to_path_buf());
    l.disks = disks;
    l.extra.extend(extra.iter().cloned());
    l.restrict = restrict;
    l.start().map_err(err)
}

/// The disk boot2docker's automount made of a "format-me" disk: fdisk's MBR with partition 2 (1000 MiB
/// swap, type 82) first and partition 1 (type 83) on the rest, mkswap without a label, then
/// `mkfs.ext4 -i 8192 -L boot2docker-data`. `root` becomes the filesystem's contents.
fn boot2docker_image(path: &Path, bytes: u64, root: &Path) -> Result<(), String> {
    let f = std::fs::File::create(path).map_err(err)?;
    f.set_len(bytes).map_err(err)?;
    let name = path.display().to_string();
    let script = format!("label: dos\n{name}2 : start=2048, size=1000MiB, type=82\n{name}1 : start=2050048, type=83\n");
    run(Command::new("sfdisk").args(["-q", &name]), Some(script.as_bytes()), MIN)?;
    // mkswap's header goes to the start of partition 2 (the rest of a fresh swap area is zeros).
    let swap = path.with_extension("swap");
    std::fs::File::create(&swap).and_then(|f| f.set_len(1000 << 20)).map_err(err)?;
    run(Command::new("mkswap").arg(&swap), None, MIN)?;
    let header = std::fs::read(&swap).map_err(err)?;
    let _ = std::fs::remove_file(&swap);
    write_at(path, 2048 * 512, &header[..4096])?;
    let off = 2_050_048u64 * 512;
    run(
        Command::new("mke2fs").args(["-q", "-F", "-t", "ext4", "-i", "8192", "-L", "boot2docker-data", "-d"]).arg(root).args([
            "-E",
            &format!("offset={off}"),
            &name,
            &format!("{}k", (bytes - off) / 1024),
        ]),
        None,
        MIN,
    )
    .map(|_| ())
}

/// A TLS server on the host's 127.0.0.1 (the guest reaches it at 10.0.2.2) standing in for a private
/// registry: it answers every request with 404 and closes, enough to tell in `docker pull`'s error whether
/// the TLS handshake was trusted. One thread, one connection at a time; it ends with the test.
struct TlsServer {
    port: u16,
}

impl TlsServer {
    fn start(dir: &Path, name: &str, b: &ferry_engine::certs::Bundle) -> Result<TlsServer, String> {
        use std::io::{Read, Write};
        let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
        std::fs::write(&cert, &b.server_cert).map_err(err)?;
        std::fs::write(&key, &b.server_key).map_err(err)?;
        let config = rustls::ServerConfig::builder_with_provider(ferry_engine::material::provider())
            .with_safe_default_protocol_versions()
            .map_err(err)?
            .with_no_client_auth()
            .with_single_cert(ferry_engine::material::certs_from(&cert).map_err(err)?, ferry_engine::material::key_from(&key).map_err(err)?)
            .map_err(err)?;
        let config = std::sync::Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(err)?;
        let port = listener.local_addr().map_err(err)?.port();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                let Ok(conn) = rustls::ServerConnection::new(config.clone()) else { continue };
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot here\r\n",
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        Ok(TlsServer { port })
    }
}

/// TCP ports something listens on in the VM.
fn listening(home: &Path, name: &str) -> Result<Vec<u16>, String> {
    let o = ssh(home, name, "sudo ss -Htln")?;
    let mut ports: Vec<u16> =
        o.lines().filter_map(|l| l.split_whitespace().nth(3)).filter_map(|a| a.rsplit(':').next()?.parse().ok()).collect();
    ports.sort();
    ports.dedup();
    Ok(ports)
}

fn only_22_and_2376(home: &Path, name: &str) -> Result<String, String> {
    let p = listening(home, name)?;
    if p.iter().all(|p| *p == 22 || *p == 2376) && p.contains(&2376) {
        Ok(String::new())
    } else {
        Err(format!("listening on TCP ports {p:?}"))
    }
}

fn boot2docker_disk(r: &mut Report, home: &Path) {
    let dir = home.join("b2d");
    let made = (|| -> Result<(Machine, PathBuf, PathBuf, TlsServer, TlsServer), String> {
        let (m, keys) = keys_only_machine("b2d")?;
        let now = ferry_builder::machine::time_now();
        let gw: std::net::IpAddr = "10.0.2.2".parse().map_err(err)?;
        let trusted = ferry_engine::certs::generate("registry", &[gw], now).map_err(err)?;
        let stranger = ferry_engine::certs::generate("registry", &[gw], now).map_err(err)?;
        let root = dir.join("root");
        let b2d = root.join("var/lib/boot2docker");
        for d in ["var/lib/docker", "var/lib/boot2docker/certs", "var/lib/boot2docker/etc/docker"] {
            std::fs::create_dir_all(root.join(d)).map_err(err)?;
        }
        let key = std::fs::read(m.path("id_ed25519.pub")).map_err(err)?;
        for (p, text) in [
            (root.join("var/lib/docker/b2d-marker"), "docker data from boot2docker\n".as_bytes()),
            (b2d.join("b2d-marker"), b"boot2docker state\n"),
            (b2d.join("bootsync.sh"), BOOTSYNC.as_bytes()),
            (b2d.join("bootlocal.sh"), BOOTLOCAL.as_bytes()),
            (b2d.join("certs/registry-ca.pem"), trusted.ca_cert.as_bytes()),
            (b2d.join("certs/junk.crt"), b"this is not a certificate\n"),
            (b2d.join("etc/docker/daemon.json"), br#"{"hosts": ["tcp://0.0.0.0:2375"], "labels": ["from=daemon-json"]}"#),
            (
                b2d.join("userdata.tar"),
                &userdata::write(&[
                    userdata::file(userdata::MAGIC, 0o644, userdata::MAGIC),
                    userdata::dir(".ssh", 0o700),
                    userdata::file(".ssh/authorized_keys", 0o644, key),
                    userdata::file(".ferry-dotfile", 0o640, "dotfile from userdata\n"),
                    userdata::dir(".docker", 0o700),
                    userdata::file(".docker/config.json", 0o600, r#"{"psFormat": "table {{.Names}}"}"#),
                ]),
            ),
        ] {
            std::fs::write(p, text).map_err(err)?;
        }
        let img = dir.join("b2d.img");
        boot2docker_image(&img, 3 * GIB, &root)?;
        let ok = TlsServer::start(&dir, "trusted", &trusted)?;
        let bad = TlsServer::start(&dir, "stranger", &stranger)?;
        Ok((m, keys, img, ok, bad))
    })();
    let (m, keys, img, trusted, stranger) = match made {
        Ok(x) => x,
        Err(e) => {
            r.check("a disk made as boot2docker made it (sfdisk, mkswap, mke2fs -i 8192 -L boot2docker-data)", Err(e));
            return;
        }
    };
    let drives = || vec![Drive::new(img.clone(), "raw")];
    // The guest must reach the registry stand-ins on the host's loopback (10.0.2.2); nothing else is used.
    if let Err(e) = launch(&m, &keys, drives(), &[], false).and_then(|_| wait_console(&m, "engine ready", 10 * MIN)) {
        r.check("boot with boot2docker's disk reaches engine ready", Err(e));
        println!("--- console ---\n{}\n---", console(&m));
        return;
    }

    r.check(
        "boot2docker's MBR disk: mounted as it is (never formatted), data under var/lib/docker and var/lib/boot2docker intact",
        (|| {
            let c = console(&m);
            text_has(&c, &["disk: /dev/vda1 is labelled boot2docker-data; mounting it", "data on /mnt/vda1"])?;
            if c.contains("disk: formatting") {
                return Err("it formatted the disk".into());
            }
            let o = ssh(home, "b2d", "sudo cat /var/lib/docker/b2d-marker /var/lib/boot2docker/b2d-marker")?;
            text_has(&o, &["docker data from boot2docker", "boot2docker state"])
        })(),
    );
    r.check(
        "boot2docker's unlabelled swap partition (type 82) is found by type and signature and used",
        console_has(&m, &["swap on /dev/vda2"]).and_then(|_| contains(ssh(home, "b2d", "cat /proc/swaps"), "/dev/vda2")),
    );
    r.check(
        "bootsync.sh: ran as root after the network and before the engine; output in log/bootsync.log",
        (|| {
            let c = console(&m);
            text_has(&c, &["hooks: bootsync.sh finished"])?;
            let (sync, services) = (c.find("hooks: bootsync.sh finished").unwrap_or(0), c.find("[services] done in").unwrap_or(0));
            if sync > services {
                return Err("bootsync.sh finished after the services phase".into());
            }
            let o = ssh(home, "b2d", "cat /var/lib/boot2docker/bootsync.out /var/lib/boot2docker/log/bootsync.log")?;
            text_has(&o, &["uid=0", "engine-down", "hello from bootsync"])?;
            if o.contains("addresses=0") {
                return Err(format!("no network address when bootsync.sh ran: {o}"));
            }
            Ok(String::new())
        })(),
    );
    r.check(
        "bootlocal.sh: ran in the background once the engine answered; output in log/bootlocal.log",
        retry(2 * MIN, || {
            let o = ssh(home, "b2d", "cat /var/lib/boot2docker/bootlocal.out /var/lib/boot2docker/log/bootlocal.log")?;
            text_has(&o, &["engine 26.", "hello from bootlocal"])
        }),
    );
    r.check(
        "registry CAs: certs/*.pem joins the trust store; a file that is not a certificate is named and skipped",
        console_has(
            &m,
            &[
                "registry CAs: /var/lib/boot2docker/certs/junk.crt: no PEM certificate in it; skipped",
                "registry CAs: 1 file(s) from /var/lib/boot2docker/certs added to /etc/ssl/certs/ca-certificates.crt",
            ],
        ),
    );
    r.check(
        "registry CAs: dockerd trusts a registry signed by the CA and still refuses one signed by another",
        (|| {
            let pull = |port: u16| ssh(home, "b2d", &format!("timeout 60 docker pull 10.0.2.2:{port}/ferry/probe:1 2>&1; true"));
            let good = pull(trusted.port)?;
            let bad = pull(stranger.port)?;
            if !bad.contains("certificate signed by unknown authority") {
                return Err(format!("the untrusted registry was not refused for its certificate: {bad}"));
            }
            if good.contains("x509") || good.contains("certificate") || !good.contains("not here") && !good.contains("404") {
                return Err(format!("the trusted registry failed on TLS: {good}"));
            }
            Ok(String::new())
        })(),
    );
    r.check(
        "userdata.tar: every entry lands in /home/docker, owned by docker:staff with its mode",
        (|| {
            let o = ssh(
                home,
                "b2d",
                "cd ~ && stat -c '%U:%G %a %n' .ferry-dotfile .docker/config.json && cat .ferry-dotfile .docker/config.json",
            )?;
            text_has(&o, &["docker:staff 640 .ferry-dotfile", "docker:staff 600 .docker/config.json", "dotfile from userdata", "psFormat"])
        })(),
    );
    let env = match guest_client(home, &m, &home.join("b2d-client")) {
        Ok(e) => e,
        Err(e) => {
            r.check("the generated client bundle in ~/.docker", Err(e));
            return;
        }
    };
    r.check(
        "daemon.json's \"hosts\" is named and dropped; its other settings apply; only 22 and 2376 listen",
        (|| {
            console_has(&m, &["/etc/docker/daemon.json: ignoring \"hosts\""])?;
            contains(env.run(&["info", "--format", "{{json .Labels}}"], None, 2 * MIN), "from=daemon-json")?;
            only_22_and_2376(home, "b2d")
        })(),
    );
    // Every spelling at once, each asking for its own port: whichever got through would listen there.
    let spellings = [
        "-Htcp://0.0.0.0:2375",
        "-H=tcp://0.0.0.0:2378",
        "--host=tcp://0.0.0.0:2379",
        "--host tcp://0.0.0.0:2380",
        "-DH tcp://0.0.0.0:2381",
        "--config-file /var/lib/boot2docker/other.json",
    ];
    r.check(
        &format!("EXTRA_ARGS='{}': no unauthenticated listener, the engine works", spellings.join(" ")),
        (|| {
            ssh(home, "b2d", r#"echo '{"hosts": ["tcp://0.0.0.0:2377"]}' | sudo tee /var/lib/boot2docker/other.json"#)?;
            ssh(home, "b2d", &format!("echo \"EXTRA_ARGS='{}'\" | sudo tee /var/lib/boot2docker/profile", spellings.join(" ")))?;
            contains(ssh(home, "b2d", "sudo /etc/init.d/docker restart"), "started")?;
            contains(retry(MIN, || env.run(&["version", "--format", "{{.Server.Version}}"], None, MIN)), "26.")?;
            console_has(
                &m,
                &[
                    "EXTRA_ARGS: ignoring -Htcp://0.0.0.0:2375",
                    "EXTRA_ARGS: ignoring -DH tcp://0.0.0.0:2381",
                    "other.json: ignoring \"hosts\"",
                ],
            )?;
            only_22_and_2376(home, "b2d")
        })(),
    );
    let _ = ssh(home, "b2d", "sudo rm -f /var/lib/boot2docker/profile && sudo /etc/init.d/docker restart");
    // engine/src/containerd.rs: settings that dockerd passes to the containerd it starts (here the log
    // level) make it start its own, as without Ferry; without them it gets Ferry's again.
    let containerd_parent = "sudo sh -c 'p=$(cat /var/run/docker/containerd/containerd.pid); \
         grep ^PPid /proc/$p/status | cut -f2; cat /var/run/docker.pid; echo; xargs -0 echo < /proc/$(cat /var/run/docker.pid)/cmdline'";
    r.check(
        "EXTRA_ARGS='--debug': dockerd starts its own containerd (debug logs included); without it, Ferry's again",
        (|| {
            ssh(home, "b2d", "echo \"EXTRA_ARGS='--debug'\" | sudo tee /var/lib/boot2docker/profile")?;
            contains(ssh(home, "b2d", "sudo /etc/init.d/docker restart"), "started")?;
            console_has(&m, &["containerd: dockerd starts its own (the profile's EXTRA_ARGS set --debug)"])?;
            let o = ssh(home, "b2d", containerd_parent)?;
            let l: Vec<&str> = o.lines().map(str::trim).collect();
            if l.len() < 3 || l[0] != l[1] || l[2].contains("--containerd") || !l[2].contains("--debug") {
                return Err(format!("containerd's parent, dockerd's pid and command line: {o}"));
            }
            ssh(home, "b2d", "sudo rm -f /var/lib/boot2docker/profile")?;
            contains(ssh(home, "b2d", "sudo /etc/init.d/docker restart"), "started")?;
            let o = ssh(home, "b2d", containerd_parent)?;
            let l: Vec<&str> = o.lines().map(str::trim).collect();
            if l.len() < 3 || l[0] == l[1] || !l[2].contains("--containerd /var/run/docker/containerd/containerd.sock") {
                return Err(format!("after the profile went: containerd's parent, dockerd's pid and command line: {o}"));
            }
            contains(retry(MIN, || env.run(&["version", "--format", "{{.Server.Version}}"], None, MIN)), "26.")
        })(),
    );
    r.check(
        "docker-machine ls's request: GET /v1.15/version over mTLS answers with the engine version",
        (|| {
            let c = Path::new(&env.cert_path);
            let o = run(
                Command::new("curl")
                    .args(["-sS", "--max-time", "30", "--cacert"])
                    .arg(c.join("ca.pem"))
                    .arg("--cert")
                    .arg(c.join("cert.pem"))
                    .arg("--key")
                    .arg(c.join("key.pem"))
                    .arg(format!("https://127.0.0.1:{}/v1.15/version", env.port())),
                None,
                MIN,
            )?;
            text_has(&o, &["\"Version\":\"26.", "\"ApiVersion\""])
        })(),
    );

    // Reboot: the disk grows by 1 GiB, bootsync.sh now hangs and bootlocal.sh fails.
    let cert_before = std::fs::read_to_string(Path::new(&env.cert_path).join("cert.pem")).unwrap_or_default();
    let df = || -> Result<u64, String> {
        let o = ssh(home, "b2d", "df -k /mnt/vda1 | tail -1")?;
        o.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(format!("df: {o}"))
    };
    let size_before = df().unwrap_or(0);
    let prepared = (|| {
        ssh(home, "b2d", "printf 'echo hanging on purpose\\nsleep 600\\n' | sudo tee /var/lib/boot2docker/bootsync.sh")?;
        ssh(home, "b2d", "printf 'echo failing on purpose\\nexit 3\\n' | sudo tee /var/lib/boot2docker/bootlocal.sh")?;
        ferry(home, &["stop", "b2d"], 3 * MIN)?;
        std::fs::OpenOptions::new().write(true).open(&img).and_then(|f| f.set_len(4 * GIB)).map_err(err)?;
        // A shorter wait than the default 60 s, set the way a user would (the kernel command line).
        std::env::set_var("FERRY_APPEND", "ntpserver= ferry.bootsync_limit=15");
        launch(&m, &keys, drives(), &[], true)?;
        wait_console(&m, "engine ready", 10 * MIN)
    })();
    if let Err(e) = prepared {
        r.check("second boot (disk grown, hooks hanging and failing) reaches engine ready", Err(e));
        println!("--- console ---\n{}\n---", console(&m));
        return;
    }
    r.check(
        "grown boot2docker disk: partition 1 reaches the new end (MBR), the filesystem follows, data intact",
        (|| {
            console_has(&m, &["disk: /dev/vda (boot2docker's MBR layout) grew to 4096 MiB; growing partition 1", "filesystem grown"])?;
            let after = df()?;
            if after < size_before + 900 * 1024 {
                return Err(format!("the filesystem has {after} KiB, it had {size_before} KiB"));
            }
            contains(ssh(home, "b2d", "sudo cat /var/lib/docker/b2d-marker"), "docker data from boot2docker")
        })(),
    );
    r.check(
        "a hanging bootsync.sh: the boot goes on after its time limit (ferry.bootsync_limit=15) and the console says so",
        console_has(&m, &["bootsync.sh still runs after 15s; the boot goes on", "engine ready"]),
    );
    r.check(
        "a failing bootlocal.sh is started, logged, and changes nothing",
        retry(2 * MIN, || {
            console_has(&m, &["hooks: /var/lib/boot2docker/bootlocal.sh started"])?;
            contains(ssh(home, "b2d", "cat /var/lib/boot2docker/log/bootlocal.log"), "failing on purpose")
        }),
    );
    r.check(
        "after the reboot: the generated client bundle is back in ~/.docker (the same certificate) and userdata again in the home",
        (|| {
            let cert = ssh(home, "b2d", "cat ~/.docker/cert.pem")?;
            if cert.trim() != cert_before.trim() || cert.is_empty() {
                return Err("~/.docker/cert.pem differs from the first boot's".into());
            }
            contains(ssh(home, "b2d", "cat ~/.ferry-dotfile"), "dotfile from userdata")?;
            contains(env.run(&["version", "--format", "{{.Server.Version}}"], None, 2 * MIN), "26.")
        })(),
    );
    let _ = ferry(home, &["stop", "b2d"], 3 * MIN);
    std::env::set_var("FERRY_APPEND", "ntpserver=");
}

/// A network namespace with a bridge, a tap for the VM and dnsmasq on the bridge; removed on drop.
struct Lab {
    ns: String,
    dnsmasq: Option<Child>,
    dir: PathBuf,
    host_ns: Option<std::fs::File>,
}

const LAB_MAC: &str = "52:54:00:77:00:01";

impl Lab {
    fn ip(&self, args: &str) -> Result<String, String> {
        run(Command::new("ip").arg("-n").arg(&self.ns).args(args.split_whitespace()), None, MIN)
    }

    fn hosts(&self, addr: &str) -> Result<(), String> {
        std::fs::write(self.dir.join("hosts"), format!("{LAB_MAC},{addr},2m\n")).map_err(err)
    }

    fn start(dir: &Path) -> Result<Lab, String> {
        let ns = format!("ferry-lab-{}", std::process::id());
        std::fs::create_dir_all(dir).map_err(err)?;
        run(Command::new("ip").args(["netns", "add", &ns]), None, MIN)?;
        let mut lab = Lab { ns, dnsmasq: None, dir: dir.to_path_buf(), host_ns: None };
        for c in [
            "link set lo up",
            "link add br0 type bridge",
            "addr add 192.168.77.1/24 dev br0",
            "link set br0 up",
            "tuntap add dev tap0 mode tap",
            "link set tap0 master br0",
            "link set tap0 up",
        ] {
            lab.ip(c)?;
        }
        lab.hosts("192.168.77.55")?;
        let d = |f: &str| dir.join(f).display().to_string();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns,
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--user=root",
                "--pid-file=",
            ])
            .args(["--interface=br0", "--bind-interfaces", "--dhcp-range=192.168.77.50,192.168.77.99,255.255.255.0,2m"])
            .arg(format!("--dhcp-hostsfile={}", d("hosts")))
            .arg(format!("--dhcp-leasefile={}", d("leases")))
            .arg(format!("--log-facility={}", d("dnsmasq.log")))
            .args([
                "--log-dhcp",
                "--dhcp-option=option:router,192.168.77.1",
                "--dhcp-option=option:mtu,1400",
                "--dhcp-option=option:classless-static-route,198.51.100.0/24,192.168.77.1",
                "--dhcp-option=option:domain-search,ferry.test,lab.ferry.test",
                "--dhcp-option=option:T1,20",
                "--dhcp-option=option:T2,40",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("dnsmasq: {e}"))?;
        lab.dnsmasq = Some(child);
        Ok(lab)
    }

    /// Move this (single-threaded) test process into the namespace, so QEMU, ssh and curl started from
    /// here live there: the VM's forwards listen on the namespace's loopback.
    fn enter(&mut self) -> Result<(), String> {
        self.host_ns = Some(std::fs::File::open("/proc/self/ns/net").map_err(err)?);
        let f = std::fs::File::open(format!("/run/netns/{}", self.ns)).map_err(err)?;
        setns(&f)
    }

    fn leave(&mut self) {
        if let Some(f) = self.host_ns.take() {
            let _ = setns(&f);
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
    }

    fn stop_server(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
            // `ip netns exec` forwards no signal: make sure the dnsmasq under it is gone too.
            let _ = run(Command::new("ip").args(["netns", "pids", &self.ns]), None, MIN).map(|pids| {
                for p in pids.split_whitespace() {
                    if std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "dnsmasq") {
                        let _ = run(Command::new("kill").args(["-9", p]), None, MIN);
                    }
                }
            });
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.leave();
        self.stop_server();
        let _ = run(Command::new("ip").args(["netns", "del", &self.ns]), None, MIN);
    }
}

fn setns(f: &std::fs::File) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    // SAFETY: setns(2) on an open namespace file; it changes only this thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn dhcp_leases(r: &mut Report, home: &Path) {
    let mut lab = match Lab::start(&home.join("lab")) {
        Ok(l) => l,
        Err(e) => {
            r.check("a bridge, a tap and dnsmasq in a network namespace of the test's own", Err(e));
            return;
        }
    };
    let started = (|| -> Result<Machine, String> {
        let (m, keys) = keys_only_machine("lab")?;
        lab.enter()?;
        let nic = [
            "-netdev".to_string(),
            "tap,id=lab,ifname=tap0,script=no,downscript=no".to_string(),
            "-device".to_string(),
            format!("virtio-net-pci,netdev=lab,mac={LAB_MAC}"),
        ];
        launch(&m, &keys, vec![], &nic, true)?;
        wait_console(&m, "engine ready", 10 * MIN)?;
        Ok(m)
    })();
    let m = match started {
        Ok(m) => m,
        Err(e) => {
            r.check("boot with a second NIC on the namespace's bridge reaches engine ready", Err(e));
            println!("--- dnsmasq ---\n{}\n---", lab.log());
            return;
        }
    };
    let guest = |cmd: &str| ssh(home, "lab", cmd);
    let nic = guest(&format!("ip -o link | grep -i {LAB_MAC} | cut -d: -f2")).map(|s| s.trim().to_string()).unwrap_or_default();
    r.check(
        "lease from dnsmasq: address, MTU (26), classless route (121), search list (119)",
        (|| {
            if nic.is_empty() {
                return Err("no NIC with the lab's MAC address".into());
            }
            let o = guest(&format!("ip -4 addr show dev {nic}; ip route; cat /sys/class/net/{nic}/mtu; cat /etc/resolv.conf"))?;
            text_has(&o, &["inet 192.168.77.55/24", "198.51.100.0/24 via 192.168.77.1", "1400", "search ferry.test lab.ferry.test"])
        })(),
    );
    r.check(
        "the hostname is sent (option 12): dnsmasq's lease names the machine",
        retry(MIN, || {
            let leases = std::fs::read_to_string(lab.dir.join("leases")).map_err(err)?;
            if leases.contains("192.168.77.55 lab ") {
                Ok(String::new())
            } else {
                Err(format!("leases: {leases}"))
            }
        }),
    );
    r.check(
        "renewal at T1 keeps the address: REQUEST/ACK with no new DISCOVER",
        (|| {
            wait_console(&m, "lease on 192.168.77.55 renewed", 2 * MIN)?;
            let log = lab.log();
            let (discovers, acks) = (log.matches("DHCPDISCOVER(br0)").count(), log.matches("DHCPACK(br0) 192.168.77.55").count());
            if discovers == 1 && acks >= 2 {
                Ok(String::new())
            } else {
                Err(format!("{discovers} DISCOVER(s), {acks} ACK(s) in dnsmasq's log"))
            }
        })(),
    );
    r.check(
        "the server's lease database changes: the renewal is refused (NAK), the new address is applied",
        (|| {
            lab.hosts("192.168.77.77")?;
            let pid = lab.dnsmasq.as_ref().map(|c| c.id()).ok_or("dnsmasq is not running")?;
            // SIGHUP to dnsmasq (a child of `ip netns exec`, which execs it: the same pid).
            run(Command::new("kill").args(["-HUP", &pid.to_string()]), None, MIN)?;
            wait_console(&m, "lease on 192.168.77.55 refused by the server (NAK)", 2 * MIN)?;
            wait_console(&m, &format!("network: {nic} 192.168.77.77/24"), MIN)?;
            let o = guest(&format!("ip -4 addr show dev {nic}; ip route"))?;
            if o.contains("192.168.77.55") {
                return Err(format!("the old address is still there: {o}"));
            }
            text_has(&o, &["inet 192.168.77.77/24", "198.51.100.0/24 via 192.168.77.1"])
        })(),
    );
    r.check(
        "the generated server certificate follows the new address",
        (|| {
            wait_console(&m, "192.168.77.77", MIN)?;
            let env = guest_client(home, &m, &home.join("lab-client"))?;
            served_san_has(&env, "IP Address:192.168.77.77")
        })(),
    );
    r.check(
        "no server any more: renewing and rebinding fail, and at expiry the address is removed",
        (|| {
            lab.stop_server();
            wait_console(&m, "lease on 192.168.77.77 expired with no answer from any server; address removed", 4 * MIN)?;
            let o = guest(&format!("ip -4 addr show dev {nic}"))?;
            if o.contains("192.168.77.") {
                return Err(format!("still configured: {o}"));
            }
            contains(guest("docker version --format '{{.Server.Version}}'"), "26.")
        })(),
    );
    let _ = ferry(home, &["stop", "lab"], 3 * MIN);
    lab.leave();
}
