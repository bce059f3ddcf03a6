//! Machines on the host: a directory per machine (~/.local/share/ferry/machines/NAME, see util::machines_home) with its SSH key, certificates
//! (CA, client = DOCKER_CERT_PATH, server), the fw_cfg userdata.tar, ports, QEMU pid, QMP socket, console log.
use crate::error::{Context, Error, Result};
use crate::shares::{self, HostShare};
use crate::util;
use ferry_contract::userdata;
use std::path::PathBuf;
use std::process::Command;

/// The shells `ferry env` prints for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shell {
    Bash,
    Fish,
    Powershell,
}

pub struct Machine {
    pub name: String,
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub api: u16,
    pub ssh: u16,
}

pub fn home() -> PathBuf {
    crate::util::machines_home()
}

/// A port on 127.0.0.1 nothing listens on now (for a QEMU forward).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").ctx(|| "find a free local port".into())?;
    Ok(l.local_addr().ctx(|| "local port".into())?.port())
}

impl Machine {
    pub fn named(name: &str) -> Result<Machine> {
        if !ferry_contract::names::valid_hostname(name) {
            return Err(Error::msg(format!("machine name {name:?}: use 1-63 letters, digits or '-'")));
        }
        Ok(Machine { name: name.to_string(), dir: home().join("machines").join(name) })
    }

    pub fn all() -> Vec<Machine> {
        let mut v: Vec<Machine> = std::fs::read_dir(home().join("machines"))
            .map(|rd| rd.flatten().filter_map(|e| Machine::named(&e.file_name().to_string_lossy()).ok()).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn exists(&self) -> bool {
        self.dir.join("ports").is_file()
    }
    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }
    pub fn pid(&self) -> Option<i32> {
        crate::qemu::pid(&self.path("qemu.pid"))
    }

    pub fn ports(&self) -> Result<Ports> {
        let t =
            std::fs::read_to_string(self.path("ports")).ctx(|| format!("machine {} does not exist (ferry up {})", self.name, self.name))?;
        let v: Vec<u16> = t.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        match v.as_slice() {
            [api, ssh] => Ok(Ports { api: *api, ssh: *ssh }),
            _ => Err(Error::msg(format!("{}: expected two port numbers", self.path("ports").display()))),
        }
    }

    /// Create keys, certificates, userdata, ports and (with `disk_bytes`) a format-me data disk carrying
    /// the same userdata. Once: an existing machine keeps its identity and its disk.
    pub fn create(&self, disk_bytes: Option<u64>) -> Result<()> {
        if self.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).ctx(|| format!("create {}", self.dir.display()))?;
        let key = self.path("id_ed25519");
        if !key.exists() {
            util::run(
                Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", &format!("ferry-{}", self.name), "-f"]).arg(&key),
            )?;
        }
        let now = time_now();
        let b = ferry_engine::certs::generate("localhost", &[], now).map_err(|e| Error::msg(format!("generate certificates: {e}")))?;
        b.write_to(&self.dir).map_err(|e| Error::msg(e.to_string()))?;
        let pubkey = std::fs::read(self.path("id_ed25519.pub")).ctx(|| "read the machine's public key".into())?;
        let tar = userdata::write(&[
            userdata::dir(".ssh", 0o700),
            userdata::file(".ssh/authorized_keys", 0o644, pubkey.clone()),
            userdata::file(".ssh/authorized_keys2", 0o644, pubkey),
            userdata::dir("tls", 0o700),
            userdata::file("tls/ca.pem", 0o644, b.ca_cert.clone()),
            userdata::file("tls/server.pem", 0o644, b.server_cert.clone()),
            userdata::file("tls/server-key.pem", 0o600, b.server_key.clone()),
        ]);
        std::fs::write(self.path("userdata.tar"), tar).ctx(|| "write userdata.tar".into())?;
        if let Some(bytes) = disk_bytes {
            let tls = crate::disk::Tls {
                ca: b.ca_cert.clone().into(),
                server: b.server_cert.clone().into(),
                server_key: b.server_key.clone().into(),
            };
            let ssh_pub = std::fs::read(self.path("id_ed25519.pub")).ctx(|| "read the machine's public key".into())?;
            crate::disk::create(&crate::disk::Spec {
                path: self.disk(),
                bytes,
                format: crate::disk::Format::Raw,
                ssh_pub: Some(ssh_pub),
                tls: Some(tls),
            })?;
        }
        let (api, ssh) = (free_port()?, free_port()?);
        std::fs::write(self.path("ports"), format!("{api} {ssh}\n")).ctx(|| "write ports".into())
    }

    /// The machine's data disk (raw, sparse); machines made with --no-disk have none and run from RAM.
    pub fn disk(&self) -> PathBuf {
        self.path("disk.img")
    }

    /// The folders this machine shares (saved by `ferry up`; none for machines made another way).
    pub fn shares(&self) -> Result<Vec<HostShare>> {
        let f = self.path("shares.json");
        match std::fs::read_to_string(&f) {
            Ok(t) => shares::from_json(&t, &f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(Error::msg(format!("read {}: {e}", f.display()))),
        }
    }

    pub fn save_shares(&self, list: &[HostShare]) -> Result<()> {
        let f = self.path("shares.json");
        std::fs::write(&f, shares::to_json(list)).ctx(|| format!("write {}", f.display()))
    }

    /// QEMU for this machine: its data disk (or, without one, its userdata via fw_cfg), loopback forwards
    /// to 2376 and 22, its shares, its shared networks, its console log. `FERRY_APPEND` adds to the kernel command line and
    /// `FERRY_QEMU_ARGS` to QEMU's (debugging and test hooks).
    pub fn launch(&self, out: &std::path::Path, append: &str) -> Result<crate::qemu::Launch> {
        let p = self.ports()?;
        // A remembered folder may have been deleted since: QEMU would refuse to start, so skip it and say so.
        let shared: Vec<HostShare> = self
            .shares()?
            .into_iter()
            .filter(|s| {
                let ok = s.host.is_dir();
                if !ok {
                    eprintln!("ferry: share {} -> {}: the folder is gone; not shared on this boot", s.host.display(), s.guest);
                }
                ok
            })
            .collect();
        let hw = crate::settings::Settings::load(&self.path("settings.json"))?;
        // Shared networks: a NIC each, and its fixed address on the kernel command line.
        let nets = crate::network::Network::of(&self.name);
        let append = format!("{append}{}", crate::network::kernel_args(&self.name, &nets));
        let append = match std::env::var("FERRY_APPEND") {
            Ok(more) if !more.trim().is_empty() => format!("{append} {}", more.trim()),
            _ => append,
        };
        let lans = nets
            .iter()
            .filter_map(|n| {
                Some(crate::qemu::Lan { local: n.member_socket(&self.name), remote: n.switch_socket(), mac: n.mac(&self.name)? })
            })
            .collect();
        Ok(crate::qemu::Launch {
            fw_cfg_shares: shares::write_fw_cfg(&shared, &self.path("shares.fwcfg"))?,
            shares: shared,
            extra: crate::qemu::extra_args(),
            lans,
            restrict: std::env::var("FERRY_NET_RESTRICT").is_ok_and(|v| v == "1"),
            direct: Some(crate::qemu::DirectKernel { kernel: out.join("vmlinuz"), initrd: out.join("initrd.img"), append }),
            hardware: crate::qemu::Hardware::default(),
            memory_mb: hw.memory_mb,
            cpus: hw.cpus,
            fw_cfg_userdata: (!self.disk().exists()).then(|| self.path("userdata.tar")),
            disks: if self.disk().exists() { vec![crate::qemu::Drive::new(self.disk(), "raw")] } else { vec![] },
            forwards: vec![(p.api, 2376), (p.ssh, 22)],
            console_log: self.path("console.log"),
            qmp: self.path("qmp.sock"),
            pidfile: self.path("qemu.pid"),
        })
    }

    /// The bash exports `ferry up` and `ferry env` print.
    pub fn env_lines(&self) -> Result<String> {
        self.env_for(Shell::Bash, false)
    }

    /// The DOCKER_* variables for `shell`, or (with `unset`) the commands that remove them.
    pub fn env_for(&self, shell: Shell, unset: bool) -> Result<String> {
        let p = self.ports()?;
        let vars = [
            ("DOCKER_HOST", format!("tcp://127.0.0.1:{}", p.api)),
            ("DOCKER_TLS_VERIFY", "1".to_string()),
            ("DOCKER_CERT_PATH", self.dir.display().to_string()),
        ];
        let mut out = String::new();
        for (k, v) in &vars {
            out.push_str(&match (shell, unset) {
                (Shell::Bash, false) => format!("export {k}={v}\n"),
                (Shell::Bash, true) => format!("unset {k}\n"),
                (Shell::Fish, false) => format!("set -gx {k} \"{v}\";\n"),
                (Shell::Fish, true) => format!("set -e {k};\n"),
                (Shell::Powershell, false) => format!("$Env:{k} = \"{v}\"\n"),
                (Shell::Powershell, true) => format!("Remove-Item Env:{k}\n"),
            });
        }
        if !unset {
            let how = match shell {
                Shell::Bash => format!("eval \"$(ferry env {})\"", self.name),
                Shell::Fish => format!("ferry env {} --shell fish | source", self.name),
                Shell::Powershell => format!("& ferry env {} --shell powershell | Invoke-Expression", self.name),
            };
            out.push_str(&format!("# Run this command to configure your shell:\n# {how}\n"));
            out.push_str(&format!("# Or, with no variables: docker --context {} ...\n", crate::context::name(&self.name)));
        }
        Ok(out)
    }

    pub fn ssh_command(&self) -> Result<Command> {
        let p = self.ports()?;
        let mut c = Command::new("ssh");
        c.args(["-i"]).arg(self.path("id_ed25519")).args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            // As docker-machine does: a machine that died or rebooted under a session ends it in
            // about 3 minutes instead of never.
            "-o",
            "ServerAliveInterval=60",
            "-p",
            &p.ssh.to_string(),
            "docker@127.0.0.1",
        ]);
        Ok(c)
    }
}

/// Start this `ferry` binary again with `args` as a background agent (the port agent, a network's switch):
/// its own session, so a Ctrl-C after `ferry up` does not end it, and its output appended to `log`.
pub fn spawn_agent(args: &[&str], log: &std::path::Path) -> Result<std::process::Child> {
    let exe = std::env::current_exe().ctx(|| "find the ferry binary".into())?;
    let f = std::fs::OpenOptions::new().create(true).append(true).open(log).ctx(|| format!("open {}", log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(std::process::Stdio::null()).stdout(f.try_clone().ctx(|| format!("open {}", log.display()))?).stderr(f);
    use std::os::unix::process::CommandExt;
    // SAFETY: only setsid(2) between fork and exec.
    unsafe {
        cmd.pre_exec(|| if libc::setsid() >= 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) });
    }
    cmd.spawn().ctx(|| format!("start ferry {}", args.join(" ")))
}

pub fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

pub fn remove(m: &Machine) -> Result<()> {
    if m.pid().is_some() {
        return Err(Error::msg(format!("machine {} is running; ferry stop {} first", m.name, m.name)));
    }
    crate::network::leave_all(&m.name)?;
    if m.dir.exists() {
        std::fs::remove_dir_all(&m.dir).ctx(|| format!("remove {}", m.dir.display()))?;
    }
    Ok(())
}

pub fn console_tail(m: &Machine, lines: usize) -> String {
    let t = std::fs::read_to_string(m.path("console.log")).unwrap_or_default();
    let v: Vec<&str> = t.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
