//! Host integration, end to end under QEMU: the accelerator choice (KVM probe, fallback, cache), shared
//! folders (the home by default, `--share`, read-only, ownership, remembered across a restart), published
//! ports on the host's 127.0.0.1 (TCP and UDP, taken ports, removal, after a restart), and the clock (SNTP
//! from a server on the host's loopback, reached at 10.0.2.2; a 2-minute pause; an RTC years off and the
//! generated certificate's notBefore; an RTC two days ahead, which the boot does not wait on). Two boots
//! of one machine plus one boot each of two others.
use ferry_builder::machine::Machine;
use qemu_tests::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The uid the shares are tested with: the usual first user of a Linux host, as the VM's docker user.
const HOST_UID: u32 = 1000;

fn main() {
    isolate_guests();
    let cases = Cases::from_args("host", &["accel", "shares-ports-clock", "rtc", "rtc-ahead"]);
    let mut r = Report::default();
    println!("host: host integration under QEMU, ferry = {}", ferry_bin().display());
    let base = std::env::temp_dir().join(format!("ferry-host-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let fhome = base.join("ferry-home");
    let _guard = KillGuard { home: fhome.clone() };

    cases.run("accel", || accel_checks(&mut r, &base));

    let sntp = match SntpServer::start() {
        Ok(s) => Some(s),
        Err(e) => {
            r.check("an SNTP server on the host's 127.0.0.1:123", Err(e));
            None
        }
    };
    cases.run("shares-ports-clock", || shares_ports_clock(&mut r, &base, &fhome, sntp.as_ref()));
    cases.run("rtc", || rtc_boot(&mut r, &fhome));
    cases.run("rtc-ahead", || rtc_ahead_boot(&mut r, &fhome));
    drop(sntp);
    let _ = std::fs::remove_dir_all(&base);
    cases.finish(r);
}

/// Boot 1 and its restart: shares (the home and a read-only extra), published ports, SNTP at boot, the
/// clock after a pause, remembered shares.
fn shares_ports_clock(r: &mut Report, base: &Path, fhome: &Path, sntp: Option<&SntpServer>) {
    let user = match host_user() {
        Ok(u) => u,
        Err(e) => {
            r.check("a host user with uid 1000 for the shares", Err(e));
            std::mem::take(r).finish("host")
        }
    };
    // The user's home (shared by default) and a second folder shared read-only, both the host user's.
    let home = base.join("home").join(&user);
    let extra = base.join("extra");
    let setup = (|| -> Result<(), String> {
        std::fs::create_dir_all(home.join("project")).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&extra).map_err(|e| e.to_string())?;
        std::fs::write(home.join("project/hello.txt"), "hello from the host\n").map_err(|e| e.to_string())?;
        std::fs::write(extra.join("data.txt"), "read-only data\n").map_err(|e| e.to_string())?;
        run(Command::new("chown").args(["-R", &format!("{HOST_UID}:{HOST_UID}")]).arg(base.join("home")).arg(&extra), None, MIN)?;
        run(Command::new("chmod").args(["755"]).arg(base).arg(base.join("home")), None, MIN).map(|_| ())
    })();
    if let Err(e) = setup {
        r.check("test folders", Err(e));
        std::mem::take(r).finish("host")
    }

    // Refusals that need no boot.
    r.check("--share of a folder that does not exist: a clear error, nothing created", {
        let o = ferry_as(fhome, &home, &["up", "nosuch", "--share", "/nonexistent/dir"], MIN, &[]);
        match o {
            Ok(o) => Err(format!("succeeded: {o}")),
            Err(e) if e.contains("/nonexistent/dir") && e.contains("HOST_DIR") && !fhome.join("machines/nosuch").exists() => {
                Ok(String::new())
            }
            Err(e) => Err(e),
        }
    });
    r.check("--share onto a system directory of the VM is refused", {
        match ferry_as(fhome, &home, &["up", "nosuch", "--share", &format!("{}:/var/lib/docker", extra.display())], MIN, &[]) {
            Ok(o) => Err(format!("succeeded: {o}")),
            Err(e) if e.contains("/var belongs to the appliance") => Ok(String::new()),
            Err(e) => Err(e),
        }
    });

    // Boot 1: QEMU runs as the host user (as `ferry up` from a normal account would), SNTP at 10.0.2.2
    // with an unreachable server listed first.
    let qemu_args = run_as_args(&user);
    let vars: Vec<(&str, &str)> =
        vec![("FERRY_NET_RESTRICT", "0"), ("FERRY_APPEND", "ntpserver=10.0.2.2:124,10.0.2.2"), ("FERRY_QEMU_ARGS", &qemu_args)];
    let share_ro = format!("{}:/srv/extra:ro", extra.display());
    let up = ferry_as(fhome, &home, &["up", "hostm", "--share", &share_ro], 40 * MIN, &vars);
    let env = up.as_ref().ok().and_then(|o| DockerEnv::parse(o));
    if !r.check(
        "ferry up with the home shared and --share DIR:/srv/extra:ro",
        up.clone().and_then(|o| env.clone().map(|_| String::new()).ok_or(format!("no exports in: {o}"))),
    ) {
        println!("--- console ---\n{}\n---", std::fs::read_to_string(fhome.join("machines/hostm/console.log")).unwrap_or_default());
        std::mem::take(r).finish("host")
    }
    let env = env.unwrap_or_default();
    let m = machine(fhome, "hostm");
    let h = home.display().to_string();
    r.check(
        "console: both shares mounted before the engine starts",
        (|| {
            let c = console(&m);
            text_has(
                &c,
                &[
                    &format!("shares: {h} mounted (ferry0, read-write)"),
                    "shares: /srv/extra mounted (ferry1, read-only)",
                    "[shares] done in",
                ],
            )?;
            before(&c, "[shares] done in", "[services] done in")
        })(),
    );
    let tar = busybox_rootfs_tar();
    r.check(
        "docker import of a busybox tarball",
        tar.and_then(|t| env.run(&["import", "-", "bb:host"], Some(&t), 5 * MIN)).map(|_| String::new()),
    );

    // Shares.
    r.check(
        "docker run -v \"$PWD\":/src under the shared home reads the host's file",
        contains(
            env.run(&["run", "--rm", "-v", &format!("{h}/project:/src"), "bb:host", "busybox", "cat", "/src/hello.txt"], None, 3 * MIN),
            "hello from the host",
        ),
    );
    r.check(
        "a file a container writes as root is the host user's on the host",
        (|| {
            env.run(
                &[
                    "run",
                    "--rm",
                    "-v",
                    &format!("{h}/project:/src"),
                    "bb:host",
                    "busybox",
                    "sh",
                    "-c",
                    "echo made-in-container > /src/made.txt",
                ],
                None,
                3 * MIN,
            )?;
            let p = home.join("project/made.txt");
            let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            use std::os::unix::fs::MetadataExt;
            let uid = std::fs::metadata(&p).map_err(|e| e.to_string())?.uid();
            if text.trim() != "made-in-container" {
                return Err(format!("content {text:?}"));
            }
            if uid == HOST_UID {
                Ok(format!("uid {uid}"))
            } else {
                Err(format!("owned by uid {uid}, not {HOST_UID}"))
            }
        })(),
    );
    let ssh = |cmd: &str| ferry_as(fhome, &home, &["ssh", "hostm", "--", cmd], 2 * MIN, &[]);
    r.check(
        "the VM's docker user reads and writes the host's files",
        (|| {
            contains(
                ssh(&format!("id -u; echo written-by-docker >> {h}/project/hello.txt; cat {h}/project/hello.txt")),
                "written-by-docker",
            )?;
            let t = std::fs::read_to_string(home.join("project/hello.txt")).map_err(|e| e.to_string())?;
            if t.contains("written-by-docker") {
                Ok(String::new())
            } else {
                Err(format!("host sees {t:?}"))
            }
        })(),
    );
    r.check(
        "a host edit is seen in the VM at once",
        (|| {
            std::fs::write(home.join("project/live.txt"), "edited-on-host\n").map_err(|e| e.to_string())?;
            contains(ssh(&format!("cat {h}/project/live.txt")), "edited-on-host")
        })(),
    );
    r.check(
        "the read-only share reads, and refuses writes",
        (|| {
            contains(
                env.run(&["run", "--rm", "-v", "/srv/extra:/e", "bb:host", "busybox", "cat", "/e/data.txt"], None, 3 * MIN),
                "read-only data",
            )?;
            match env.run(&["run", "--rm", "-v", "/srv/extra:/e", "bb:host", "busybox", "touch", "/e/x"], None, 3 * MIN) {
                Ok(o) => Err(format!("write succeeded: {o}")),
                Err(e) if e.contains("Read-only file system") && !extra.join("x").exists() => Ok(String::new()),
                Err(e) => Err(e),
            }
        })(),
    );
    r.check(
        "VirtualBox's vboxguest and vboxsf are shipped; without VirtualBox nothing is said or mounted",
        (|| {
            let found = ssh("find /lib/modules -name 'vboxsf.ko*' -o -name 'vboxguest.ko*'")?;
            if found.lines().count() != 2 {
                return Err(format!("modules found: {found:?}"));
            }
            let loaded = ssh("cat /proc/modules")?;
            let c = console(&m);
            match (loaded.contains("vboxguest"), c.contains("VirtualBox"), ssh("ls -d /Users /hosthome 2>/dev/null || true")?.trim()) {
                (false, false, "") => Ok(String::new()),
                other => Err(format!("vboxguest loaded, VirtualBox on the console, dirs: {other:?}")),
            }
        })(),
    );
    r.check("share throughput: 2000 files untarred onto the share and read back", share_figure(&env, &h));

    // Published ports.
    let httpd = |name: &str, port: u16| {
        env.run(
            &[
                "run",
                "-d",
                "--name",
                name,
                "-p",
                &format!("{port}:80"),
                "bb:host",
                "busybox",
                "sh",
                "-c",
                &format!("mkdir -p /www && echo served-by-{name} > /www/index.html && exec busybox httpd -f -p 80 -h /www"),
            ],
            None,
            3 * MIN,
        )
    };
    r.check(
        "docker run -d -p 18080:80 answers on the host's 127.0.0.1:18080",
        (|| {
            httpd("web", 18080)?;
            let t = Instant::now();
            let body = retry(MIN, || http_get(18080))?;
            if body.contains("served-by-web") {
                Ok(format!("{:.1}s after docker run returned", t.elapsed().as_secs_f64()))
            } else {
                Err(body)
            }
        })(),
    );
    r.check(
        "the forward listens on 127.0.0.1 only",
        (|| {
            let ss = run(Command::new("ss").args(["-ltnH", "sport = :18080"]), None, MIN)?;
            if ss.contains("127.0.0.1:18080") && !ss.contains("0.0.0.0:18080") && !ss.contains("*:18080") {
                Ok(String::new())
            } else {
                Err(format!("ss: {ss}"))
            }
        })(),
    );
    r.check(
        "UDP: -p 15353:5353/udp, a datagram reaches the container and its echo comes back",
        (|| {
            let echo = udp_echo_image(base)?;
            env.run(&["import", "-", "udpecho:host"], Some(&echo), 5 * MIN)?;
            env.run(&["run", "-d", "--name", "udp", "-p", "15353:5353/udp", "udpecho:host", "/udpecho"], None, 3 * MIN)?;
            let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
            retry(MIN, || {
                s.send_to(b"udp-through-ferry", "127.0.0.1:15353").map_err(|e| e.to_string())?;
                let mut b = [0u8; 64];
                match s.recv(&mut b) {
                    Ok(n) if &b[..n] == b"udp-through-ferry" => Ok(String::new()),
                    Ok(n) => Err(format!("got {:?}", String::from_utf8_lossy(&b[..n]))),
                    Err(e) => Err(format!("no echo: {e}")),
                }
            })
        })(),
    );
    r.check(
        "a host port already taken is skipped and named in ferry logs",
        (|| {
            let hold = TcpListener::bind("127.0.0.1:18081").map_err(|e| format!("bind 18081 for the test: {e}"))?;
            httpd("web2", 18081)?;
            let r = retry(MIN, || {
                contains(ferry_as(fhome, &home, &["logs", "hostm"], MIN, &[]), "port 18081/tcp: 127.0.0.1:18081 is taken on the host")
            });
            drop(hold);
            r
        })(),
    );
    r.check(
        "docker rm -f closes the host port",
        (|| {
            env.run(&["rm", "-f", "web", "web2", "udp"], None, 2 * MIN)?;
            let t = Instant::now();
            retry(MIN, || match TcpStream::connect_timeout(&"127.0.0.1:18080".parse().map_err(|_| "addr")?, Duration::from_secs(2)) {
                Ok(_) => Err("127.0.0.1:18080 still accepts".to_string()),
                Err(_) => Ok(format!("{:.1}s", t.elapsed().as_secs_f64())),
            })
        })(),
    );

    // The clock.
    r.check(
        "boot: SNTP at 10.0.2.2 asked at boot; the unreachable server is named",
        (|| {
            let c = console(&m);
            text_has(&c, &["clock: SNTP servers 10.0.2.2:124 10.0.2.2 (from ntpserver=", "clock: SNTP 10.0.2.2 (boot)", "10.0.2.2:124"])?;
            before(&c, "[time] done in", "[services] done in")
        })(),
    );
    r.check(
        "the VM's clock agrees with the host's within 1 s",
        clock_offset(fhome, &home, "hostm").and_then(|o| {
            if o.abs() < 1.0 {
                Ok(format!("offset {o:+.3}s"))
            } else {
                Err(format!("offset {o:+.3}s"))
            }
        }),
    );
    r.check("after a 2-minute pause (QMP stop/cont) the clock is back within 1 s within 60 s", pause_check(&m, fhome, &home));
    if let Some(s) = &sntp {
        println!("note: the host's SNTP server answered {} request(s)", s.answered());
    }

    // Restart: the shares are remembered, a missing one is skipped with a clear line, ports still work.
    let gone = base.join("gone");
    r.check("ferry stop", ferry_as(fhome, &home, &["stop", "hostm"], 3 * MIN, &[]).map(|_| String::new()));
    let remembered = (|| -> Result<String, String> {
        std::fs::create_dir_all(&gone).map_err(|e| e.to_string())?;
        let mut list: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(m.path("shares.json")).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        list.as_array_mut()
            .ok_or("shares.json is not a list")?
            .push(serde_json::json!({"host": gone.display().to_string(), "guest": "/srv/gone", "read_only": false}));
        std::fs::write(m.path("shares.json"), list.to_string()).map_err(|e| e.to_string())?;
        std::fs::remove_dir(&gone).map_err(|e| e.to_string())?;
        ferry_as(fhome, &home, &["up", "hostm"], 20 * MIN, &vars)
    })();
    r.check("ferry up again: a remembered share whose folder is gone is named and skipped", contains(remembered.clone(), "/srv/gone"));
    r.check(
        "... and the other shares are remembered",
        remembered.and_then(|_| text_has(&console(&m), &[&format!("shares: {h} mounted"), "shares: /srv/extra mounted"])),
    );
    r.check(
        "after the restart, a port published by docker run answers on the host",
        (|| {
            httpd("again", 18082)?;
            contains(retry(MIN, || http_get(18082)), "served-by-again")
        })(),
    );
    let _ = ferry_as(fhome, &home, &["stop", "hostm"], 3 * MIN, &[]);
}

/// `ferry ARGS` with FERRY_HOME, HOME (the shared home) and the download cache where it always is.
fn ferry_as(fhome: &Path, home: &Path, args: &[&str], timeout: Duration, vars: &[(&str, &str)]) -> Result<String, String> {
    let mut c = Command::new(ferry_bin());
    c.args(args).env("FERRY_HOME", fhome).env("HOME", home);
    let cache = std::env::var_os("FERRY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/ferry"));
    c.env("FERRY_CACHE", cache);
    for (k, v) in vars {
        c.env(k, v);
    }
    run(&mut c, None, timeout)
}

fn machine(fhome: &Path, name: &str) -> Machine {
    std::env::set_var("FERRY_HOME", fhome);
    Machine::named(name).expect("valid machine name")
}

/// Ok when `a` appears in `text` before `b`.
fn before(text: &str, a: &str, b: &str) -> Result<String, String> {
    match (text.find(a), text.find(b)) {
        (Some(x), Some(y)) if x < y => Ok(String::new()),
        (x, y) => Err(format!("{a:?} at {x:?}, {b:?} at {y:?}")),
    }
}

fn http_get(port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))
        .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    use std::io::Read;
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if out.is_empty() {
        Err(format!("127.0.0.1:{port}: empty answer"))
    } else {
        Ok(out)
    }
}

/// A container image holding one static UDP echo server on port 5353, compiled here with the host's C
/// compiler (the host's busybox has no UDP server applet).
fn udp_echo_image(base: &Path) -> Result<Vec<u8>, String> {
    let src = base.join("udpecho.c");
    let bin = base.join("udpecho");
    std::fs::write(
        &src,
        "#include <netinet/in.h>\n#include <sys/socket.h>\n\
         int main(void) {\n  int s = socket(AF_INET, SOCK_DGRAM, 0);\n  struct sockaddr_in a = {0};\n  a.sin_family = AF_INET;\n  a.sin_port = htons(5353);\n\
           if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0) return 1;\n  for (;;) {\n    char b[1500];\n    struct sockaddr_in p;\n    socklen_t l = sizeof p;\n\
             int n = recvfrom(s, b, sizeof b, 0, (struct sockaddr *)&p, &l);\n    if (n > 0) sendto(s, b, n, 0, (struct sockaddr *)&p, l);\n  }\n}\n",
    )
    .map_err(|e| e.to_string())?;
    run(Command::new("cc").args(["-static", "-O2", "-o"]).arg(&bin).arg(&src), None, 2 * MIN)
        .map_err(|e| format!("{e} (./ferry installs gcc and libc6-dev)"))?;
    let data = std::fs::read(&bin).map_err(|e| e.to_string())?;
    Ok(ferry_contract::userdata::write(&[ferry_contract::userdata::file("udpecho", 0o755, data)]))
}

/// The host user with uid 1000 (created when the host has none): the owner of the shared folders and
/// of QEMU's process, as when an ordinary account runs `ferry up`.
fn host_user() -> Result<String, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
    if let Some(name) = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.get(2) == Some(&"1000")).then(|| f[0].to_string())
    }) {
        return Ok(name);
    }
    run(Command::new("useradd").args(["-u", "1000", "-U", "-M", "-s", "/usr/sbin/nologin", "ferryhost"]), None, MIN)?;
    Ok("ferryhost".into())
}

/// QEMU's option that drops to `user` once its files are open: `-run-with user=` where this QEMU
/// knows it (9.0 and later; QEMU 10 removed `-runas`), else `-runas`.
fn run_as_args(user: &str) -> String {
    let help = Command::new("qemu-system-x86_64").arg("-help").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if help.is_ok_and(|h| h.lines().any(|l| l.starts_with("-run-with") && l.contains("user="))) {
        format!("-run-with user={user}")
    } else {
        format!("-runas {user}")
    }
}

/// Guest clock minus host clock, in seconds: the guest prints its time right after reading a line the
/// host sends on an open ssh session, so the session's setup does not count (error: one way's latency).
fn clock_offset(fhome: &Path, home: &Path, name: &str) -> Result<f64, String> {
    let mut c = Command::new(ferry_bin());
    c.args(["ssh", name, "--", "echo ready; read x; date +%s.%N"]).env("FERRY_HOME", fhome).env("HOME", home);
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = c.spawn().map_err(|e| e.to_string())?;
    let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    out.read_line(&mut line).map_err(|e| e.to_string())?;
    if line.trim() != "ready" {
        let _ = child.kill();
        return Err(format!("ssh said {line:?}"));
    }
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let sent = now();
    stdin.write_all(b"go\n").map_err(|e| e.to_string())?;
    line.clear();
    out.read_line(&mut line).map_err(|e| e.to_string())?;
    let _ = child.wait();
    let guest: f64 = line.trim().parse().map_err(|_| format!("guest date {line:?}"))?;
    Ok(guest - sent)
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn pause_check(m: &Machine, fhome: &Path, home: &Path) -> Result<String, String> {
    let sock = m.path("qmp.sock");
    ferry_builder::qemu::qmp(&sock, "stop").map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(120));
    ferry_builder::qemu::qmp(&sock, "cont").map_err(|e| e.to_string())?;
    let resumed = Instant::now();
    let mut last = String::new();
    while resumed.elapsed() < MIN {
        match clock_offset(fhome, home, &m.name) {
            Ok(o) if o.abs() < 1.0 => return Ok(format!("offset {o:+.3}s, {:.0}s after resuming", resumed.elapsed().as_secs_f64())),
            Ok(o) => last = format!("offset {o:+.3}s"),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    Err(format!("still {last} 60 s after resuming"))
}

/// Untar 2000 small files onto the share and read them back, then the same on the VM's own disk; the
/// figures go in the check's line (docs/figures.md has the full benchmark).
fn share_figure(env: &DockerEnv, h: &str) -> Result<String, String> {
    // Times from /proc/uptime in centiseconds (busybox's date has no %N).
    let script = "cs() { read a b < /proc/uptime; echo ${a%.*}${a#*.}; }; cd /tmp && rm -rf t && mkdir t && i=0; while [ $i -lt 2000 ]; do echo file-$i > t/f$i; i=$((i+1)); done; busybox tar cf /tmp/t.tar t && rm -rf t && cd /work && \
                  s=$(cs); busybox tar xf /tmp/t.tar; m=$(cs); busybox cat t/* | busybox wc -l; e=$(cs); \
                  echo write_ms=$(( (m-s)*10 )) read_ms=$(( (e-m)*10 )); rm -rf t";
    let on_share =
        env.run(&["run", "--rm", "-v", &format!("{h}/project:/work"), "bb:host", "busybox", "sh", "-c", script], None, 10 * MIN)?;
    let on_disk = env.run(&["run", "--rm", "bb:host", "busybox", "sh", "-c", &format!("mkdir -p /work && {script}")], None, 10 * MIN)?;
    if !on_share.contains("2000") || !on_disk.contains("2000") {
        return Err(format!("share: {on_share}; disk: {on_disk}"));
    }
    let fig = |s: &str| s.lines().find(|l| l.starts_with("write_ms")).unwrap_or("").to_string();
    Ok(format!("share {}, VM disk {}", fig(&on_share), fig(&on_disk)))
}

/// The accelerator: KVM only when a probe VM boots under it; the verdict is said and cached.
fn accel_checks(r: &mut Report, base: &Path) {
    let cache = base.join("accel-cache");
    let accel = |vars: &[(&str, &str)]| {
        let mut c = Command::new(ferry_bin());
        c.arg("accel").env("FERRY_CACHE", &cache).env_remove("FERRY_ACCEL");
        for (k, v) in vars {
            c.env(k, v);
        }
        run(&mut c, None, 2 * MIN)
    };
    let t = Instant::now();
    let first = accel(&[]);
    let took = t.elapsed();
    let first_said = first.clone().unwrap_or_default();
    r.check(
        "ferry accel: decided by a probe VM and said, with the reason",
        (|| {
            let o = first?;
            let kvm = Path::new("/dev/kvm").exists();
            let said = o.lines().find(|l| l.starts_with("ferry: acceleration")).unwrap_or("").to_string();
            if !kvm && said.contains("no /dev/kvm") {
                return Ok(said);
            }
            if kvm
                && (said.contains("probe VM booted under KVM") || said.contains("probe VM failed") || said.contains("did not power off"))
                && took < Duration::from_secs(60)
            {
                return Ok(format!("{said}; {:.1}s", took.as_secs_f64()));
            }
            Err(format!("{o} ({:.1}s)", took.as_secs_f64()))
        })(),
    );
    r.check("ferry accel: the verdict is cached for this host", {
        let timed_out = first_said.contains("probing again in an hour");
        match accel(&[]) {
            Ok(o) if o.contains("cached in") => {
                Ok(if timed_out { "the first probe timed out: kept for an hour".into() } else { String::new() })
            }
            Ok(o) => Err(format!("first said {first_said:?}, second {o:?}")),
            Err(e) => Err(e),
        }
    });
    r.check("FERRY_ACCEL=tcg forces the choice", contains(accel(&[("FERRY_ACCEL", "tcg")]), "acceleration tcg (FERRY_ACCEL=tcg)"));
}

/// Boot 3: a machine whose RTC is years behind (`-rtc base=2020-06-01`), provisioned with an SSH key only,
/// so the engine generates its certificates: SNTP must set the clock first. It has three NICs: two with
/// DHCP, as docker-machine's VirtualBox driver makes them (NAT, then a host-only network), and a third
/// with a fixed address from `ip=`; a malformed `ip=` is named and ignored. IPv6 comes from the user
/// network's router advertisements. The fixed NIC's network is `restrict=on` (it needs nothing from QEMU);
/// the second DHCP one cannot be (libslirp's restricted DHCP answers carry no router and no DNS server),
/// which is why boot waits for eth0's lease before SNTP: its default route must not go out through eth1.
fn rtc_boot(r: &mut Report, fhome: &Path) {
    std::env::set_var("FERRY_HOME", fhome);
    std::env::set_var("FERRY_NET_RESTRICT", "0");
    std::env::set_var("FERRY_APPEND", "ntpserver=10.0.2.2 ip=10.0.9.50::10.0.9.2:255.255.255.0::eth2:off ip=300.1.1.1::::::off");
    std::env::set_var(
        "FERRY_QEMU_ARGS",
        "-rtc base=2020-06-01T00:00:00 -netdev user,id=n1,net=192.168.56.0/24 -device virtio-net-pci,netdev=n1 -netdev user,id=n2,net=10.0.9.0/24,restrict=on -device virtio-net-pci,netdev=n2",
    );
    let Some(m) = boot_for_clock(r, "oldrtc", "RTC years off") else { return };
    r.check(
        "RTC years off: SNTP steps the clock at boot, before the certificates are made",
        (|| {
            let c = console(&m);
            // On failure, say what the boot did instead: its clock and network lines.
            let context = || -> String {
                c.lines().filter(|l| l.contains("clock") || l.contains("network") || l.contains("lease")).collect::<Vec<_>>().join(" | ")
            };
            text_has(&c, &["clock: SNTP 10.0.2.2 (boot)", "stepped", "generated a CA"])
                .map_err(|e| format!("{e}; the boot said: {}", context()))?;
            before(&c, "clock: SNTP 10.0.2.2 (boot)", "generated a CA")
        })(),
    );
    r.check("... and the generated server certificate's notBefore is the host's time (less the hour of slack)", not_before_is_now(&m));
    let ssh = |cmd: &str| ferry(fhome, &["ssh", "oldrtc", "--", cmd], 2 * MIN);
    r.check(
        "three NICs: two DHCP leases and the fixed ip= address",
        retry(MIN, || {
            let a = ssh("ip -4 -o addr show")?;
            text_has(&a, &["10.0.2.15/24", "192.168.56.15/24", "10.0.9.50/24"]).map_err(|e| format!("{e} in {a}"))
        }),
    );
    r.check(
        "exactly one default route, through the first NIC with a gateway",
        (|| {
            let routes = ssh("ip -4 route show default")?;
            let lines: Vec<&str> = routes.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.len() == 1 && lines[0].contains("via 10.0.2.2 dev eth0") {
                Ok(lines[0].trim().to_string())
            } else {
                Err(format!("routes: {routes:?}"))
            }
        })(),
    );
    r.check(
        "resolv.conf holds both leases' DNS servers",
        (|| {
            let rc = ssh("cat /etc/resolv.conf")?;
            if rc.contains("nameserver 10.0.2.3") && rc.contains("nameserver 192.168.56.3") {
                Ok(String::new())
            } else {
                Err(rc)
            }
        })(),
    );
    r.check(
        "a malformed ip= is named on the console and the boot goes on",
        console_has(&m, &["ignoring ip=\"300.1.1.1::::::off\"", "network: eth2 10.0.9.50/24 gateway 10.0.9.2 (fixed, from ip=)"]),
    );
    r.check(
        "every address is in the generated server certificate",
        retry(MIN, || {
            let p = m.ports().map_err(|e| e.to_string())?;
            let script =
                format!("openssl s_client -connect 127.0.0.1:{} </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName", p.api);
            let san = run(Command::new("sh").args(["-c", &script]), None, MIN)?;
            text_has(&san, &["IP Address:10.0.2.15", "IP Address:192.168.56.15", "IP Address:10.0.9.50", "IP Address:FEC0:"])
                .map_err(|e| format!("{e} in {}", san.trim()))
        }),
    );
    r.check("IPv6: docker over mTLS to the VM's SLAAC address, from inside the VM", retry(MIN, || {
        // QEMU's user network advertises fec0::/64, which Linux files as "scope site"; a real network's
            // prefix is "scope global". Either will do; link-local (fe80::) will not.
            let a = ssh("ip -6 -o addr show dev eth0")?;
            let addr = a
                .lines()
                .filter(|l| !l.contains("scope link"))
                .find_map(|l| l.split_whitespace().skip_while(|w| *w != "inet6").nth(1))
                .and_then(|c| c.split('/').next())
                .ok_or(format!("no IPv6 address beyond link-local: {a:?}"))?
                .to_string();
        let o = ssh(&format!("DOCKER_HOST='tcp://[{addr}]:2376' DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=$HOME/.docker docker version --format '{{{{.Server.Version}}}}'"))?;
        if o.trim().starts_with("26.") { Ok(format!("[{addr}]:2376")) } else { Err(o) }
    }));
    r.check("the front door listens on IPv6 and IPv4", console_has(&m, &["front door listening on :2376, IPv6 and IPv4"]));
    let _ = ferry(fhome, &["stop", "oldrtc"], 3 * MIN);
}

/// Boot machine `name` with only an SSH key in its userdata (so the engine generates its certificates),
/// under the FERRY_* settings the caller set for this boot, which are cleared afterwards; wait for the
/// engine. A failure is one check named after `label`, and None.
fn boot_for_clock(r: &mut Report, name: &str, label: &str) -> Option<Machine> {
    use ferry_contract::userdata;
    let started = (|| -> Result<Machine, String> {
        let m = Machine::named(name).map_err(|e| e.to_string())?;
        m.create(None).map_err(|e| e.to_string())?;
        let key = std::fs::read(m.path("id_ed25519.pub")).map_err(|e| e.to_string())?;
        std::fs::write(m.path("userdata.tar"), userdata::write(&[userdata::file(".ssh/authorized_keys", 0o644, key)]))
            .map_err(|e| e.to_string())?;
        m.launch(&out_dir(), &format!("console=ttyS0,115200 quiet panic=-1 ferry.hostname={name}"))
            .map_err(|e| e.to_string())?
            .start()
            .map_err(|e| e.to_string())?;
        Ok(m)
    })();
    for k in ["FERRY_NET_RESTRICT", "FERRY_APPEND", "FERRY_QEMU_ARGS"] {
        std::env::remove_var(k);
    }
    isolate_guests();
    let m = match started {
        Ok(m) => m,
        Err(e) => {
            r.check(&format!("{label}: QEMU starts"), Err(e));
            return None;
        }
    };
    if let Err(e) = wait_console(&m, "engine ready", 10 * MIN) {
        r.check(&format!("{label}: the engine comes up"), Err(e));
        kill_qemu(&m.path("qemu.pid"));
        return None;
    }
    Some(m)
}

/// The server certificate on the machine's forwarded 2376 was dated by the host's clock: notBefore is now
/// less the engine's hour of slack.
fn not_before_is_now(m: &Machine) -> Result<String, String> {
    let p = m.ports().map_err(|e| e.to_string())?;
    let script = format!("openssl s_client -connect 127.0.0.1:{} </dev/null 2>/dev/null | openssl x509 -noout -startdate", p.api);
    let o = run(Command::new("sh").args(["-c", &script]), None, MIN)?;
    let date = o.trim().strip_prefix("notBefore=").ok_or(format!("openssl said {o:?}"))?.to_string();
    let secs: f64 =
        run(Command::new("date").args(["-u", "-d", &date, "+%s"]), None, MIN)?.trim().parse().map_err(|_| format!("date {date:?}"))?;
    let off = secs + 3600.0 - now();
    if off.abs() < 600.0 {
        Ok(format!("notBefore {date} ({off:+.0}s from the host's time less 1 h)"))
    } else {
        Err(format!("notBefore {date}: {off:+.0}s from the host's time less 1 h"))
    }
}

/// Boot 4: an RTC two days ahead (a bare-metal RTC kept in local time, or set by hand). It is after the
/// build, so the boot does not wait for SNTP; a slow SNTP server (its first answer comes after the guest's
/// 2 s retry) steps the clock back in the background, and the engine manager waits for PID 1's word that
/// the clock was checked before it makes the certificates, so they are dated by the right clock.
fn rtc_ahead_boot(r: &mut Report, fhome: &Path) {
    let sntp = match SntpServer::on(125, true) {
        Ok(s) => s,
        Err(e) => {
            r.check("a slow SNTP server on the host's 127.0.0.1:125", Err(e));
            return;
        }
    };
    let ahead = format!("@{}", now() as i64 + 2 * 86400);
    let base = match run(Command::new("date").args(["-u", "-d", &ahead, "+%Y-%m-%dT%H:%M:%S"]), None, MIN) {
        Ok(b) => b.trim().to_string(),
        Err(e) => {
            r.check("RTC ahead: the host's date two days on", Err(e));
            return;
        }
    };
    std::env::set_var("FERRY_HOME", fhome);
    std::env::set_var("FERRY_NET_RESTRICT", "0");
    std::env::set_var("FERRY_APPEND", "ntpserver=10.0.2.2:125");
    std::env::set_var("FERRY_QEMU_ARGS", format!("-rtc base={base}"));
    let Some(m) = boot_for_clock(r, "aheadrtc", "RTC ahead") else { return };
    r.check(
        "RTC two days ahead: the boot goes on while SNTP steps the clock back, before the certificates are made",
        (|| {
            let c = console(&m);
            text_has(
                &c,
                &[
                    "clock: the RTC's time is after the build; SNTP checks it in the background",
                    "clock: SNTP 10.0.2.2:125 (boot): offset -17",
                    "stepped",
                    "generated a CA",
                ],
            )?;
            before(&c, "clock: SNTP 10.0.2.2:125 (boot)", "generated a CA")?;
            // Whether the engine had to wait depends on who got there first; say which.
            Ok(c.lines()
                .find(|l| l.contains("for the boot's clock check"))
                .unwrap_or("the clock check was over before the engine asked")
                .to_string())
        })(),
    );
    r.check("... and the generated server certificate's notBefore is the host's time (less the hour of slack)", not_before_is_now(&m));
    r.check(
        "... and the docker CLI in the VM trusts it over mTLS (a certificate dated ahead would not be valid yet)",
        ferry(fhome, &["ssh", "aheadrtc", "--", "DOCKER_HOST=tcp://127.0.0.1:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=$HOME/.docker docker version --format '{{.Server.Version}}'"], 2 * MIN)
            .and_then(|o| if o.trim().starts_with("26.") { Ok(o.trim().to_string()) } else { Err(o) }),
    );
    println!("note: the slow SNTP server answered {} request(s)", sntp.answered());
    let _ = ferry(fhome, &["stop", "aheadrtc"], 3 * MIN);
}

/// An SNTP server on the host's 127.0.0.1:`port` (the guest's 10.0.2.2:`port` under QEMU's user
/// network), answering with the host's clock; with `slow`, it ignores every other request, so the
/// guest's first try times out (2 s) and its next one is answered.
struct SntpServer {
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SntpServer {
    fn start() -> Result<SntpServer, String> {
        Self::on(123, false)
    }

    fn on(port: u16, slow: bool) -> Result<SntpServer, String> {
        let s = UdpSocket::bind(("127.0.0.1", port))
            .map_err(|e| format!("bind 127.0.0.1:{port} (is an NTP server running on this host?): {e}"))?;
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = count.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let mut seen = 0u64;
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                if n < 48 {
                    continue;
                }
                seen += 1;
                if slow && seen % 2 == 1 {
                    continue;
                }
                let recv = ntp(now());
                let mut p = [0u8; 48];
                p[0] = (4 << 3) | 4;
                p[1] = 1;
                p[12..16].copy_from_slice(b"LOCL");
                p[16..24].copy_from_slice(&recv);
                p[24..32].copy_from_slice(&buf[40..48]);
                p[32..40].copy_from_slice(&recv);
                p[40..48].copy_from_slice(&ntp(now()));
                let _ = s.send_to(&p, from);
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        Ok(SntpServer { count })
    }

    fn answered(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn ntp(unix: f64) -> [u8; 8] {
    let t = unix + 2_208_988_800.0;
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&(t as u64 as u32).to_be_bytes());
    b[4..].copy_from_slice(&(((t - t.floor()) * 4_294_967_296.0) as u32).to_be_bytes());
    b
}
