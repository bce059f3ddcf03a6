//! The bootable media, end to end:
//! - validators: xorriso's El Torito report, fsck.fat on both ESPs, sgdisk/fdisk on the partition tables,
//!   the volume id docker-machine reads, the kernel and initrd stored once;
//! - a second clean build (same inputs, same SOURCE_DATE_EPOCH), by a copy of ferry run outside the
//!   checkout, gives bit-identical artefacts; bad
//!   SOURCE_DATE_EPOCH values are refused up front and leave nothing in the output directory;
//! - the boot matrix under QEMU TCG: every firmware/medium/hardware combination boots to a running engine
//!   that answers `docker version` over mTLS, and the guest confirms how it was booted (BIOS or UEFI,
//!   Secure Boot and lockdown, e1000, the data disk). Two machines boot at a time (CI has two cores).
use ferry_builder::machine::Machine;
use ferry_builder::qemu::{Bus, Drive, Firmware, Hardware};
use qemu_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    isolate_guests();
    let cases = Cases::from_args("media", &["validators", "reproducible", "boot-matrix"]);
    let mut r = Report::default();
    println!("media: Ferry's ISO and raw image ({}), ferry = {}", ferry_builder::qemu::accel(), ferry_bin().display());
    let home = std::env::temp_dir().join(format!("ferry-media-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let _ = std::fs::create_dir_all(&home);
    std::env::set_var("FERRY_HOME", &home);
    let _guard = KillGuard { home: home.clone() };

    cases.run("validators", || validators(&mut r, &home));
    cases.run("reproducible", || reproducible(&mut r, &home));
    cases.run("boot-matrix", || boot_matrix(&mut r, &home));
    let _ = std::fs::remove_dir_all(&home);
    cases.finish(r);
}

fn tool(cmd: &mut Command) -> Result<String, String> {
    run(cmd, None, 5 * MIN)
}

fn u32_le(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as u64
}

/// Copy `len` bytes at `offset` of `src` into a file of its own (for fsck.fat).
fn carve(src: &Path, offset: u64, len: u64, dst: &Path) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(src).map_err(|e| format!("open {}: {e}", src.display()))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).map_err(|e| format!("read {}: {e}", src.display()))?;
    std::fs::write(dst, buf).map_err(|e| e.to_string())
}

fn validators(r: &mut Report, home: &Path) {
    let out = out_dir();
    let iso = out.join("ferry.iso");
    let img = out.join("ferry.img");
    let head = std::fs::read(&iso).map(|b| b[..0x10000.min(b.len())].to_vec()).unwrap_or_default();
    if !r.check(
        "out/ferry.iso and out/ferry.img exist",
        if head.len() == 0x10000 && img.is_file() { Ok(String::new()) } else { Err("run ferry build".into()) },
    ) {
        return;
    }
    r.check(
        "xorriso: El Torito has a BIOS (ISOLINUX, boot-info-table) and a UEFI entry",
        (|| {
            let rep = tool(Command::new("xorriso").args(["-indev"]).arg(&iso).args(["-report_el_torito", "plain"]))?;
            let bios = rep.lines().any(|l| l.contains("El Torito boot img") && l.contains("BIOS") && l.contains("none"));
            let uefi = rep.lines().any(|l| l.contains("El Torito boot img") && l.contains("UEFI"));
            let opts = rep.contains("boot-info-table")
                && rep.contains("isohybrid-suitable")
                && rep.contains("/ISOLINUX/ISOLINUX.BIN")
                && rep.contains("/EFIBOOT.IMG");
            if bios && uefi && opts {
                Ok(String::new())
            } else {
                Err(rep)
            }
        })(),
    );
    r.check("volume id at 0x8028 carries -v<version> (docker-machine reads it)", {
        let id = String::from_utf8_lossy(&head[0x8028..0x8048]).trim().to_string();
        let want = format!("-v{}", env!("CARGO_PKG_VERSION"));
        if id.contains(&want) {
            Ok(id)
        } else {
            Err(format!("volume id {id:?}, want {want:?}"))
        }
    });
    r.check(
        "isohybrid MBR: isolinux.bin's sector at 432, an active partition, an 0xEF partition",
        (|| {
            let rep = tool(Command::new("xorriso").args(["-indev"]).arg(&iso).args(["-report_el_torito", "plain"]))?;
            let lba: u64 = rep
                .lines()
                .find(|l| l.contains("El Torito boot img") && l.contains("BIOS"))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|x| x.parse().ok())
                .ok_or("no BIOS LBA in xorriso's report")?;
            let fd = tool(Command::new("fdisk").arg("-l").arg(&iso))?;
            let ok = u32_le(&head, 432) == lba * 4
                && head[446] == 0x80
                && head[450 + 16] == 0xEF
                && head[510..512] == [0x55, 0xAA]
                && fd.contains(" ef ");
            if ok {
                Ok(String::new())
            } else {
                Err(format!("isolinux at {lba}, MBR says {}; fdisk:\n{fd}", u32_le(&head, 432)))
            }
        })(),
    );
    r.check(
        "fsck.fat -n passes on the ISO's EFI image",
        (|| {
            let (start, sectors) = (u32_le(&head, 462 + 8), u32_le(&head, 462 + 12));
            let esp = home.join("iso-esp.img");
            carve(&iso, start * 512, sectors * 512, &esp)?;
            tool(Command::new("fsck.fat").arg("-n").arg(&esp)).map(|o| o.lines().last().unwrap_or("").to_string())
        })(),
    );
    r.check(
        "sgdisk -v finds no problems in ferry.img, and fsck.fat -n passes on its ESP",
        (|| {
            let v = tool(Command::new("sgdisk").arg("-v").arg(&img))?;
            if !v.contains("No problems found") {
                return Err(v);
            }
            let p = tool(Command::new("sgdisk").arg("-i").arg("1").arg(&img))?;
            if !p.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B") {
                return Err(format!("partition 1 is not an EFI system partition: {p}"));
            }
            let num = |key: &str| {
                p.lines().find_map(|l| l.strip_prefix(key)).and_then(|x| x.split_whitespace().next()).and_then(|x| x.parse::<u64>().ok())
            };
            let (first, last) = (num("First sector: ").ok_or("no first sector")?, num("Last sector: ").ok_or("no last sector")?);
            let esp = home.join("img-esp.img");
            carve(&img, first * 512, (last + 1 - first) * 512, &esp)?;
            tool(Command::new("fsck.fat").arg("-n").arg(&esp)).map(|o| o.lines().last().unwrap_or("").to_string())
        })(),
    );
    r.check(
        "kernel, initrd and boot files read back from the ISO 9660 tree and the ESP",
        (|| {
            let x = home.join("x");
            let _ = std::fs::create_dir_all(&x);
            for (from, to) in [("/VMLINUZ", "vmlinuz"), ("/INITRD.IMG", "initrd.img"), ("/ISOLINUX/ISOLINUX.CFG", "isolinux.cfg")] {
                tool(Command::new("xorriso").args(["-osirrox", "on", "-indev"]).arg(&iso).args(["-extract", from]).arg(x.join(to)))?;
            }
            for f in ["vmlinuz", "initrd.img"] {
                if sha256_file(&x.join(f)) != sha256_file(&out.join(f)) {
                    return Err(format!("{f} read from the ISO differs from out/{f}"));
                }
            }
            let cfg = std::fs::read_to_string(x.join("isolinux.cfg")).unwrap_or_default();
            for want in ["  kernel /vmlinuz", "  initrd /initrd.img", "  append console="] {
                if !cfg.lines().any(|l| l.starts_with(want)) {
                    return Err(format!("isolinux.cfg lacks an indented {want:?} line:\n{cfg}"));
                }
            }
            let esp = home.join("img-esp.img");
            let entry = tool(Command::new("mtype").arg("-i").arg(&esp).arg("::/loader/entries/ferry.conf"))?;
            let shim = tool(Command::new("mdir").arg("-i").arg(&esp).arg("::/EFI/BOOT"))?;
            if !entry.contains("linux   /vmlinuz") || !shim.contains("BOOTX64") || !shim.contains("grubx64.efi") {
                return Err(format!("ESP contents: {entry}\n{shim}"));
            }
            Ok(String::new())
        })(),
    );
    r.check("kernel and initrd are stored once (the ISO is not much larger than them)", {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let payload = size(&out.join("vmlinuz")) + size(&out.join("initrd.img"));
        let iso_size = size(&iso);
        // Boot loaders (~2.5 MiB), FAT and ISO metadata, padding to a whole 1 MiB cylinder.
        if payload > 0 && iso_size < payload + (8 << 20) {
            Ok(format!("ISO {iso_size} bytes, kernel+initrd {payload}"))
        } else {
            Err(format!("ISO {iso_size} bytes vs kernel+initrd {payload}"))
        }
    });
}

fn manifest_epoch() -> Option<i64> {
    let m = std::fs::read_to_string(out_dir().join("manifest.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&m).ok()?;
    v["source_date_epoch"].as_i64()
}

/// `ferry build` into `dir` by a copy of ferry outside the checkout, run from elsewhere: what it builds
/// comes from what the binary carries, not from the checkout.
fn build_into(dir: &Path, epoch: &str) -> Result<String, String> {
    let elsewhere = dir.with_extension("bin");
    std::fs::create_dir_all(&elsewhere).map_err(|e| format!("create {}: {e}", elsewhere.display()))?;
    let bin = elsewhere.join("ferry");
    std::fs::copy(ferry_bin(), &bin).map_err(|e| format!("copy ferry to {}: {e}", bin.display()))?;
    let o = run(
        Command::new(&bin)
            .arg("build")
            .current_dir(&elsewhere)
            .env("FERRY_OUT", dir)
            .env("SOURCE_DATE_EPOCH", epoch)
            .env_remove("FERRY_REPO"),
        None,
        30 * MIN,
    );
    let _ = std::fs::remove_dir_all(&elsewhere);
    o
}

fn reproducible(r: &mut Report, home: &Path) {
    for (bad, why) in [("yesterday", "not a number"), ("99999999999", "after 2106"), ("100", "before 1980")] {
        r.check(&format!("SOURCE_DATE_EPOCH={bad} ({why}) is refused and leaves nothing behind"), {
            let dir = home.join(format!("bad-epoch-{bad}"));
            let _ = std::fs::create_dir_all(&dir);
            match build_into(&dir, bad) {
                Ok(o) => Err(format!("build succeeded: {o}")),
                Err(e) if !e.contains("SOURCE_DATE_EPOCH") => Err(format!("error does not name SOURCE_DATE_EPOCH: {e}")),
                Err(_) => {
                    let left: Vec<String> = std::fs::read_dir(&dir)
                        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect())
                        .unwrap_or_default();
                    if left.is_empty() {
                        Ok(String::new())
                    } else {
                        Err(format!("left in the output directory: {left:?}"))
                    }
                }
            }
        });
    }
    let Some(epoch) = manifest_epoch() else {
        r.check("a second build reproduces out/ bit for bit", Err("out/manifest.json has no source_date_epoch".into()));
        return;
    };
    let dir = home.join("rebuild");
    let t = Instant::now();
    let built = build_into(&dir, &epoch.to_string());
    r.check(
        "a second clean build, by a copy of ferry outside the checkout (same inputs and SOURCE_DATE_EPOCH), gives bit-identical initrd.img, ferry.iso, ferry.img",
        built.and_then(|_| {
            let mut diffs = Vec::new();
            for f in ["initrd.img", "ferry.iso", "ferry.img", "vmlinuz"] {
                let (a, b) = (sha256_file(&out_dir().join(f)), sha256_file(&dir.join(f)));
                if a.is_none() || a != b {
                    diffs.push(format!("{f}: {a:?} vs {b:?}"));
                }
            }
            if diffs.is_empty() {
                Ok(format!("rebuilt in {:.0}s", t.elapsed().as_secs_f64()))
            } else {
                Err(diffs.join("; "))
            }
        }),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

struct Case {
    name: &'static str,
    what: &'static str,
    chipset: &'static str,
    uefi: bool,
    secure_boot: bool,
    nic: &'static str,
    /// The driver eth0 must be bound to ("" = not checked).
    nic_driver: &'static str,
    no_defaults: bool,
    medium: &'static str,
    bus: Bus,
    /// A format-me data disk next to the medium, on this bus.
    data: Option<Bus>,
    /// More QEMU arguments: devices (a USB keyboard), the DMI a hypervisor shows (-smbios).
    extra: &'static [&'static str],
    /// How the console's "guest tools:" line must begin: the hypervisor decided from DMI.
    tools: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "vmware",
        what: "VMware-like: i440fx, SeaBIOS, ISO as AHCI CD-ROM, vmxnet3, data disk on PVSCSI, VMware's DMI",
        chipset: "pc",
        uefi: false,
        secure_boot: false,
        nic: "vmxnet3",
        nic_driver: "vmxnet3",
        no_defaults: false,
        medium: "ferry.iso",
        bus: Bus::Cdrom,
        data: Some(Bus::Pvscsi),
        extra: &["-smbios", "type=1,manufacturer=VMware,, Inc.,product=VMware Virtual Platform"],
        tools: "VMware (",
    },
    Case {
        name: "bios-usb",
        what: "SeaBIOS + ISO as a USB disk, e1000",
        chipset: "q35",
        uefi: false,
        secure_boot: false,
        nic: "e1000",
        nic_driver: "e1000",
        no_defaults: false,
        medium: "ferry.iso",
        bus: Bus::Usb,
        data: None,
        extra: &[],
        tools: "none (",
    },
    Case {
        name: "uefi-cd",
        what: "OVMF + ISO as CD-ROM",
        chipset: "q35",
        uefi: true,
        secure_boot: false,
        nic: "virtio-net-pci",
        nic_driver: "",
        no_defaults: false,
        medium: "ferry.iso",
        bus: Bus::Cdrom,
        data: None,
        extra: &[],
        tools: "none (",
    },
    Case {
        name: "uefi-usb",
        what: "OVMF + ISO as a USB disk",
        chipset: "q35",
        uefi: true,
        secure_boot: false,
        nic: "virtio-net-pci",
        nic_driver: "",
        no_defaults: false,
        medium: "ferry.iso",
        bus: Bus::Usb,
        data: None,
        extra: &[],
        tools: "none (",
    },
    Case {
        name: "metal",
        what: "bare-metal-like: OVMF, ferry.img on SATA, data disk on USB behind xHCI, USB keyboard, RTL8139",
        chipset: "q35",
        uefi: true,
        secure_boot: false,
        nic: "rtl8139",
        nic_driver: "8139",
        no_defaults: false,
        medium: "ferry.img",
        bus: Bus::Ahci,
        data: Some(Bus::Usb),
        extra: &["-device", "usb-kbd,bus=xhci.0"],
        tools: "none (",
    },
    Case {
        name: "secureboot",
        what: "OVMF with Secure Boot enforced (Microsoft keys) + ISO as CD-ROM",
        chipset: "q35",
        uefi: true,
        secure_boot: true,
        nic: "virtio-net-pci",
        nic_driver: "",
        no_defaults: false,
        medium: "ferry.iso",
        bus: Bus::Cdrom,
        data: None,
        extra: &[],
        tools: "none (",
    },
    Case {
        name: "vbox",
        what: "VirtualBox-like: i440fx, SeaBIOS, AHCI CD + AHCI data disk, PCnet, VirtualBox's DMI",
        chipset: "pc",
        uefi: false,
        secure_boot: false,
        nic: "pcnet",
        nic_driver: "pcnet32",
        no_defaults: false,
        medium: "ferry.iso",
        bus: Bus::Cdrom,
        data: Some(Bus::Ahci),
        extra: &["-smbios", "type=1,manufacturer=innotek GmbH,product=VirtualBox"],
        tools: "none (",
    },
    Case {
        name: "hyperv2",
        what: "Hyper-V-Gen2-like: q35, OVMF, no default devices, ISO on SCSI, Hyper-V's DMI",
        chipset: "q35",
        uefi: true,
        secure_boot: false,
        nic: "virtio-net-pci",
        nic_driver: "",
        no_defaults: true,
        medium: "ferry.iso",
        bus: Bus::ScsiCdrom,
        data: None,
        extra: &["-smbios", "type=1,manufacturer=Microsoft Corporation,product=Virtual Machine"],
        tools: "HyperV (",
    },
];

/// Boot one case and run its checks; returns (check name, result) pairs in order.
fn boot_case(home: &Path, c: &Case) -> Vec<(String, Result<String, String>)> {
    let mut out = Vec::new();
    let tag = |s: &str| format!("[{}] {s}", c.name);
    let m = match Machine::named(c.name) {
        Ok(m) => m,
        Err(e) => return vec![(tag("machine"), Err(e.to_string()))],
    };
    let started = (|| -> Result<(), String> {
        m.create(c.data.map(|_| 3 << 30)).map_err(|e| e.to_string())?;
        let mut l = m.launch(&out_dir(), "").map_err(|e| e.to_string())?;
        l.direct = None;
        let firmware =
            if c.uefi { Firmware::uefi(m.path("OVMF_VARS.fd"), c.secure_boot).map_err(|e| e.to_string())? } else { Firmware::Bios };
        l.hardware = Hardware { chipset: c.chipset, firmware, nic: c.nic, no_defaults: c.no_defaults };
        let mut medium = Drive::new(out_dir().join(c.medium), "raw");
        medium.bus = c.bus;
        medium.snapshot = true;
        // The boot medium first; the data disk (if any) moves to the case's bus.
        for d in &mut l.disks {
            d.bus = c.data.unwrap_or(Bus::Ahci);
        }
        l.disks.insert(0, medium);
        l.extra.extend(c.extra.iter().map(|a| a.to_string()));
        l.start().map_err(|e| e.to_string())
    })();
    if let Err(e) = started {
        return vec![(tag(&format!("{} starts", c.what)), Err(e))];
    }
    let t = Instant::now();
    let ready = wait_ping(&m, 12 * MIN);
    let ok = ready.is_ok();
    out.push((
        tag(&format!("{}: boots to a running engine (/_ping over mTLS)", c.what)),
        ready.map(|_| format!("{:.0}s", t.elapsed().as_secs_f64())),
    ));
    if !ok {
        println!("--- [{}] console ---\n{}\n---", c.name, ferry_builder::machine::console_tail(&m, 60));
        kill_qemu(&m.path("qemu.pid"));
        return out;
    }
    let env = match ferry(home, &["env", c.name], MIN).ok().and_then(|o| DockerEnv::parse(&o)) {
        Some(e) => e,
        None => return vec![(tag("ferry env"), Err("no exports".into()))],
    };
    out.push((
        tag("docker version over mTLS (dockerd 26.x)"),
        contains(env.run(&["version", "--format", "{{.Server.Version}}"], None, 3 * MIN), "26."),
    ));
    let ssh = |cmd: &str| ferry(home, &["ssh", c.name, "--", cmd], 3 * MIN);
    let mode = if c.uefi { "uefi" } else { "bios" };
    out.push((
        tag(&format!("guest booted through {mode} firmware, command line from the medium")),
        contains(ssh("(test -d /sys/firmware/efi && echo fw=uefi || echo fw=bios); cat /proc/cmdline"), &format!("fw={mode}"))
            .and_then(|_| contains(ssh("cat /proc/cmdline"), "console=ttyS0")),
    ));
    if c.secure_boot {
        let sb = ssh("sudo dmesg | grep -i -e 'secure boot' -e 'locked down'; sudo sh -c 'mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security; cat /sys/kernel/security/lockdown'");
        out.push((
            tag("kernel reports Secure Boot on and lockdown active"),
            sb.and_then(|o| {
                let on = o.contains("Secure boot enabled");
                let locked = o.contains("[integrity]") || o.contains("[confidentiality]");
                if on && locked {
                    Ok(String::new())
                } else {
                    Err(o)
                }
            }),
        ));
        let mods = ssh("wc -l < /proc/modules; sudo dmesg | grep -i -e 'module verification failed' -e 'unsigned module' -e 'Lockdown:.*module' || true");
        out.push((
            tag("Debian-signed modules load under lockdown, none refused"),
            mods.and_then(|o| {
                let n: usize = o.lines().next().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
                if n >= 5 && o.lines().count() == 1 {
                    Ok(format!("{n} modules"))
                } else {
                    Err(o)
                }
            }),
        ));
    }
    if !c.nic_driver.is_empty() {
        out.push((
            tag(&format!("the NIC ({}) is driven by {}", c.nic, c.nic_driver)),
            contains(ssh("basename $(readlink /sys/class/net/eth0/device/driver)"), c.nic_driver),
        ));
    }
    if let Some(bus) = c.data {
        // Whatever its name (the medium may be sda), the format-me disk was formatted and holds /var/lib,
        // behind the expected controller.
        let via = match bus {
            Bus::Usb => "usb",
            Bus::Pvscsi => "vmw_pvscsi",
            _ => "ahci",
        };
        out.push((
            tag(&format!("the format-me disk on {bus:?} is formatted and holds /var/lib")),
            ssh("d=$(awk '$2==\"/var/lib\" {print $1}' /proc/mounts); b=$(basename $d | sed 's/[0-9]*$//'); echo dev=$d; \
                 readlink -f /sys/block/$b; cat /proc/modules | cut -d' ' -f1")
            .and_then(|o| {
                let dev = o.lines().next().and_then(|l| l.strip_prefix("dev=")).unwrap_or("").to_string();
                let disk = dev.trim_end_matches(|ch: char| ch.is_ascii_digit()).to_string();
                let behind = if bus == Bus::Usb { o.contains("/usb") } else { o.lines().any(|l| l == via) };
                if dev.starts_with("/dev/sd") && behind {
                    console_has(&m, &[&format!("disk: formatting {disk}")]).map(|_| dev)
                } else {
                    Err(format!("not on {via}: {o}"))
                }
            }),
        ));
    }
    if c.extra.iter().any(|a| a.starts_with("usb-kbd")) {
        out.push((
            tag("the USB keyboard is an input device with a keyboard handler (xhci_pci, usbhid)"),
            ssh("grep -A5 'USB Keyboard' /proc/bus/input/devices; cat /proc/modules | cut -d' ' -f1").and_then(|o| {
                if o.contains("kbd") && o.lines().any(|l| l == "usbhid") && o.lines().any(|l| l == "xhci_pci") {
                    Ok(String::new())
                } else {
                    Err(o)
                }
            }),
        ));
    }
    // The daemons the DMI asked for are in the image and run (their libraries were not trimmed away);
    // QEMU just lacks the device they would serve.
    let daemons = match c.tools {
        // vmtoolsd exits at once off VMware (a CPUID check), so its libraries and plugins are resolved
        // by the dynamic loader instead; a missing one says "not found".
        "VMware (" => Some((
            "LD_TRACE_LOADED_OBJECTS=1 /usr/bin/vmtoolsd; for p in /usr/lib/x86_64-linux-gnu/open-vm-tools/plugins/*/*.so; \
             do /lib64/ld-linux-x86-64.so.2 --list $p; done | grep -e 'not found' -e libglib | sort -u",
            "libglib-2.0.so.0 =>",
        )),
        "HyperV (" => Some(("/usr/sbin/hv_kvp_daemon -h 2>&1; /usr/sbin/hv_vss_daemon -h 2>&1", "Usage")),
        _ => None,
    };
    if let Some((cmd, want)) = daemons {
        let o = ssh(cmd).and_then(|o| if o.contains("not found") { Err(o) } else { Ok(o) });
        out.push((tag("the guest daemons' binaries and libraries are all in the image"), contains(o, want)));
    }
    // Guest services follow the DMI and the hypervisor's own devices, which QEMU never has: each case
    // names its hypervisor, and none starts a daemon or logs a service failure.
    out.push((
        tag(&format!("guest tools: {}…, no daemon started, no service failed", c.tools)),
        console_has(&m, &[&format!("guest tools: {}", c.tools)]).and_then(|_| {
            let o = ssh("pgrep -l 'vmtoolsd|hv_kvp|hv_vss' || echo no-daemons")?;
            let log = std::fs::read_to_string(m.path("console.log")).unwrap_or_default();
            let line = log.lines().find(|l| l.contains("guest tools:")).unwrap_or("").trim().to_string();
            if o.contains("no-daemons") && !log.contains("failed to start") && !line.contains("starting") {
                Ok(line)
            } else {
                Err(o)
            }
        }),
    ));
    kill_qemu(&m.path("qemu.pid"));
    out
}

fn wait_ping(m: &Machine, limit: Duration) -> Result<(), String> {
    let cfg = std::sync::Arc::new(ferry_builder::ping::client_config(&m.dir).map_err(|e| e.to_string())?);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], m.ports().map_err(|e| e.to_string())?.api));
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if ferry_builder::ping::ping(addr, cfg.clone()) {
            return Ok(());
        }
        if m.pid().is_none() {
            return Err("QEMU exited".into());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Err(format!("no /_ping answer within {}s", limit.as_secs()))
}

fn boot_matrix(r: &mut Report, home: &Path) {
    let parallel: usize = std::env::var("FERRY_TEST_PARALLEL").ok().and_then(|v| v.parse().ok()).unwrap_or(2).max(1);
    let only = std::env::var("FERRY_MEDIA_CASES").ok();
    let cases: Vec<&Case> = CASES.iter().filter(|c| only.as_deref().is_none_or(|o| o.split(',').any(|n| n == c.name))).collect();
    if only.is_some() {
        println!("media: FERRY_MEDIA_CASES={} runs {} of {} boot cases", only.as_deref().unwrap_or(""), cases.len(), CASES.len());
    }
    for chunk in cases.chunks(parallel) {
        let results: Vec<Vec<(String, Result<String, String>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk.iter().map(|c| s.spawn(move || boot_case(home, c))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| vec![("boot thread".into(), Err("panicked".into()))])).collect()
        });
        for (name, res) in results.into_iter().flatten() {
            r.check(&name, res);
        }
    }
}
