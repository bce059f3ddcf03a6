//! End-to-end tests of the data disk and the docker-machine contract, under QEMU TCG:
//! - `ferry disk create` writes byte-for-byte what docker-machine writes (checked against Go's archive/tar);
//! - docker-machine's boot2docker provisioner, run over real ssh command by command, then the docker CLI
//!   with the test's own certificates (hostile profiles are in the reliability suite); a reboot after
//!   the disk grew keeps everything;
//! - power cuts at named points of the first boot, each followed by a boot that must finish the setup;
//! - foreign disks are never written, two format-me disks pick the first by size (NVMe names), hostile
//!   userdata is refused.
use ferry_builder::disk::{self, Format, Spec};
use ferry_builder::machine::Machine;
use ferry_builder::qemu::{Bus, Drive};
use qemu_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const APPEND: &str = "console=ttyS0,115200 quiet panic=-1";

fn main() {
    isolate_guests();
    let cases = Cases::from_args("disk", &["userdata-bytes", "provision-reboot-growth", "power-cuts", "foreign-disks"]);
    let mut r = Report::default();
    println!("disk: Ferry's data disk under QEMU ({}), ferry = {}", ferry_builder::qemu::accel(), ferry_bin().display());
    let home = std::env::temp_dir().join(format!("ferry-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let _ = std::fs::create_dir_all(&home);
    std::env::set_var("FERRY_HOME", &home);
    let _guard = KillGuard { home: home.clone() };

    cases.run("userdata-bytes", || docker_machine_bytes(&mut r, &home));
    cases.run("provision-reboot-growth", || provisioner_and_reboot(&mut r, &home));
    cases.run("power-cuts", || power_cuts(&mut r, &home));
    cases.run("foreign-disks", || foreign_disks(&mut r, &home));
    let _ = std::fs::remove_dir_all(&home);
    cases.finish(r);
}

fn ssh(home: &Path, name: &str, cmd: &str) -> Result<String, String> {
    ferry(home, &["ssh", name, "--", cmd], 2 * MIN)
}

fn machine(home: &Path, name: &str, disk_bytes: Option<u64>) -> Result<Machine, String> {
    std::env::set_var("FERRY_HOME", home);
    let m = Machine::named(name).map_err(|e| e.to_string())?;
    m.create(disk_bytes).map_err(|e| e.to_string())?;
    Ok(m)
}

/// Boot `m` with extra kernel options and extra drives (its own disk, if any, comes first).
fn boot(m: &Machine, extra: &str, drives: Vec<Drive>) -> Result<(), String> {
    let mut l = m.launch(&out_dir(), &format!("{APPEND} ferry.hostname={} {extra}", m.name)).map_err(|e| e.to_string())?;
    l.disks.extend(drives);
    l.start().map_err(|e| e.to_string())
}

/// Case 1: the first bytes of `ferry disk create --ssh-key` equal the tar docker-machine makes (Go's
/// archive/tar with docker-machine's headers), followed by zeros.
fn docker_machine_bytes(r: &mut Report, home: &Path) {
    r.check(
        "ferry disk create: first bytes identical to docker-machine's userdata tar (Go archive/tar)",
        (|| {
            let dir = home.join("gotar");
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let key = dir.join("key.pub");
            std::fs::write(&key, "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7test docker-machine-test\n").map_err(|e| e.to_string())?;
            std::fs::write(dir.join("main.go"), GO_MAKE_DISK_IMAGE).map_err(|e| e.to_string())?;
            let gotar = dir.join("go.tar");
            run(
                Command::new("go")
                    .arg("run")
                    .arg(dir.join("main.go"))
                    .arg(&key)
                    .arg(&gotar)
                    .env("GOCACHE", dir.join("cache"))
                    .env("GO111MODULE", "off"),
                None,
                5 * MIN,
            )?;
            let img = dir.join("disk.img");
            ferry(home, &["disk", "create", &img.display().to_string(), "--size", "1G", "--ssh-key", &key.display().to_string()], MIN)?;
            let want = std::fs::read(&gotar).map_err(|e| e.to_string())?;
            let got = std::fs::read(&img).map_err(|e| e.to_string())?;
            if got.len() != 1 << 30 {
                return Err(format!("disk is {} bytes, expected 1 GiB", got.len()));
            }
            if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
                return Err(format!("first difference at byte {i}: ours {:#04x}, Go's {:#04x}", got[i], want[i]));
            }
            if got[want.len()..1 << 20].iter().any(|&b| b != 0) {
                return Err("non-zero bytes after the tar".into());
            }
            Ok(format!("{} bytes", want.len()))
        })(),
    );
    r.check(
        "ferry disk create: qcow2, vmdk, vhd, vhdx, vdi are readable by qemu-img with the right size",
        (|| {
            let mut notes = vec![];
            for f in ["qcow2", "vmdk", "vhd", "vhdx", "vdi"] {
                let p = home.join(format!("fmt.{f}"));
                ferry(home, &["disk", "create", &p.display().to_string(), "--size", "3G", "--format", f], MIN)?;
                let info = run(
                    Command::new("qemu-img")
                        .args(["info", "--output=json", "-f", Format::parse(f).map_err(|e| e.to_string())?.qemu_name()])
                        .arg(&p),
                    None,
                    MIN,
                )?;
                // The top level's size: QEMU 8 and later also list the file layer under "children",
                // whose "virtual-size" is the file's own length.
                let size = serde_json::from_str::<serde_json::Value>(&info)
                    .map_err(|e| format!("{f}: qemu-img info is not JSON ({e}): {info}"))?["virtual-size"]
                    .as_u64()
                    .unwrap_or(0);
                if !(3 << 30..=(3 << 30) + (256 << 20)).contains(&size) {
                    return Err(format!("{f}: virtual size {size}"));
                }
                let head = run(
                    Command::new("qemu-img")
                        .args(["dd", "-f", Format::parse(f).map_err(|e| e.to_string())?.qemu_name(), "-O", "raw", "bs=512", "count=1"])
                        .arg(format!("if={}", p.display()))
                        .arg(format!("of={}", home.join("head.bin").display())),
                    None,
                    MIN,
                );
                head?;
                let h = std::fs::read(home.join("head.bin")).map_err(|e| e.to_string())?;
                if !h.starts_with(ferry_contract::userdata::MAGIC.as_bytes()) {
                    return Err(format!("{f}: the guest would not see the format-me magic at byte 0"));
                }
                let _ = std::fs::remove_file(home.join("head.bin"));
                notes.push(format!("{f} {}M", size >> 20));
            }
            let again = ferry(home, &["disk", "create", &home.join("fmt.qcow2").display().to_string(), "--size", "1G"], MIN);
            if again.is_ok() {
                return Err("ferry disk create overwrote an existing file".into());
            }
            Ok(notes.join(", "))
        })(),
    );
}

/// docker-machine's MakeDiskImage (libmachine/mcnutils), as a Go program: the reference bytes.
const GO_MAKE_DISK_IMAGE: &str = r#"package main

import (
	"archive/tar"
	"bytes"
	"os"
)

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func main() {
	magic := "boot2docker, please format-me"
	buf := new(bytes.Buffer)
	tw := tar.NewWriter(buf)
	must(tw.WriteHeader(&tar.Header{Name: magic, Size: int64(len(magic))}))
	_, err := tw.Write([]byte(magic))
	must(err)
	must(tw.WriteHeader(&tar.Header{Name: ".ssh", Typeflag: tar.TypeDir, Mode: 0700}))
	key, err := os.ReadFile(os.Args[1])
	must(err)
	for _, name := range []string{".ssh/authorized_keys", ".ssh/authorized_keys2"} {
		must(tw.WriteHeader(&tar.Header{Name: name, Size: int64(len(key)), Mode: 0644}))
		_, err = tw.Write(key)
		must(err)
	}
	must(tw.Close())
	must(os.WriteFile(os.Args[2], buf.Bytes(), 0644))
}
"#;

struct TestCerts {
    dir: PathBuf,
    bundle: ferry_engine::certs::Bundle,
}

fn test_certs(home: &Path) -> Result<TestCerts, String> {
    let bundle = ferry_engine::certs::generate("localhost", &[], time::OffsetDateTime::now_utc()).map_err(|e| e.to_string())?;
    let dir = home.join("dm-client");
    bundle.write_to(&dir).map_err(|e| e.to_string())?;
    Ok(TestCerts { dir, bundle })
}

/// docker-machine's boot2docker profile template, filled in the way it fills it.
fn dm_profile() -> String {
    let extra = "--label provider=ferrytest\n--label env=e2e\n--insecure-registry 10.0.0.1:5000\n";
    let env = "export \\\"\"HTTP_PROXY=http://proxy.example:3128\"\\\"\n";
    format!(
        "\nEXTRA_ARGS='\n{extra}\n'\nCACERT=/var/lib/boot2docker/ca.pem\nDOCKER_HOST='-H tcp://0.0.0.0:2376'\nDOCKER_STORAGE=overlay2\nDOCKER_TLS=auto\nSERVERKEY=/var/lib/boot2docker/server-key.pem\nSERVERCERT=/var/lib/boot2docker/server.pem\n\n{env}"
    )
}

const DOCKERD_ENV: &str =
    "sudo sh -c 'for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = dockerd ] && tr \"\\0\" \"\\n\" < $p/environ; done; true'";

/// Case 2: ferry up with its disk; docker-machine's provisioning steps; hostile profiles; reboot after growth.
fn provisioner_and_reboot(r: &mut Report, home: &Path) {
    let up = ferry(home, &["up", "dm"], 40 * MIN);
    let Some(env) = up.as_ref().ok().and_then(|o| DockerEnv::parse(o)) else {
        r.check("ferry up (with its data disk) boots", up.map(|_| String::new()));
        return;
    };
    let Ok(m) = Machine::named("dm") else { return };
    r.check(
        "first boot formats the disk and mounts it at /mnt/vda1 with swap",
        console_has(&m, &["disk: formatting /dev/vda", "partition table written", "data on /mnt/vda1, swap on /dev/vda2"]),
    );
    r.check(
        "users: docker is uid 1000, gid 50 staff, in group docker; no password; passwordless sudo",
        (|| {
            let o = ssh(home, "dm", "id; sudo -n grep '^docker:' /etc/shadow; sudo -n true && echo SUDO-OK")?;
            let shadow_pw = o.lines().find(|l| l.starts_with("docker:")).and_then(|l| l.split(':').nth(1)).unwrap_or("?");
            if o.contains("uid=1000(docker) gid=50(staff)") && o.contains("(docker)") && o.contains("SUDO-OK") && shadow_pw == "*" {
                Ok(String::new())
            } else {
                Err(format!("got {o:?}"))
            }
        })(),
    );
    r.check(
        "sshd: key-only (password auth refused), sftp and scp work",
        (|| {
            let p = m.ports().map_err(|e| e.to_string())?;
            let pw = run(
                Command::new("ssh").args([
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "PreferredAuthentications=password,keyboard-interactive",
                    "-p",
                    &p.ssh.to_string(),
                    "docker@127.0.0.1",
                    "true",
                ]),
                None,
                MIN,
            );
            if pw.is_ok() {
                return Err("a password/keyboard-interactive login succeeded".into());
            }
            let f = home.join("scp-me.txt");
            std::fs::write(&f, "scp-payload\n").map_err(|e| e.to_string())?;
            let common = [
                "-i",
                &m.path("id_ed25519").display().to_string(),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
            ]
            .map(String::from);
            run(
                Command::new("scp").args(&common).args(["-P", &p.ssh.to_string()]).arg(&f).arg("docker@127.0.0.1:/home/docker/scp-me.txt"),
                None,
                MIN,
            )?;
            let sftp = run(
                Command::new("sftp").args(&common).args(["-P", &p.ssh.to_string(), "-b", "-", "docker@127.0.0.1"]),
                Some(b"ls /home/docker\n"),
                MIN,
            )?;
            if !sftp.contains("scp-me.txt") {
                return Err(format!("sftp ls: {sftp}"));
            }
            contains(ssh(home, "dm", "cat /home/docker/scp-me.txt"), "scp-payload")
        })(),
    );

    // docker-machine's steps, in its order, as it runs them.
    r.check("provisioner: cat /etc/os-release says ID=boot2docker", contains(ssh(home, "dm", "cat /etc/os-release"), "ID=boot2docker"));
    r.check(
        "provisioner: sethostname + hostname persisted",
        ssh(home, "dm", "sudo /usr/bin/sethostname dm-renamed && echo dm-renamed | sudo tee /var/lib/boot2docker/etc/hostname")
            .and_then(|_| contains(ssh(home, "dm", "hostname"), "dm-renamed")),
    );
    r.check(
        "provisioner: netstat/ss shows :2376 before any profile exists",
        contains(
            ssh(home, "dm", "test ! -e /var/lib/boot2docker/profile && if ! type netstat 1>/dev/null; then ss -tln; else netstat -tln; fi"),
            ":2376",
        ),
    );

    let certs = match test_certs(home) {
        Ok(c) => c,
        Err(e) => {
            r.check("provisioner: certificates for the test", Err(e));
            return;
        }
    };
    let dm_env = DockerEnv { host: env.host.clone(), cert_path: certs.dir.display().to_string() };
    r.check(
        "provisioner: stop docker, delete docker0, write certs and profile with sudo tee, start docker",
        (|| {
            ssh(home, "dm", "sudo mkdir -p /var/lib/boot2docker")?;
            ssh(home, "dm", "sudo /etc/init.d/docker stop")?;
            ssh(home, "dm", "if [ ! -z \"$(ip link show docker0)\" ]; then sudo ip link delete docker0; fi")?;
            for (name, pem) in
                [("ca.pem", &certs.bundle.ca_cert), ("server.pem", &certs.bundle.server_cert), ("server-key.pem", &certs.bundle.server_key)]
            {
                ssh(home, "dm", &format!("printf '%s' '{pem}' | sudo tee /var/lib/boot2docker/{name}"))?;
            }
            ssh(home, "dm", &format!("printf %s \"{}\" | sudo tee /var/lib/boot2docker/profile", dm_profile()))?;
            // A daemon.json setting to see it survive the reboot.
            ssh(home, "dm", "echo '{\"debug\": true}' | sudo tee /etc/docker/daemon.json")?;
            contains(ssh(home, "dm", "sudo /etc/init.d/docker start"), "started")
        })(),
    );
    let dm_info =
        || dm_env.run(&["info", "--format", "{{.Name}}|{{json .Labels}}|{{.Debug}}|{{json .RegistryConfig.IndexConfigs}}"], None, 2 * MIN);
    r.check(
        "provisioner: the docker CLI with the test's client cert reaches 2376; labels, insecure registry",
        (|| {
            let o = retry(MIN, dm_info)?;
            for want in ["dm-renamed|", "provider=ferrytest", "env=e2e", "|true|", "10.0.0.1:5000"] {
                if !o.contains(want) {
                    return Err(format!("docker info lacks {want:?}: {o}"));
                }
            }
            Ok(String::new())
        })(),
    );
    r.check(
        "provisioner: Ferry's own client certificate is refused now (the profile's CA rules)",
        match env.run(&["version"], None, MIN) {
            Ok(o) => Err(format!("accepted: {o}")),
            Err(_) => Ok(String::new()),
        },
    );
    r.check(
        "provisioner: dockerd's environment holds the profile's exported HTTP_PROXY",
        contains(ssh(home, "dm", DOCKERD_ENV), "HTTP_PROXY=http://proxy.example:3128"),
    );

    // State to find again after the reboot.
    let state = (|| {
        let tar = busybox_rootfs_tar()?;
        dm_env.run(&["import", "-", "ferry-busybox:test"], Some(&tar), 5 * MIN)?;
        dm_env.run(
            &["run", "--rm", "-v", "keepvol:/data", "ferry-busybox:test", "busybox", "sh", "-c", "echo persisted-data > /data/f"],
            None,
            3 * MIN,
        )?;
        let df = ssh(home, "dm", "df -k /mnt/vda1 | tail -1")?;
        df.split_whitespace().nth(1).and_then(|s| s.parse::<u64>().ok()).ok_or(format!("df: {df}"))
    })();
    let size_before = match state {
        Ok(s) => s,
        Err(e) => {
            r.check("a container image and a volume file before the reboot", Err(e));
            return;
        }
    };
    let _ = ssh(home, "dm", "touch /tmp/leftover-from-boot-1");
    const HOST_KEY: &str = "cat /var/lib/boot2docker/ssh/etc/ssh/ssh_host_ed25519_key.pub";
    let host_key = ssh(home, "dm", HOST_KEY).unwrap_or_default();
    let _ = ferry(home, &["stop", "dm"], 3 * MIN);
    r.check(
        "the disk is grown by 2 GiB while the VM is off (qemu-img resize)",
        run(Command::new("qemu-img").args(["resize", "-q", "-f", "raw"]).arg(m.disk()).arg("+2G"), None, MIN),
    );

    // Keep the first boot's console (its shutdown lines) for the report if anything below fails.
    let first_console = console(&m);
    let failed_before = r.failed.len();
    // Boot 2: the profile's certificates are in force, so wait on the console, then use the test's CLI.
    if let Err(e) = boot(&m, "", vec![]).and_then(|_| wait_console(&m, "engine ready", 10 * MIN)) {
        r.check("second boot reaches engine ready", Err(e));
        return;
    }
    r.check(
        "second boot: never reformats; the disk is mounted",
        console_has(&m, &["disk: /dev/vda1 is labelled boot2docker-data; mounting it", "data on /mnt/vda1"]).and_then(|_| {
            if console(&m).contains("disk: formatting") {
                Err("it formatted again".into())
            } else {
                Ok(String::new())
            }
        }),
    );
    r.check(
        "second boot: the root image's copy on the data disk is compared, not written again",
        wait_console(&m, "[root] image moved off RAM", 5 * MIN).and_then(|_| console_has(&m, &["the copy on the data disk matched"])),
    );
    r.check(
        "after reboot: hostname, profile labels and daemon.json still apply",
        (|| {
            let o = retry(2 * MIN, dm_info)?;
            for want in ["dm-renamed|", "provider=ferrytest", "|true|"] {
                if !o.contains(want) {
                    return Err(format!("docker info lacks {want:?}: {o}"));
                }
            }
            Ok(String::new())
        })(),
    );
    r.check(
        "after reboot: the image and the volume's file survived",
        contains(
            dm_env.run(&["run", "--rm", "-v", "keepvol:/data", "ferry-busybox:test", "busybox", "cat", "/data/f"], None, 3 * MIN),
            "persisted-data",
        ),
    );
    r.check(
        "after reboot: dockerd's environment still holds HTTP_PROXY",
        contains(ssh(home, "dm", DOCKERD_ENV), "HTTP_PROXY=http://proxy.example:3128"),
    );
    r.check(
        "after reboot: the SSH host key is the same",
        match ssh(home, "dm", HOST_KEY) {
            Ok(k) if k.starts_with("ssh-ed25519") && k == host_key => Ok(String::new()),
            other => Err(format!("before {host_key:?}, after {other:?}")),
        },
    );
    r.check(
        "after reboot: /tmp lives on the disk and was emptied",
        contains(ssh(home, "dm", "grep ' /tmp ' /proc/mounts | tail -1; test ! -e /tmp/leftover-from-boot-1 && echo emptied"), "emptied")
            .and_then(|_| contains(ssh(home, "dm", "grep ' /tmp ' /proc/mounts | tail -1"), "/dev/vda1")),
    );
    r.check(
        "after reboot: userdata.tar re-extracted into /home/docker/.ssh",
        contains(ssh(home, "dm", "stat -c '%U %a' /home/docker/.ssh /home/docker/.ssh/authorized_keys"), "docker 700\ndocker 600"),
    );
    r.check(
        "growth: backup GPT moved, partition 1 and the filesystem grown, data intact",
        (|| {
            console_has(&m, &["grew from", "filesystem grown to its partition"])?;
            let df = ssh(home, "dm", "df -k /mnt/vda1 | tail -1")?;
            let after: u64 = df.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(format!("df: {df}"))?;
            if after < size_before + 1_900_000 {
                return Err(format!("filesystem {size_before} KiB before, {after} KiB after"));
            }
            Ok(format!("{} → {} MiB", size_before / 1024, after / 1024))
        })(),
    );
    let _ = ferry(home, &["stop", "dm"], 3 * MIN);
    if r.failed.len() > failed_before {
        let tail = |c: &str| {
            c.lines().filter(|l| l.starts_with("ferry")).rev().take(25).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        println!(
            "--- first boot's console (end) ---\n{}\n--- second boot's console (end) ---\n{}\n---",
            tail(&first_console),
            tail(&console(&m))
        );
    }
    r.check(
        "sgdisk -v finds no problems on the grown disk",
        contains(run(Command::new("sgdisk").arg("-v").arg(m.disk()), None, MIN), "No problems found"),
    );
}

/// Case 3: power cuts during the first boot at named points; the next boot must finish the setup with the
/// keys from the disk's userdata.
fn power_cuts(r: &mut Report, home: &Path) {
    for point in ["after-userdata", "mid-mkfs", "before-gpt", "mid-gpt", "after-gpt"] {
        let name = format!("cut-{point}");
        r.check(
            &format!("power cut at {point}: the next boot finishes the setup, keys included"),
            (|| {
                let m = machine(home, &name, Some(20 << 30))?;
                let (extra, line) = if point == "mid-mkfs" {
                    (String::new(), "disk: making the ext4 filesystem".to_string())
                } else {
                    (format!("ferry.debug.pause={point}"), format!("paused at {point}"))
                };
                boot(&m, &extra, vec![])?;
                wait_console(&m, &line, 5 * MIN)?;
                kill_qemu(&m.path("qemu.pid"));
                let first = console(&m);
                let _ = std::fs::write(m.path("console-cut.log"), &first);
                let mut note = String::new();
                if point == "mid-mkfs" && first.contains("filesystem made") {
                    note = "note: mkfs had already finished when the power went".into();
                }
                boot(&m, "", vec![])?;
                let key = std::fs::read_to_string(m.path("id_ed25519.pub")).map_err(|e| e.to_string())?;
                let o = retry(6 * MIN, || ssh(home, &name, "grep ' /mnt/vda1 ' /proc/mounts && cat /home/docker/.ssh/authorized_keys"))?;
                if !o.contains("/mnt/vda1 ext4") || !o.contains(key.trim()) {
                    return Err(format!("after the cut: {o}"));
                }
                if point == "mid-gpt" && !console(&m).contains("resuming an interrupted first boot") {
                    return Err("the second boot did not resume".into());
                }
                kill_qemu(&m.path("qemu.pid"));
                contains(run(Command::new("sgdisk").arg("-v").arg(m.disk()), None, MIN), "No problems found")?;
                Ok(note)
            })(),
        );
        kill_qemu(&home.join("machines").join(&name).join("qemu.pid"));
        let _ = std::fs::remove_file(home.join("machines").join(&name).join("disk.img"));
    }
}

/// Case 4: foreign disks of several kinds on AHCI, two format-me disks on NVMe (the larger one has hostile
/// userdata). Only the larger format-me disk may be written.
fn foreign_disks(r: &mut Report, home: &Path) {
    let dir = home.join("foreign");
    let made = (|| -> Result<Vec<(PathBuf, Bus)>, String> {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let blank = |n: &str, mib: u64| -> Result<PathBuf, String> {
            let p = dir.join(n);
            let f = std::fs::File::create(&p).map_err(|e| e.to_string())?;
            f.set_len(mib << 20).map_err(|e| e.to_string())?;
            Ok(p)
        };
        let ext4 = blank("ext4-other.img", 64)?;
        run(Command::new("mkfs.ext4").args(["-q", "-F", "-L", "other"]).arg(&ext4), None, MIN)?;
        let fat = blank("fat.img", 64)?;
        run(Command::new("mkfs.vfat").args(["-n", "OTHERFAT"]).arg(&fat), None, MIN)?;
        let mbr = blank("mbr.img", 64)?;
        run(Command::new("sfdisk").args(["-q"]).arg(&mbr), Some(b"label: dos\n,,83\n"), MIN)?;
        let random = dir.join("random.img");
        run(
            Command::new("dd").args(["if=/dev/urandom", "bs=1M", "count=16", "status=none"]).arg(format!("of={}", random.display())),
            None,
            MIN,
        )?;
        // The larger format-me disk: its userdata plants a symlink out of the home directory.
        let hostile = blank("magic-hostile.img", 3 << 10)?;
        let mut tar = ferry_contract::userdata::write(&[
            ferry_contract::userdata::file(ferry_contract::userdata::MAGIC, 0, ferry_contract::userdata::MAGIC),
            ferry_contract::userdata::dir(".ssh", 0o700),
            ferry_contract::userdata::file(".ssh/authorized_keys", 0o644, b"x".to_vec()),
        ]);
        set_type_symlink(&mut tar, 2, "/etc/shadow");
        write_at(&hostile, 0, &tar)?;
        let second = dir.join("magic-second.img");
        disk::create(&Spec {
            path: second.clone(),
            bytes: 2 << 30,
            format: Format::Raw,
            ssh_pub: Some(b"ssh-ed25519 AAAA second".to_vec()),
            tls: None,
        })
        .map_err(|e| e.to_string())?;
        Ok(vec![(ext4, Bus::Ahci), (fat, Bus::Ahci), (mbr, Bus::Ahci), (random, Bus::Ahci), (hostile, Bus::Nvme), (second, Bus::Nvme)])
    })();
    let disks = match made {
        Ok(d) => d,
        Err(e) => {
            r.check("foreign disks: made on the host", Err(e));
            return;
        }
    };
    // Everything but the larger format-me disk (index 4) must stay as it is.
    let untouched: Vec<(PathBuf, Option<String>)> =
        disks.iter().enumerate().filter(|(i, _)| *i != 4).map(|(_, (p, _))| (p.clone(), sha256_file(p))).collect();
    let m = match machine(home, "foreign", None) {
        Ok(m) => m,
        Err(e) => {
            r.check("foreign disks: machine", Err(e));
            return;
        }
    };
    let drives =
        disks.iter().map(|(p, b)| Drive { path: p.clone(), format: "raw".into(), bus: *b, read_only: false, snapshot: false }).collect();
    if let Err(e) = boot(&m, "", drives).and_then(|_| wait_console(&m, "engine ready", 10 * MIN)) {
        r.check("foreign disks: boot reaches engine ready", Err(e));
        return;
    }
    r.check(
        "foreign disks are named on the console and passed over",
        console_has(&m, &["an ext filesystem labelled \"other\"", "an MBR", "data that is not Ferry's", "never written"]),
    );
    // The kernel may number the two NVMe controllers either way; the console must name the one it used
    // and mount its partition by NVMe rules. That it was the larger one is proven below: the smaller one
    // stays byte-identical.
    r.check(
        "two format-me disks: the larger (first by size) is used, the console says so; NVMe names work",
        (|| {
            let c = console(&m);
            let used = c
                .lines()
                .find_map(|l| l.split("also a format-me disk; using /dev/").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .ok_or("console lacks \"also a format-me disk; using /dev/...\"")?;
            if !used.starts_with("nvme") {
                return Err(format!("used {used}, expected an NVMe disk"));
            }
            console_has(&m, &[&format!("data on /mnt/{used}p1, swap on /dev/{used}p2")]).map(|_| format!("used {used}"))
        })(),
    );
    r.check(
        "hostile userdata (a symlink to /etc/shadow) is refused and named",
        console_has(&m, &["refusing link \".ssh/authorized_keys\"", "formatting without userdata"]),
    );
    r.check(
        "... nothing was written through it",
        contains(
            ssh(
                home,
                "foreign",
                "test -f /home/docker/.ssh/authorized_keys && test ! -L /home/docker/.ssh/authorized_keys && echo regular-file",
            ),
            "regular-file",
        ),
    );
    let _ = ferry(home, &["stop", "foreign"], 3 * MIN);
    let changed: Vec<String> =
        untouched.iter().filter(|(p, h)| h.is_none() || sha256_file(p) != *h).map(|(p, _)| p.display().to_string()).collect();
    r.check(
        "foreign disks and the second format-me disk are byte-identical after the boot",
        if changed.is_empty() { Ok(format!("{} disks", untouched.len())) } else { Err(format!("changed: {changed:?}")) },
    );
}

/// Turn entry `n` (0-based) into a symlink to `target`, with no data.
fn set_type_symlink(tar: &mut [u8], n: usize, target: &str) {
    edit_tar_header(tar, n, |h| {
        h[156] = b'2';
        h[157..157 + target.len()].copy_from_slice(target.as_bytes());
        h[124..136].copy_from_slice(b"00000000000\0");
    });
}
