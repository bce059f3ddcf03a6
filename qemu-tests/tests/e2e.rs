//! End-to-end: boot Ferry under QEMU (TCG) with `ferry up`, then use it as a user would — the real
//! docker CLI over mTLS, ssh as docker, curl for refusals — and power it off with `ferry stop`.
//! A second boot feeds bad TLS material through fw_cfg. One boot carries many checks (CI time).
use qemu_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    isolate_guests();
    let cases = Cases::from_args("e2e", &["normal-boot", "bad-tls", "garbage-userdata"]);
    let mut r = Report::default();
    println!("e2e: Ferry under QEMU ({}), ferry = {}", ferry_builder::qemu::accel(), ferry_bin().display());
    if !ferry_bin().is_file() {
        r.check("ferry binary present", Err(format!("{} missing: run ./ferry test (it builds first)", ferry_bin().display())));
        r.finish("e2e");
    }
    let home = std::env::temp_dir().join(format!("ferry-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let _guard = KillGuard { home: home.clone() };

    cases.run("normal-boot", || normal_boot(&mut r, &home));
    cases.run("bad-tls", || bad_tls_boot(&mut r, &home));
    cases.run("garbage-userdata", || garbage_userdata_boot(&mut r, &home));
    let _ = std::fs::remove_dir_all(&home);
    cases.finish(r);
}

/// Boot 1, the normal path: `ferry up`, the docker CLI through the front door, refusals there, the
/// guest over ssh, the engine's status during a restart, and an ACPI shutdown during one.
fn normal_boot(r: &mut Report, home: &Path) {
    // Boot 1: the normal path.
    let up = ferry(home, &["up", "e2e"], 40 * MIN);
    let env = up.as_ref().ok().and_then(|o| DockerEnv::parse(o));
    if !r.check(
        "ferry up boots and prints DOCKER_* exports",
        up.clone().and_then(|o| env.clone().map(|_| String::new()).ok_or(format!("no exports in: {o}"))),
    ) {
        let console = std::fs::read_to_string(home.join("machines/e2e/console.log")).unwrap_or_default();
        println!("--- console ---\n{console}\n---");
        std::mem::take(r).finish("e2e");
    }
    let env = env.unwrap_or_default();
    let console = |name: &str| std::fs::read_to_string(home.join("machines").join(name).join("console.log")).unwrap_or_default();

    r.check("kernel config meets kernel-config/requirements.txt", {
        let cfg = std::fs::read_to_string(out_dir().join("kernel.config")).unwrap_or_default();
        let req = std::fs::read_to_string(repo().join("kernel-config/requirements.txt")).unwrap_or_default();
        let problems = ferry_builder::kconfig::check(&cfg, &req);
        if cfg.is_empty() {
            Err("out/kernel.config missing".into())
        } else if problems.is_empty() {
            Ok(format!("{} options", ferry_builder::util::data_lines(&req).len()))
        } else {
            Err(format!("{problems:?}"))
        }
    });
    // The engine logs "engine ready" from its own poll, which may trail the host's first answered ping.
    r.check(
        "console: one line per boot phase with its duration",
        retry(Duration::from_secs(30), || {
            let c = console("e2e");
            let missing: Vec<&str> = [
                "[early-modules] done in",
                "[root] done in",
                "[mounts] done in",
                "[modules] done in",
                "[clock] done in",
                "[network] done in",
                "[time] done in",
                "[disk] done in",
                "[userdata] done in",
                "[shares] done in",
                "[services] done in",
                "engine ready",
            ]
            .into_iter()
            .filter(|p| !c.contains(p))
            .collect();
            if missing.is_empty() {
                Ok(String::new())
            } else {
                Err(format!("missing {missing:?}"))
            }
        }),
    );
    r.check(
        "docker version over mTLS (server is dockerd 26.x)",
        contains(env.run(&["version", "--format", "{{.Server.Version}}"], None, 2 * MIN), "26."),
    );
    let info = env.run(&["info", "--format", "{{.CgroupVersion}}|{{.Driver}}|{{.DockerRootDir}}|{{.Name}}"], None, 2 * MIN);
    r.check("docker info: cgroup v2, overlay2, /var/lib/docker, hostname", contains(info, "2|overlay2|/var/lib/docker|e2e"));

    let tar = busybox_rootfs_tar();
    r.check(
        "docker import of a busybox tarball",
        tar.clone().and_then(|t| env.run(&["import", "-", "ferry-busybox:test"], Some(&t), 5 * MIN)).map(|_| String::new()),
    );
    r.check(
        "docker run --rm prints output",
        contains(env.run(&["run", "--rm", "ferry-busybox:test", "busybox", "echo", "hello-from-ferry"], None, 3 * MIN), "hello-from-ferry"),
    );
    r.check("echo hi | docker run -i --rm IMG cat (half-close reaches dockerd)", {
        let o = env.run(&["run", "-i", "--rm", "ferry-busybox:test", "busybox", "cat"], Some(b"hi\n"), 3 * MIN);
        o.and_then(|s| if s.trim() == "hi" { Ok(String::new()) } else { Err(format!("got {s:?}")) })
    });
    r.check("container clock agrees with the host (within 10 min)", {
        env.run(&["run", "--rm", "ferry-busybox:test", "busybox", "date", "+%s"], None, 3 * MIN).and_then(|s| {
            let vm: i64 = s.trim().parse().map_err(|_| format!("odd date {s:?}"))?;
            let host = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
            if (vm - host).abs() < 600 {
                Ok(format!("skew {}s", vm - host))
            } else {
                Err(format!("VM {vm}, host {host}"))
            }
        })
    });
    r.check(
        "bridge networking: one container serves HTTP, another fetches it",
        (|| {
            let _ = env.run(&["rm", "-f", "web"], None, MIN);
            env.run(&["network", "create", "ferrynet"], None, MIN)?;
            env.run(
                &[
                    "run",
                    "-d",
                    "--name",
                    "web",
                    "--network",
                    "ferrynet",
                    "ferry-busybox:test",
                    "busybox",
                    "sh",
                    "-c",
                    "mkdir -p /www && echo served-by-web > /www/index.html && exec busybox httpd -f -p 80 -h /www",
                ],
                None,
                2 * MIN,
            )?;
            retry(MIN, || {
                contains(
                    env.run(
                        &["run", "--rm", "--network", "ferrynet", "ferry-busybox:test", "busybox", "wget", "-qO-", "http://web/"],
                        None,
                        2 * MIN,
                    ),
                    "served-by-web",
                )
            })
        })(),
    );
    r.check("docker exec -it attaches a TTY through the front door", {
        let cmd = format!(
            "DOCKER_HOST={} DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={} docker exec -it web busybox sh -c 'echo in-tty; busybox tty'",
            env.host, env.cert_path
        );
        let o = run(Command::new("script").args(["-qec", &cmd, "/dev/null"]), None, 2 * MIN);
        o.and_then(|s| if s.contains("in-tty") && s.contains("/dev/pts/") { Ok(String::new()) } else { Err(format!("got {s:?}")) })
    });

    // Refusals at the front door (curl as an independent TLS client).
    let url = format!("https://127.0.0.1:{}/_ping", env.port());
    let cp = |f: &str| format!("{}/{f}", env.cert_path);
    // curl as the machine's own client (its CA, certificate and key), the rest of the request added.
    let curl_as_client = |max_time: &str| {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", max_time, "--cacert", &cp("ca.pem"), "--cert", &cp("cert.pem"), "--key", &cp("key.pem")]);
        c
    };
    r.check("control: curl with the client certificate gets OK", contains(run(curl_as_client("20").arg(&url), None, MIN), "OK"));
    r.check("a BuildKit build through the front door (POST /build?version=2): RUN and COPY, then the image runs", {
        // The host's docker CLI has no buildx plugin (Debian packages none), so the build is posted
        // the way the API defines it: the context as a tar body, BuildKit chosen by version=2. The
        // classic builder never sends BuildKit's trace messages; their presence proves which one ran.
        use ferry_contract::userdata::{file, write};
        let dockerfile = b"FROM ferry-busybox:test\n\
            RUN [\"busybox\", \"sh\", \"-c\", \"echo run-by-buildkit > /run.txt\"]\n\
            COPY hello.txt /hello.txt\n";
        let context = write(&[file("Dockerfile", 0o644, dockerfile), file("hello.txt", 0o644, b"copied-by-buildkit\n")]);
        let build_url = format!("https://127.0.0.1:{}/build?version=2&t=ferry-buildkit:test&rm=1", env.port());
        run(
            curl_as_client("600").args(["-H", "Content-Type: application/x-tar", "--data-binary", "@-", &build_url]),
            Some(&context),
            11 * MIN,
        )
        .and_then(|stream| {
            if stream.contains("errorDetail") || !stream.contains("moby.buildkit.trace") {
                return Err(format!("build stream: {}", stream.chars().take(2000).collect::<String>()));
            }
            let out = env.run(&["run", "--rm", "ferry-buildkit:test", "busybox", "cat", "/run.txt", "/hello.txt"], None, 3 * MIN)?;
            if out.contains("run-by-buildkit") && out.contains("copied-by-buildkit") {
                Ok(String::new())
            } else {
                Err(format!("the built image holds {out:?}"))
            }
        })
    });
    r.check(
        "a client without a certificate is refused",
        match run(Command::new("curl").args(["-sS", "--max-time", "20", "--cacert", &cp("ca.pem"), &url]), None, MIN) {
            Ok(o) if o.contains("OK") => Err(format!("answered: {o}")),
            _ => Ok(String::new()),
        },
    );
    r.check(
        "a client certificate from another CA is refused",
        (|| {
            let dir = home.join("other-ca");
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let b = ferry_engine::certs::generate("localhost", &[], time::OffsetDateTime::now_utc()).map_err(|e| e.to_string())?;
            std::fs::write(dir.join("cert.pem"), &b.client_cert).map_err(|e| e.to_string())?;
            std::fs::write(dir.join("key.pem"), &b.client_key).map_err(|e| e.to_string())?;
            let d = |f: &str| dir.join(f).display().to_string();
            match run(
                Command::new("curl").args([
                    "-sS",
                    "--max-time",
                    "20",
                    "--cacert",
                    &cp("ca.pem"),
                    "--cert",
                    &d("cert.pem"),
                    "--key",
                    &d("key.pem"),
                    &url,
                ]),
                None,
                MIN,
            ) {
                Ok(o) if o.contains("OK") => Err(format!("answered: {o}")),
                _ => Ok(String::new()),
            }
        })(),
    );

    // Inside, over ssh with the machine's key.
    let ssh = |cmd: &str| ferry(home, &["ssh", "e2e", "--", cmd], 2 * MIN);
    r.check(
        "ssh docker@ with the machine key; /etc/os-release says ID=boot2docker",
        contains(ssh("cat /etc/os-release"), "ID=boot2docker"),
    );
    r.check("DHCP configured eth0", contains(ssh("ip -4 addr show eth0"), "10.0.2.15"));
    r.check(
        "modules coldplugged (virtio_net, qemu_fw_cfg) and modprobe applet works",
        (|| {
            ssh("sudo /sbin/modprobe dummy")?;
            let m = ssh("cat /proc/modules")?;
            let missing: Vec<&str> =
                ["virtio_net", "qemu_fw_cfg", "overlay", "dummy", "bridge"].into_iter().filter(|x| !m.contains(x)).collect();
            if missing.is_empty() {
                Ok(String::new())
            } else {
                Err(format!("not loaded: {missing:?}"))
            }
        })(),
    );
    // init/src/coldplug.rs: the CPU's alias (checksum and cipher acceleration, kvm) is served after the
    // services start, off the boot's path, once the engine answered (init/src/later.rs).
    r.check(
        "the CPU's modules (aesni_intel, crc32_pclmul) load after the engine answered, not during coldplug",
        (|| {
            let loaded = retry(2 * MIN, || {
                let c = console("e2e");
                c.lines()
                    .find(|l| l.contains("for the CPU's features loaded after the services"))
                    .map(str::to_string)
                    .filter(|_| c.contains("[services] done"))
                    .ok_or_else(|| "no \"for the CPU's features loaded after the services\" line yet".to_string())
            })?;
            let c = console("e2e");
            let (Some(ready), Some(cpu)) = (c.find("engine ready: dockerd answered"), c.find(&loaded)) else { return Err(loaded) };
            let coldplug = c.lines().find(|l| l.contains("loaded by coldplug")).unwrap_or("");
            let m = ssh("cat /proc/modules")?;
            if cpu < ready
                || !loaded.contains("once the engine answered")
                || !coldplug.contains("the CPU's modules load after the services")
                || !["aesni_intel", "crc32_pclmul"].iter().all(|x| m.contains(x))
            {
                return Err(format!("{coldplug} | {loaded} | aesni_intel loaded: {}", m.contains("aesni_intel")));
            }
            Ok(loaded.trim().to_string())
        })(),
    );
    r.check(
        "no zombie processes (PID 1 reaps)",
        ssh("grep -l '^State:.*Z' /proc/[0-9]*/status || true").and_then(|o| if o.trim().is_empty() { Ok(String::new()) } else { Err(o) }),
    );
    r.check("root is an overlay (pivot_root-capable, not the initramfs)", contains(ssh("grep ' / ' /proc/mounts"), "overlay"));
    r.check(
        "the root's layers stay visible: the image at /run/ferry/image (squashfs), the RAM layer at /run/ferry/rw",
        contains(
            ssh("grep ' /run/ferry/' /proc/mounts | cut -d' ' -f2,3 | sort | tr '\\n' ' '; test -x /run/ferry/image/usr/sbin/dockerd && echo dockerd-in-image"),
            "/run/ferry/image squashfs /run/ferry/rw tmpfs dockerd-in-image",
        ),
    );
    // init/src/rootcopy.rs: once the services run, the root image's loop device moves from the initramfs
    // copy (RAM) to a verified copy on the data disk; init/src/tuning.rs lowers min_free_kbytes.
    r.check(
        "the root image runs from a verified copy on the data disk; its RAM copy is freed; min_free_kbytes is the kernel's non-THP value",
        (|| {
            retry(5 * MIN, || {
                if console("e2e").contains("[root] image moved off RAM") {
                    Ok(())
                } else {
                    Err(format!(
                        "no \"[root] image moved off RAM\" line: {}",
                        console("e2e").lines().filter(|l| l.contains("[root]")).collect::<Vec<_>>().join(" | ")
                    ))
                }
            })?;
            // It waits for the engine's first answer (init/src/later.rs), so it does not slow dockerd's start.
            let c = console("e2e");
            let moved = c.lines().find(|l| l.contains("[root] image moved off RAM")).unwrap_or("");
            let ordered = matches!((c.find("engine ready: dockerd answered"), c.find(moved)), (Some(r), Some(m)) if r < m);
            if !ordered || !moved.contains("once the engine answered") {
                return Err(format!("the copy did not wait for the engine: {moved}"));
            }
            let o = ssh(concat!(
                "d=$(grep ' /run/ferry/image ' /proc/mounts | cut -d' ' -f1); d=${d#/dev/}; ",
                "cat /sys/block/$d/loop/backing_file; echo $(( $(cat /sys/block/$d/size) * 512 )); ",
                "sudo stat -c '%s %a %U' /var/lib/ferry/rootfs.squashfs; grep Shmem: /proc/meminfo; ",
                "cat /proc/sys/vm/min_free_kbytes"
            ))?;
            let l: Vec<&str> = o.lines().map(str::trim).collect();
            let [backing, loop_bytes, stat, shmem, min_free] = l[..] else { return Err(format!("unexpected: {o}")) };
            let shmem_kib: u64 = shmem.split_whitespace().nth(1).and_then(|v| v.parse().ok()).ok_or(format!("Shmem: {shmem}"))?;
            let min_free: u64 = min_free.parse().map_err(|_| format!("min_free_kbytes {min_free}"))?;
            if backing != "/var/lib/ferry/rootfs.squashfs"
                || stat != format!("{loop_bytes} 400 root")
                || shmem_kib > 32 * 1024
                || min_free > 16 * 1024
            {
                return Err(format!("got {o:?}"));
            }
            Ok(format!("Shmem {} MiB, min_free_kbytes {min_free}", shmem_kib / 1024))
        })(),
    );
    // rootfs/trim.txt drops containerd's legacy shims: what runs the containers is the runc v2 shim.
    r.check(
        "the running container's shim is containerd-shim-runc-v2; containerd's legacy shims are not in the image",
        ssh("sudo sh -c 'readlink /proc/[0-9]*/exe' | grep shim | sort -u; for f in containerd-shim containerd-shim-runc-v1; do test -e /usr/bin/$f && echo present:$f; done; true")
            .and_then(|o| {
                if o.trim() == "/usr/bin/containerd-shim-runc-v2" {
                    Ok(String::new())
                } else {
                    Err(format!("got {o:?}"))
                }
            }),
    );
    // init/src/containerd.rs starts containerd right after the disk; engine/src/containerd.rs hands it to
    // dockerd and starts it again when it is gone (dockerd given --containerd never starts one itself).
    r.check(
        "containerd starts with the disk (PID 1's child, before the network) and dockerd gets it; killed, it is started again",
        (|| {
            let c = console("e2e");
            match (c.find("containerd: started (pid"), c.find("[containerd] done"), c.find("[network] done")) {
                (Some(a), Some(b), Some(n)) if a < b && b < n => {}
                _ => {
                    return Err(format!(
                        "console: {}",
                        c.lines().filter(|l| l.contains("containerd") || l.contains("[network]")).collect::<Vec<_>>().join(" | ")
                    ))
                }
            }
            let facts = "sudo sh -c 'p=$(cat /var/run/docker/containerd/containerd.pid); \
                 echo $p $(grep ^PPid /proc/$p/status | cut -f2); xargs -0 echo < /proc/$(cat /var/run/docker.pid)/cmdline'";
            let o = ssh(facts)?;
            let mut words = o.split_whitespace();
            let (Some(old), Some("1")) = (words.next(), words.next()) else { return Err(format!("containerd pid, parent: {o}")) };
            if !o.contains("--containerd /var/run/docker/containerd/containerd.sock") {
                return Err(format!("dockerd's command line: {o}"));
            }
            ssh(&format!("sudo kill -9 {old}"))?;
            let again = retry(2 * MIN, || {
                env.run(&["run", "--rm", "ferry-busybox:test", "busybox", "true"], None, MIN)?;
                let o = ssh(facts)?;
                let now = o.split_whitespace().next().unwrap_or("").to_string();
                if now == old || !console("e2e").contains("containerd was gone; started again") {
                    return Err(format!("after the kill: {o}"));
                }
                Ok(now)
            })?;
            Ok(format!("containerd {old} killed; {again} runs the containers"))
        })(),
    );
    // rootfs/trim.txt drops systemd's programs and private libraries, dpkg's state and localedef: gone,
    // and the programs that link systemd's or other trimmed neighbours' libraries still find them all
    // (ld.so lists each one's; the guest tools are the ones that pull systemd in).
    r.check(
        "systemd's programs and private libraries, dpkg's state and localedef are not in the image; the programs left find their libraries",
        ssh(concat!(
            "for f in /usr/bin/systemctl /usr/lib/systemd/systemd /usr/lib/systemd/systemd-networkd /usr/lib/x86_64-linux-gnu/systemd ",
            "/var/lib/dpkg/info /usr/bin/localedef; do test -e $f && echo present:$f; done; n=0; ",
            "for f in /usr/bin/vmtoolsd /usr/sbin/hv_kvp_daemon /usr/sbin/hv_vss_daemon /usr/sbin/sshd /usr/lib/openssh/sshd-session ",
            "/usr/bin/sudo /usr/sbin/xtables-nft-multi /usr/sbin/ip /usr/sbin/mke2fs /usr/bin/ssh /usr/bin/bash /usr/bin/openssl; do ",
            "n=$((n+1)); o=$(/lib64/ld-linux-x86-64.so.2 --list $f 2>&1) || echo failed:$f; ",
            "echo \"$o\" | grep -q 'not found' && echo missing-library:$f; done; echo checked=$n"
        ))
        .and_then(|o| {
            if o.contains("checked=12") && !o.contains("present:") && !o.contains("missing-library:") && !o.contains("failed:") {
                Ok(String::new())
            } else {
                Err(o)
            }
        }),
    );
    // rootfs/iptables-static.sh: dockerd's iptables is the legacy backend, one static program, and
    // holds dockerd's rules (the nft tables stay empty).
    r.check(
        "iptables is the static legacy program and holds dockerd's NAT rules",
        (|| {
            // Its ELF headers (the first 4 KiB, as hex): no program interpreter.
            let hex = ssh("od -An -v -tx1 -N4096 /usr/sbin/xtables-legacy-multi")?;
            let head: Vec<u8> = hex.split_whitespace().filter_map(|b| u8::from_str_radix(b, 16).ok()).collect();
            if ferry_builder::elf::has_interpreter(&head) != Some(false) {
                return Err(format!("/usr/sbin/xtables-legacy-multi is not a static ELF program ({} bytes read)", head.len()));
            }
            let o = ssh(concat!(
                "sudo iptables -V; sudo ip6tables -V; sudo iptables -t nat -S POSTROUTING; ",
                "echo nft-rules=$(sudo iptables-nft -t nat -S 2>/dev/null | grep -c DOCKER)"
            ))?;
            let ok = o.contains("iptables v1.8")
                && o.contains("ip6tables v1.8")
                && !o.contains("nf_tables")
                && o.matches("(legacy)").count() == 2
                && o.contains("-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE")
                && o.contains("nft-rules=0");
            if ok {
                Ok(String::new())
            } else {
                Err(o)
            }
        })(),
    );
    r.check(
        "/etc/init.d/docker status|stop|start control dockerd through the manager",
        (|| {
            contains(ssh("sudo /etc/init.d/docker status"), "running")?;
            contains(ssh("sudo /etc/init.d/docker stop"), "stopped")?;
            if env.run(&["version", "--format", "{{.Server.Version}}"], None, MIN).is_ok() {
                return Err("dockerd still answers after stop".into());
            }
            match ssh("sudo /etc/init.d/docker status") {
                Err(e) if e.contains("not running") => {}
                other => return Err(format!("status after stop: {other:?}")),
            }
            contains(ssh("sudo /etc/init.d/docker start"), "started")?;
            // (restart is the next check's, timed.)
            contains(env.run(&["version", "--format", "{{.Server.Version}}"], None, MIN), "26.")
        })(),
    );

    r.check("status answers within 1 s, and says so, while a restart stops and starts dockerd", {
        // Every status call is timed in the guest (as root, no sudo per call), less what starting
        // ferry-engine takes just before it (it prints its usage): under TCG, with dockerd starting on the
        // same two vCPUs, an exec alone can take most of a second. What is left is the manager's answer.
        // The loop ends when dockerd runs again.
        let script = "cat > /tmp/status-loop.sh <<'END'
/etc/init.d/docker restart >/tmp/restart.log 2>&1 &
max=0; seen=''
for i in $(seq 1 150); do
  z=$(date +%s%N); /usr/local/bin/ferry-engine >/dev/null 2>&1; a=$(date +%s%N)
  s=$(/usr/local/bin/ferry-engine ctl status 2>&1); b=$(date +%s%N)
  ms=$(( (b - a - (a - z)) / 1000000 )); [ $ms -gt $max ] && max=$ms; seen=\"$seen|$s\"
  case \"$s\" in *'is running'*) break;; esac; sleep 0.1
done
wait; echo max=$max; echo \"$seen\" | tr '|' '\\n' | sort -u; cat /tmp/restart.log
END
sudo sh /tmp/status-loop.sh";
        ssh(script).and_then(|o| {
            let max: u64 = o.lines().find_map(|l| l.strip_prefix("max=")).and_then(|v| v.trim().parse().ok()).unwrap_or(u64::MAX);
            let during = o.contains("docker is starting") || o.contains("docker is stopping");
            if max < 1000 && during && o.contains("docker started") {
                Ok(format!("slowest status {max} ms"))
            } else {
                Err(o)
            }
        })
    });

    // Shutdown: ACPI power-down through QMP while the engine restarts, with a container that reports its
    // SIGTERM on the serial console (and comes back with dockerd, so the shutdown must stop it too).
    r.check(
        "a container is running before shutdown",
        env.run(
            &[
                "run",
                "-d",
                "--name",
                "trapper",
                "--restart",
                "always",
                "--device",
                "/dev/ttyS0",
                "ferry-busybox:test",
                "busybox",
                "sh",
                "-c",
                "trap 'echo ferry-test: container got SIGTERM > /dev/ttyS0; exit 0' TERM; while :; do sleep 1; done",
            ],
            None,
            2 * MIN,
        )
        .map(|_| String::new()),
    );
    let restarting = ssh("sudo sh -c '/etc/init.d/docker restart >/dev/null 2>&1 &'; sleep 1; sudo /etc/init.d/docker status || true");
    let t = Instant::now();
    let stop = ferry(home, &["stop", "e2e"], 3 * MIN);
    let took = t.elapsed();
    r.check(
        "ACPI power-down during a docker restart: the container gets SIGTERM, the machine is off within 30 s",
        restarting.and_then(|st| {
            stop?;
            let c = console("e2e");
            if took <= Duration::from_secs(30) && c.contains("ferry-test: container got SIGTERM") {
                Ok(format!("{:.1}s; status when the power-down came: {}", took.as_secs_f64(), st.trim()))
            } else {
                Err(format!("took {took:?}; SIGTERM seen: {}", c.contains("container got SIGTERM")))
            }
        }),
    );
    r.check("console shows the engine stopping before power-off; the disk holding the root image is remounted read-only", {
        let c = console("e2e");
        let ro = c.find("[shutdown] still busy, remounted read-only (the root image runs from the data disk): /var/lib");
        match (c.find("[shutdown] engine stopped"), ro, c.find("PowerOff now")) {
            (Some(a), Some(r), Some(b)) if a < r && r < b => Ok(String::new()),
            _ => Err(format!("console tail: {}", c.lines().rev().take(15).collect::<Vec<_>>().join(" | "))),
        }
    });
}

/// Boot a machine whose fw_cfg userdata is `make(public ssh key)`; wait for "engine ready" on its console.
fn bad_boot(
    r: &mut Report,
    home: &Path,
    name: &str,
    make: impl FnOnce(Vec<u8>) -> Vec<u8>,
    disks: impl FnOnce(&ferry_builder::machine::Machine) -> Vec<ferry_builder::qemu::Drive>,
) -> Option<ferry_builder::machine::Machine> {
    use ferry_builder::machine::Machine;
    std::env::set_var("FERRY_HOME", home);
    let setup = (|| -> Result<Machine, String> {
        let m = Machine::named(name).map_err(|e| e.to_string())?;
        m.create(None).map_err(|e| e.to_string())?;
        let key = std::fs::read(m.path("id_ed25519.pub")).map_err(|e| e.to_string())?;
        std::fs::write(m.path("userdata.tar"), make(key)).map_err(|e| e.to_string())?;
        let mut l =
            m.launch(&out_dir(), &format!("console=ttyS0,115200 quiet panic=-1 ferry.hostname={name}")).map_err(|e| e.to_string())?;
        l.disks = disks(&m);
        l.start().map_err(|e| e.to_string())?;
        Ok(m)
    })();
    let m = match setup {
        Ok(m) => m,
        Err(e) => {
            r.check(&format!("{name}: QEMU starts"), Err(e));
            return None;
        }
    };
    if let Err(e) = wait_console(&m, "engine ready", 10 * MIN) {
        r.check(&format!("{name}: engine comes up"), Err(e));
        let _ = run(Command::new(ferry_bin()).args(["stop", name]).env("FERRY_HOME", home), None, 3 * MIN);
        return None;
    }
    Some(m)
}

/// Boot 2: fw_cfg userdata with a server key that does not match its certificate. The console must name the
/// file, and the engine must come up with generated certificates (client bundle in ~docker/.docker).
fn bad_tls_boot(r: &mut Report, home: &Path) {
    use ferry_contract::userdata;
    let now = time::OffsetDateTime::now_utc();
    let (Ok(a), Ok(b)) = (ferry_engine::certs::generate("localhost", &[], now), ferry_engine::certs::generate("localhost", &[], now))
    else {
        r.check("bad TLS: certificates for the test", Err("generation failed".into()));
        return;
    };
    let Some(m) = bad_boot(
        r,
        home,
        "e2e-badtls",
        |key| {
            userdata::write(&[
                userdata::file(".ssh/authorized_keys", 0o644, key),
                userdata::file("tls/ca.pem", 0o644, a.ca_cert.clone()),
                userdata::file("tls/server.pem", 0o644, a.server_cert.clone()),
                userdata::file("tls/server-key.pem", 0o600, b.server_key.clone()),
            ])
        },
        |_| vec![],
    ) else {
        return;
    };
    r.check(
        "bad TLS: console names server-key.pem and the engine still starts",
        console_has(&m, &["server-key.pem does not match", "using generated certificates", "engine ready"]),
    );
    r.check(
        "bad TLS: generated client bundle works with the docker CLI",
        (|| {
            let env = guest_client(home, &m, &home.join("badtls-client"))?;
            contains(env.run(&["version", "--format", "{{.Server.Version}}"], None, 2 * MIN), "26.")
        })(),
    );
    r.check(
        "generated server certificate follows a new address (re-issued, no restart)",
        (|| {
            ferry(home, &["ssh", "e2e-badtls", "--", "sudo ip addr add 10.0.2.99/24 dev eth0"], MIN)?;
            let p = m.ports().map_err(|e| e.to_string())?;
            let env = DockerEnv { host: format!("tcp://127.0.0.1:{}", p.api), cert_path: home.join("badtls-client").display().to_string() };
            served_san_has(&env, "IP Address:10.0.2.99")?;
            console_has(&m, &["server certificate re-issued"])
        })(),
    );
    // Hyper-V's shutdown integration and users run /sbin/poweroff; it must power the VM off cleanly.
    r.check(
        "sudo poweroff over ssh powers off within 60 s, engine stopped first",
        (|| {
            let _ = run(Command::new(ferry_bin()).args(["ssh", "e2e-badtls", "--", "sudo poweroff"]).env("FERRY_HOME", home), None, MIN);
            if !ferry_builder::qemu::wait_exit(&m.path("qemu.pid"), MIN) {
                return Err("QEMU still running 60 s after poweroff".into());
            }
            let c = std::fs::read_to_string(m.path("console.log")).unwrap_or_default();
            match (c.find("[shutdown] engine stopped"), c.find("PowerOff now")) {
                (Some(a), Some(b)) if a < b => Ok(String::new()),
                _ => Err("console lacks engine stop before power-off".into()),
            }
        })(),
    );
    let _ = run(Command::new(ferry_bin()).args(["stop", "e2e-badtls"]).env("FERRY_HOME", home), None, 3 * MIN);
}

/// Boot 3: fw_cfg carries bytes that are not a tar at all: a clear error naming the file, and the engine
/// starts anyway with a generated set. The only disk is a format-me disk too small for swap + data: a
/// clear error, the disk is not touched, the appliance runs from RAM, and the disk's SSH key still works.
fn garbage_userdata_boot(r: &mut Report, home: &Path) {
    let tiny = home.join("tiny.img");
    let mut before = None;
    let Some(m) = bad_boot(
        r,
        home,
        "e2e-garbage",
        |_| b"this is not a tar archive\n".repeat(100),
        |m| {
            let key = std::fs::read(m.path("id_ed25519.pub")).ok();
            let spec = ferry_builder::disk::Spec {
                path: tiny.clone(),
                bytes: 600 << 20,
                format: ferry_builder::disk::Format::Raw,
                ssh_pub: key,
                tls: None,
            };
            if let Err(e) = ferry_builder::disk::create(&spec) {
                println!("note: could not create {}: {e}", tiny.display());
            }
            before = sha256_file(&tiny);
            vec![ferry_builder::qemu::Drive::new(tiny.clone(), "raw")]
        },
    ) else {
        return;
    };
    r.check(
        "garbage fw_cfg userdata: console names it, engine starts with generated certificates",
        console_has(
            &m,
            &[
                "opt/ferry/userdata.tar/raw: userdata.tar: header checksum mismatch",
                "continuing without it",
                "generated a CA",
                "engine ready",
            ],
        ),
    );
    r.check(
        "a format-me disk too small for swap + data: clear error, appliance runs from RAM",
        console_has(&m, &["Ferry needs at least", "running from RAM"]),
    );
    r.check(
        "... and its SSH key still works for this boot",
        contains(retry(2 * MIN, || ferry(home, &["ssh", "e2e-garbage", "--", "echo key-from-tiny-disk"], MIN)), "key-from-tiny-disk"),
    );
    let _ = ferry(home, &["stop", "e2e-garbage"], 3 * MIN);
    r.check(
        "... and the disk is byte-identical afterwards",
        match (before, sha256_file(&tiny)) {
            (Some(a), Some(b)) if a == b => Ok(String::new()),
            (a, b) => Err(format!("sha256 before {a:?}, after {b:?}")),
        },
    );
}
