//! QEMU: command line for a machine, daemonised start, QMP (ACPI power-down), waiting for exit.
use crate::error::{Context, Error, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct Launch {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub append: String,
    pub memory_mb: u32,
    pub cpus: u32,
    pub fw_cfg_userdata: Option<PathBuf>,
    pub disks: Vec<Drive>,
    /// (host port, guest port) forwards on 127.0.0.1.
    pub forwards: Vec<(u16, u16)>,
    pub console_log: PathBuf,
    pub qmp: PathBuf,
    pub pidfile: PathBuf,
}

/// How a disk is attached: the bus tells which driver the guest needs (and the device name it gets).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bus {
    /// virtio-blk: /dev/vdX (QEMU/KVM).
    Virtio,
    /// The q35 chipset's AHCI controller: /dev/sdX (VirtualBox, most PCs).
    Ahci,
    /// NVMe: /dev/nvmeXn1.
    Nvme,
}

#[derive(Debug, Clone)]
pub struct Drive {
    pub path: PathBuf,
    pub format: String,
    pub bus: Bus,
    pub read_only: bool,
}

impl Drive {
    pub fn new(path: PathBuf, format: &str) -> Drive {
        Drive { path, format: format.into(), bus: Bus::Virtio, read_only: false }
    }
    fn args(&self, i: usize) -> Vec<String> {
        let ro = if self.read_only { ",readonly=on" } else { "" };
        let drive = format!("file={},format={},if=none,id=disk{i}{ro}", self.path.display(), self.format);
        let device = match self.bus {
            Bus::Virtio => format!("virtio-blk-pci,drive=disk{i}"),
            Bus::Ahci => format!("ide-hd,drive=disk{i},bus=ide.{i}"),
            Bus::Nvme => format!("nvme,drive=disk{i},serial=ferry{i}"),
        };
        vec!["-drive".into(), drive, "-device".into(), device]
    }
}

/// TCG unless FERRY_ACCEL says otherwise (nested KVM is unreliable on CI machines).
pub fn accel() -> String {
    std::env::var("FERRY_ACCEL").unwrap_or_else(|_| "tcg".into())
}

/// The `-accel` argument. TCG runs its vCPUs on one host thread: with one thread per vCPU (MTTCG), the
/// guest kernel's live code patching (static keys, flipped when modules load) races with another vCPU
/// executing the patched bytes, and the guest dies with "Oops: int3" now and then. Seen in our disk suite.
pub fn accel_arg() -> String {
    match accel().as_str() {
        "tcg" => "tcg,thread=single".into(),
        other => other.into(),
    }
}

impl Launch {
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-machine".into(), "q35".into(),
            "-accel".into(), accel_arg(),
            "-cpu".into(), if accel() == "kvm" { "host".into() } else { "max".into() },
            "-m".into(), self.memory_mb.to_string(),
            "-smp".into(), self.cpus.to_string(),
            "-kernel".into(), self.kernel.display().to_string(),
            "-initrd".into(), self.initrd.display().to_string(),
            "-append".into(), self.append.clone(),
            "-display".into(), "none".into(),
            "-vga".into(), "none".into(),
            "-serial".into(), format!("file:{}", self.console_log.display()),
            "-qmp".into(), format!("unix:{},server=on,wait=off", self.qmp.display()),
            "-device".into(), "virtio-rng-pci".into(),
        ];
        let fwd: String = self.forwards.iter().map(|(h, g)| format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}")).collect();
        a.extend(["-netdev".into(), format!("user,id=net0{fwd}"), "-device".into(), "virtio-net-pci,netdev=net0".into()]);
        for (i, d) in self.disks.iter().enumerate() {
            a.extend(d.args(i));
        }
        if let Some(u) = &self.fw_cfg_userdata {
            a.extend(["-fw_cfg".into(), format!("name=opt/ferry/userdata.tar,file={}", u.display())]);
        }
        a
    }

    /// Start in the background (QEMU daemonises itself and writes the pidfile).
    pub fn start(&self) -> Result<()> {
        let _ = std::fs::remove_file(&self.console_log);
        let mut args = self.args();
        args.extend(["-daemonize".into(), "-pidfile".into(), self.pidfile.display().to_string()]);
        crate::util::run(std::process::Command::new("qemu-system-x86_64").args(&args)).map(|_| ())
    }
}

pub fn pid(pidfile: &Path) -> Option<i32> {
    let p: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    // SAFETY: kill with signal 0 only checks existence.
    (unsafe { libc::kill(p, 0) } == 0).then_some(p)
}

/// Send one QMP command (after the capabilities handshake); returns the reply line.
pub fn qmp(sock: &Path, command: &str) -> Result<String> {
    let s = UnixStream::connect(sock).ctx(|| format!("connect QMP {}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ctx(|| "QMP timeout".into())?;
    let mut r = BufReader::new(s.try_clone().ctx(|| "QMP".into())?);
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).ctx(|| "QMP greeting".into())?;
    for cmd in ["qmp_capabilities", command] {
        w.write_all(format!("{{\"execute\":\"{cmd}\"}}\n").as_bytes()).ctx(|| format!("QMP {cmd}"))?;
        loop {
            line.clear();
            if r.read_line(&mut line).ctx(|| format!("QMP {cmd} reply"))? == 0 {
                return Err(Error::msg(format!("QMP closed during {cmd}")));
            }
            if line.contains("\"return\"") || line.contains("\"error\"") {
                break;
            }
        }
        if line.contains("\"error\"") {
            return Err(Error::msg(format!("QMP {cmd}: {}", line.trim())));
        }
    }
    Ok(line)
}

/// Wait for the process in `pidfile` to exit.
pub fn wait_exit(pidfile: &Path, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if pid(pidfile).is_none() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}
