//! QEMU: command line for a machine, daemonised start, QMP (ACPI power-down), waiting for exit.
use crate::error::{Context, Error, Result};
use ferry_contract::paths;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct Launch {
    /// QEMU loads the kernel itself (`ferry up`); `None` boots through the firmware from the drives.
    pub direct: Option<DirectKernel>,
    pub hardware: Hardware,
    pub memory_mb: u32,
    pub cpus: u32,
    pub fw_cfg_userdata: Option<PathBuf>,
    pub disks: Vec<Drive>,
    /// (host port, guest port) forwards on 127.0.0.1.
    pub forwards: Vec<(u16, u16)>,
    pub console_log: PathBuf,
    pub qmp: PathBuf,
    pub pidfile: PathBuf,
    /// Host folders over virtio-9p, and the fw_cfg file telling init where each goes.
    pub shares: Vec<crate::shares::HostShare>,
    pub fw_cfg_shares: Option<PathBuf>,
    /// The guest may not reach the host or beyond (slirp `restrict=on`; the forwards still work). The test
    /// suites set `FERRY_NET_RESTRICT=1` so no guest of theirs sends traffic off this machine.
    pub restrict: bool,
    /// NICs on shared networks (network.rs), after the user network's: the guest's eth1, eth2, ...
    pub lans: Vec<Lan>,
    /// Appended as they are: `FERRY_QEMU_ARGS` (a debugging and testing hook, e.g. `-rtc base=...`).
    pub extra: Vec<String>,
}

/// A NIC whose frames go, one per datagram, from `local` (QEMU binds it) to a network's switch at `remote`.
#[derive(Debug, Clone, PartialEq)]
pub struct Lan {
    pub local: PathBuf,
    pub remote: PathBuf,
    pub mac: String,
}

pub struct DirectKernel {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub append: String,
}

/// The emulated machine: chipset, firmware, NIC. The default is what `ferry up` runs (q35, SeaBIOS, virtio).
#[derive(Debug, Clone, PartialEq)]
pub struct Hardware {
    /// `q35` (PCIe, built-in AHCI) or `pc` (i440fx, as VirtualBox and Hyper-V Gen1 present).
    pub chipset: &'static str,
    pub firmware: Firmware,
    /// `virtio-net-pci`, or `e1000` (VirtualBox's default NIC).
    pub nic: &'static str,
    /// `-nodefaults`: no default CD-ROM, floppy, VGA or NIC (a "legacy-free" machine).
    pub no_defaults: bool,
}

impl Default for Hardware {
    fn default() -> Self {
        Hardware { chipset: "q35", firmware: Firmware::Bios, nic: "virtio-net-pci", no_defaults: false }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Firmware {
    /// SeaBIOS, QEMU's default.
    Bios,
    /// OVMF (UEFI) from Debian's `ovmf`; `vars` is this machine's writable copy of the variable store.
    /// With `secure_boot`, the Microsoft-keyed build with Secure Boot enforced (needs SMM).
    Uefi { vars: PathBuf, secure_boot: bool },
}

/// The user network's id, for run-time forwards (`hostfwd_add NETDEV ...`).
pub const NETDEV: &str = "net0";

/// `FERRY_QEMU_ARGS`, split on whitespace.
pub fn extra_args() -> Vec<String> {
    std::env::var("FERRY_QEMU_ARGS").map(|v| v.split_whitespace().map(str::to_string).collect()).unwrap_or_default()
}

pub const OVMF_DIR: &str = "/usr/share/OVMF";

impl Firmware {
    /// The firmware image and the variable-store template it starts from.
    pub fn files(secure_boot: bool) -> (PathBuf, PathBuf) {
        let d = Path::new(OVMF_DIR);
        if secure_boot {
            (d.join("OVMF_CODE_4M.ms.fd"), d.join("OVMF_VARS_4M.ms.fd"))
        } else {
            (d.join("OVMF_CODE_4M.fd"), d.join("OVMF_VARS_4M.fd"))
        }
    }

    /// UEFI with a fresh copy of the variable store at `vars`.
    pub fn uefi(vars: PathBuf, secure_boot: bool) -> Result<Firmware> {
        let (code, template) = Firmware::files(secure_boot);
        if !code.is_file() {
            return Err(Error::msg(format!("{} is missing: apt-get install ovmf (./ferry installs it)", code.display())));
        }
        std::fs::copy(&template, &vars).ctx(|| format!("copy {} to {}", template.display(), vars.display()))?;
        Ok(Firmware::Uefi { vars, secure_boot })
    }
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
    /// A CD-ROM drive on the AHCI controller.
    Cdrom,
    /// A USB stick (usb-storage on an xHCI controller).
    Usb,
    /// A CD-ROM drive on virtio-scsi (how Hyper-V Gen2 presents its DVD: SCSI, no IDE).
    ScsiCdrom,
    /// A disk on VMware's paravirtual SCSI controller (PVSCSI): /dev/sdX.
    Pvscsi,
}

#[derive(Debug, Clone)]
pub struct Drive {
    pub path: PathBuf,
    pub format: String,
    pub bus: Bus,
    pub read_only: bool,
    /// Writes go to a temporary overlay and are dropped (boot media attached as a writable hard disk).
    pub snapshot: bool,
}

impl Drive {
    pub fn new(path: PathBuf, format: &str) -> Drive {
        Drive { path, format: format.into(), bus: Bus::Virtio, read_only: false, snapshot: false }
    }
    /// `ahci` names the AHCI controller's buses (`ide` for q35's built-in one).
    fn args(&self, i: usize, ahci: &str) -> Vec<String> {
        let ro = if self.read_only || matches!(self.bus, Bus::Cdrom | Bus::ScsiCdrom) { ",readonly=on" } else { "" };
        let snap = if self.snapshot { ",snapshot=on" } else { "" };
        let media = if matches!(self.bus, Bus::Cdrom | Bus::ScsiCdrom) { ",media=cdrom" } else { "" };
        let drive = format!("file={},format={},if=none,id=disk{i}{ro}{snap}{media}", self.path.display(), self.format);
        let device = match self.bus {
            Bus::Virtio => format!("virtio-blk-pci,drive=disk{i}"),
            Bus::Ahci => format!("ide-hd,drive=disk{i},bus={ahci}.{i}"),
            Bus::Nvme => format!("nvme,drive=disk{i},serial=ferry{i}"),
            Bus::Cdrom => format!("ide-cd,drive=disk{i},bus={ahci}.{i}"),
            Bus::ScsiCdrom => format!("scsi-cd,drive=disk{i},bus=scsi0.0"),
            Bus::Usb => format!("usb-storage,drive=disk{i},bus=xhci.0"),
            Bus::Pvscsi => format!("scsi-hd,drive=disk{i},bus=pvscsi0.0"),
        };
        vec!["-drive".into(), drive, "-device".into(), device]
    }
}

/// `kvm` or `tcg`: see accel.rs (FERRY_ACCEL, else a probe VM under KVM, cached per host).
pub fn accel() -> String {
    crate::accel::choice().kind.name().to_string()
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

/// A VM that boots `kernel` with `initrd` and `ferry.bench=poweroff`, so PID 1 powers it off as soon as it
/// runs: the KVM probe (accel.rs) and the boot bench's kernel-only figure. No devices, no console.
pub fn poweroff_boot(accel: &str, cpu: &str, memory_mb: u32, cpus: u32, kernel: &Path, initrd: &Path) -> std::process::Command {
    let mut c = std::process::Command::new("qemu-system-x86_64");
    c.args(["-machine", "q35", "-accel", accel, "-cpu", cpu, "-m", &memory_mb.to_string(), "-smp", &cpus.to_string()])
        .args(["-display", "none", "-vga", "none", "-nodefaults", "-no-reboot", "-serial", "none", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1 ferry.bench=poweroff"]);
    c
}

impl Launch {
    pub fn args(&self) -> Vec<String> {
        let hw = &self.hardware;
        let secure = matches!(hw.firmware, Firmware::Uefi { secure_boot: true, .. });
        let mut a: Vec<String> = vec![
            // Secure Boot needs SMM, so that only the firmware can write its variable store.
            "-machine".into(),
            if secure { format!("{},smm=on", hw.chipset) } else { hw.chipset.to_string() },
            "-accel".into(),
            accel_arg(),
            "-cpu".into(),
            if accel() == "kvm" { "host".into() } else { "max".into() },
            "-m".into(),
            self.memory_mb.to_string(),
            "-smp".into(),
            self.cpus.to_string(),
        ];
        if hw.no_defaults {
            a.push("-nodefaults".into());
        }
        if let Firmware::Uefi { vars, secure_boot } = &hw.firmware {
            let (code, _) = Firmware::files(*secure_boot);
            if *secure_boot {
                a.extend(["-global".into(), "driver=cfi.pflash01,property=secure,value=on".into()]);
            }
            a.extend([
                "-drive".into(),
                format!("if=pflash,format=raw,unit=0,readonly=on,file={}", code.display()),
                "-drive".into(),
                format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ]);
        }
        if let Some(d) = &self.direct {
            a.extend([
                "-kernel".into(),
                d.kernel.display().to_string(),
                "-initrd".into(),
                d.initrd.display().to_string(),
                "-append".into(),
                d.append.clone(),
            ]);
        }
        a.extend([
            "-display".into(),
            "none".into(),
            "-vga".into(),
            "none".into(),
            "-serial".into(),
            format!("file:{}", self.console_log.display()),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.qmp.display()),
            "-device".into(),
            "virtio-rng-pci".into(),
        ]);
        let fwd: String = self.forwards.iter().map(|(h, g)| format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}")).collect();
        a.extend([
            "-netdev".into(),
            format!("user,id={NETDEV}{}{fwd}", if self.restrict { ",restrict=on" } else { "" }),
            "-device".into(),
            format!("{},netdev={NETDEV}", hw.nic),
        ]);
        // Added after the user network's NIC, so they take the next PCI slots and the guest names them
        // eth1, eth2, ... in this order.
        for (i, l) in self.lans.iter().enumerate() {
            a.extend([
                "-netdev".into(),
                format!(
                    "dgram,id=lan{i},local.type=unix,local.path={},remote.type=unix,remote.path={}",
                    l.local.display(),
                    l.remote.display()
                ),
                "-device".into(),
                format!("{},netdev=lan{i},mac={}", hw.nic, l.mac),
            ]);
        }
        // q35 has an AHCI controller built in; i440fx gets one added (VirtualBox's default SATA controller).
        let ahci = if hw.chipset == "q35" { "ide" } else { "sata" };
        if hw.chipset != "q35" && self.disks.iter().any(|d| matches!(d.bus, Bus::Ahci | Bus::Cdrom)) {
            a.extend(["-device".into(), "ich9-ahci,id=sata".into()]);
        }
        if self.disks.iter().any(|d| d.bus == Bus::ScsiCdrom) {
            a.extend(["-device".into(), "virtio-scsi-pci,id=scsi0".into()]);
        }
        if self.disks.iter().any(|d| d.bus == Bus::Pvscsi) {
            a.extend(["-device".into(), "pvscsi,id=pvscsi0".into()]);
        }
        if self.disks.iter().any(|d| d.bus == Bus::Usb) {
            a.extend(["-device".into(), "qemu-xhci,id=xhci".into()]);
        }
        for (i, d) in self.disks.iter().enumerate() {
            a.extend(d.args(i, ahci));
        }
        if let Some(u) = &self.fw_cfg_userdata {
            a.extend(["-fw_cfg".into(), format!("name={},file={}", paths::FWCFG_USERDATA, u.display())]);
        }
        a.extend(crate::shares::qemu_args(&self.shares));
        if let Some(f) = &self.fw_cfg_shares {
            a.extend(["-fw_cfg".into(), format!("name={},file={}", paths::FWCFG_SHARES, f.display())]);
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Start in the background (QEMU daemonises itself and writes the pidfile).
    pub fn start(&self) -> Result<()> {
        let _ = std::fs::remove_file(&self.console_log);
        // QEMU binds a LAN's socket itself and fails on one left by an earlier run of this machine.
        for l in &self.lans {
            let _ = std::fs::remove_file(&l.local);
        }
        let mut args = self.args();
        args.extend(["-daemonize".into(), "-pidfile".into(), self.pidfile.display().to_string()]);
        let mut cmd = std::process::Command::new("qemu-system-x86_64");
        cmd.args(&args);
        // The slot's lock travels into QEMU and is released when it exits; ours is closed after the spawn.
        let _slot = match vm_slot()? {
            Some(f) => {
                use std::os::fd::AsRawFd;
                use std::os::unix::process::CommandExt;
                let fd = f.as_raw_fd();
                // SAFETY: only fcntl(2) between fork and exec, on a descriptor we own.
                unsafe {
                    cmd.pre_exec(
                        move || if libc::fcntl(fd, libc::F_SETFD, 0) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) },
                    );
                }
                Some(f)
            }
            None => None,
        };
        crate::util::run(&mut cmd).map(|_| ())
    }
}

/// With FERRY_VM_SLOTS=N (`./ferry test` sets it and runs its suites side by side), at most N QEMUs run
/// on this host at once, so that TCG guests never share a core and time out. A slot is an exclusive
/// flock on one of N files; None when no limit is set.
fn vm_slot() -> Result<Option<std::fs::File>> {
    let Some(n) = std::env::var("FERRY_VM_SLOTS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|n| *n > 0) else { return Ok(None) };
    let dir = std::env::var_os("FERRY_VM_SLOT_DIR").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("ferry-vm-slots"));
    std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
    let mut told = false;
    loop {
        for i in 0..n {
            let path = dir.join(format!("slot{i}"));
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .ctx(|| format!("open {}", path.display()))?;
            use std::os::fd::AsRawFd;
            // SAFETY: flock(2) on a descriptor we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Some(f));
            }
        }
        if !told {
            eprintln!("waiting for a free VM slot (FERRY_VM_SLOTS={n})");
            told = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The QEMU that `pidfile` names, while it runs: its command line must give this file as `-pidfile`.
pub fn pid(pidfile: &Path) -> Option<i32> {
    use std::os::unix::ffi::OsStrExt;
    crate::util::live_pid(pidfile, |args| {
        args.windows(2).any(|w| w[0] == b"-pidfile" && crate::util::same_file(Path::new(std::ffi::OsStr::from_bytes(w[1])), pidfile))
    })
}

/// Send one QMP command (after the capabilities handshake); returns the reply line.
pub fn qmp(sock: &Path, command: &str) -> Result<String> {
    qmp_json(sock, &serde_json::json!({ "execute": command }))
}

/// A monitor command through QMP (`human-monitor-command`); returns what the monitor printed, which is
/// where HMP commands such as `hostfwd_add` put their errors.
pub fn hmp(sock: &Path, command_line: &str) -> Result<String> {
    let reply = qmp_json(sock, &serde_json::json!({ "execute": "human-monitor-command", "arguments": { "command-line": command_line } }))?;
    let v: serde_json::Value = serde_json::from_str(&reply).map_err(|e| Error::msg(format!("QMP reply to {command_line:?}: {e}")))?;
    Ok(v.get("return").and_then(|r| r.as_str()).unwrap_or("").to_string())
}

fn qmp_json(sock: &Path, command: &serde_json::Value) -> Result<String> {
    let s = UnixStream::connect(sock).ctx(|| format!("connect QMP {}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ctx(|| "QMP timeout".into())?;
    let mut r = BufReader::new(s.try_clone().ctx(|| "QMP".into())?);
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).ctx(|| "QMP greeting".into())?;
    for cmd in [serde_json::json!({ "execute": "qmp_capabilities" }), command.clone()] {
        let name = cmd.get("execute").and_then(|e| e.as_str()).unwrap_or("?").to_string();
        w.write_all(format!("{cmd}\n").as_bytes()).ctx(|| format!("QMP {name}"))?;
        loop {
            line.clear();
            if r.read_line(&mut line).ctx(|| format!("QMP {name} reply"))? == 0 {
                return Err(Error::msg(format!("QMP closed during {name}")));
            }
            if line.contains("\"return\"") || line.contains("\"error\"") {
                break;
            }
        }
        if line.contains("\"error\"") {
            return Err(Error::msg(format!("QMP {name}: {}", line.trim())));
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

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// A pid file is trusted only while its pid runs with this file as `-pidfile`, however spelled:
    /// never once that process has gone and its pid could be another's.
    #[test]
    fn a_pid_file_names_its_qemu_only_while_that_runs() {
        let dir = std::env::temp_dir().join(format!("ferry-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("qemu.pid");
        std::fs::write(&pidfile, "").unwrap();
        // sh -c's script ignores the rest, which stays on its command line like QEMU's options.
        let spelled = dir.join(".").join("qemu.pid");
        let mut stand_in = Command::new("sh").args(["-c", "sleep 30", "-pidfile"]).arg(&spelled).spawn().unwrap();
        let mut stranger = Command::new("sleep").arg("30").spawn().unwrap();
        std::fs::write(&pidfile, format!("{}\n", stand_in.id())).unwrap();
        assert_eq!(super::pid(&pidfile), Some(stand_in.id() as i32));
        std::fs::write(&pidfile, format!("{}\n", stranger.id())).unwrap();
        assert_eq!(super::pid(&pidfile), None, "a live process that is not this machine's QEMU");
        stranger.kill().unwrap();
        stranger.wait().unwrap();
        stand_in.kill().unwrap();
        stand_in.wait().unwrap();
        std::fs::write(&pidfile, format!("{}\n", stand_in.id())).unwrap();
        assert_eq!(super::pid(&pidfile), None, "the process has gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
