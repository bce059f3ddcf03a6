//! Hypervisor guest services (Hyper-V's KVP and VSS daemons, VMware's vmtoolsd), started only on their
//! own hypervisor. The decision needs two facts, so a look-alike never gets a daemon that would exit at
//! once and be restarted forever: the firmware's DMI names the hypervisor, and the device the daemon talks
//! to exists. QEMU can claim to be VMware in its DMI tables, but it has no VMCI device.
// boot2docker's log directory, shared with the hooks' logs.
use crate::services::{Output, ServiceSpec};
use ferry_contract::paths::PERSISTENT_LOG_DIR as LOG_DIR;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hypervisor {
    HyperV,
    VMware,
}

/// The SMBIOS system fields, as /sys/class/dmi/id shows them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Dmi {
    pub sys_vendor: String,
    pub product_name: String,
}

impl Dmi {
    pub fn read(dir: &Path) -> Dmi {
        let f = |n: &str| std::fs::read_to_string(dir.join(n)).map(|s| s.trim().to_string()).unwrap_or_default();
        Dmi { sys_vendor: f("sys_vendor"), product_name: f("product_name") }
    }

    /// Which hypervisor the firmware names, if it is one with guest services here.
    pub fn hypervisor(&self) -> Option<Hypervisor> {
        match (self.sys_vendor.as_str(), self.product_name.as_str()) {
            ("Microsoft Corporation", "Virtual Machine") => Some(Hypervisor::HyperV),
            ("VMware, Inc.", _) => Some(Hypervisor::VMware),
            _ => None,
        }
    }
}

/// What must exist for a daemon to have something to talk to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Needs {
    /// A device node the hypervisor's channel creates (hv_utils makes /dev/vmbus/hv_kvp when Hyper-V
    /// offers KVP).
    Node(&'static str),
    /// A PCI device of the hypervisor's. Not a node: vmw_vmci makes /dev/vmci as soon as it loads (it
    /// comes with vmw_balloon on anything claiming to be VMware), device or not.
    Pci { vendor: u16, device: u16, what: &'static str },
}

impl std::fmt::Display for Needs {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Needs::Node(p) => write!(f, "{p}"),
            Needs::Pci { vendor, device, what } => write!(f, "{what} (PCI {vendor:04x}:{device:04x})"),
        }
    }
}

pub struct GuestService {
    pub on: Hypervisor,
    pub needs: Needs,
    pub spec: ServiceSpec,
}

/// The guest services, as data. Each runs in the foreground under the supervisor, logging to
/// /var/lib/boot2docker/log/NAME.log.
pub const GUEST_SERVICES: &[GuestService] = &[
    // Key-value exchange: the host reads the guest's addresses (Get-VMNetworkAdapter, docker-machine's
    // hyperv driver).
    GuestService {
        on: Hypervisor::HyperV,
        needs: Needs::Node("/dev/vmbus/hv_kvp"),
        spec: ServiceSpec {
            name: "hv_kvp_daemon",
            argv: &["/usr/sbin/hv_kvp_daemon", "-n"],
            output: Output::File("/var/lib/boot2docker/log/hv_kvp_daemon.log"),
            user: None,
        },
    },
    // Volume shadow copy: the host's live backups freeze and thaw the guest's filesystems.
    GuestService {
        on: Hypervisor::HyperV,
        needs: Needs::Node("/dev/vmbus/hv_vss"),
        spec: ServiceSpec {
            name: "hv_vss_daemon",
            argv: &["/usr/sbin/hv_vss_daemon", "-n"],
            output: Output::File("/var/lib/boot2docker/log/hv_vss_daemon.log"),
            user: None,
        },
    },
    // VMware Tools: the guest's address in the UI and docker-machine's vmware drivers, graceful power
    // operations, time sync.
    GuestService {
        on: Hypervisor::VMware,
        needs: Needs::Pci { vendor: 0x15ad, device: 0x0740, what: "VMCI device" },
        spec: ServiceSpec {
            name: "vmtoolsd",
            argv: &["/usr/bin/vmtoolsd"],
            output: Output::File("/var/lib/boot2docker/log/vmtoolsd.log"),
            user: None,
        },
    },
];

/// The services to start for this DMI, given which devices exist; and one line saying why.
pub fn choose(dmi: &Dmi, exists: impl Fn(&Needs) -> bool) -> (Vec<&'static GuestService>, String) {
    let seen = format!("DMI {:?} / {:?}", dmi.sys_vendor, dmi.product_name);
    let Some(h) = dmi.hypervisor() else {
        return (vec![], format!("none ({seen}: no hypervisor with guest services)"));
    };
    let (start, absent): (Vec<&GuestService>, Vec<&GuestService>) =
        GUEST_SERVICES.iter().filter(|s| s.on == h).partition(|s| exists(&s.needs));
    let mut why = format!("{h:?} ({seen})");
    if !start.is_empty() {
        why += &format!("; starting {}", start.iter().map(|s| s.spec.name).collect::<Vec<_>>().join(", "));
    }
    for s in absent {
        why += &format!("; {} not started: no {}", s.spec.name, s.needs);
    }
    (start, why)
}

/// Is this PCI device (vendor, device) on the machine? `sys` is /sys.
pub fn has_pci(sys: &Path, vendor: u16, device: u16) -> bool {
    let id = |p: &Path, f: &str| {
        std::fs::read_to_string(p.join(f)).ok().and_then(|s| u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
    };
    std::fs::read_dir(sys.join("bus/pci/devices"))
        .is_ok_and(|rd| rd.flatten().any(|e| id(&e.path(), "vendor") == Some(vendor) && id(&e.path(), "device") == Some(device)))
}

/// Decide from this machine's DMI and devices; makes the log directory for the chosen ones.
pub fn for_this_machine() -> (Vec<&'static GuestService>, String) {
    let sys = Path::new("/sys");
    let (chosen, why) = choose(&Dmi::read(&sys.join("class/dmi/id")), |n| match n {
        Needs::Node(p) => Path::new(p).exists(),
        Needs::Pci { vendor, device, .. } => has_pci(sys, *vendor, *device),
    });
    if !chosen.is_empty() {
        let _ = std::fs::create_dir_all(LOG_DIR);
    }
    (chosen, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dmi(v: &str, p: &str) -> Dmi {
        Dmi { sys_vendor: v.into(), product_name: p.into() }
    }

    fn names(d: &Dmi, devices: &[&str]) -> Vec<&'static str> {
        choose(d, |n| devices.contains(&n.to_string().as_str())).0.iter().map(|s| s.spec.name).collect()
    }

    #[test]
    fn hyper_v_gets_its_daemons_for_the_channels_it_offers() {
        let hv = dmi("Microsoft Corporation", "Virtual Machine");
        assert_eq!(names(&hv, &["/dev/vmbus/hv_kvp", "/dev/vmbus/hv_vss"]), ["hv_kvp_daemon", "hv_vss_daemon"]);
        assert_eq!(names(&hv, &["/dev/vmbus/hv_kvp"]), ["hv_kvp_daemon"]);
        let (none, why) = choose(&hv, |_| false);
        assert!(none.is_empty());
        assert!(why.contains("hv_kvp_daemon not started: no /dev/vmbus/hv_kvp"), "{why}");
        // A Surface or another Microsoft machine is not Hyper-V.
        assert!(names(&dmi("Microsoft Corporation", "Surface Laptop 5"), &["/dev/vmbus/hv_kvp"]).is_empty());
    }

    #[test]
    fn vmware_gets_vmtoolsd_only_with_its_vmci_device() {
        let vm = dmi("VMware, Inc.", "VMware7,1");
        assert_eq!(names(&vm, &["VMCI device (PCI 15ad:0740)"]), ["vmtoolsd"]);
        // The /dev/vmci node alone (vmw_vmci loaded on a look-alike) is not enough.
        assert!(names(&vm, &["/dev/vmci"]).is_empty());
        let (none, why) = choose(&vm, |_| false);
        assert!(none.is_empty() && why.contains("vmtoolsd not started: no VMCI device (PCI 15ad:0740)"), "{why}");
    }

    #[test]
    fn pci_devices_are_found_by_vendor_and_device() {
        let sys = std::env::temp_dir().join(format!("ferry-pci-{}", std::process::id()));
        for (slot, vendor, device) in [("0000:00:07.7", "0x15ad", "0x0740"), ("0000:00:11.0", "0x15ad", "0x07b0")] {
            let d = sys.join("bus/pci/devices").join(slot);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(d.join("device"), format!("{device}\n")).unwrap();
        }
        assert!(has_pci(&sys, 0x15ad, 0x0740));
        assert!(!has_pci(&sys, 0x15ad, 0x0405));
        let _ = std::fs::remove_dir_all(&sys);
        assert!(!has_pci(&sys, 0x15ad, 0x0740));
    }

    #[test]
    fn other_machines_start_nothing() {
        for (v, p) in [("QEMU", "Standard PC (Q35 + ICH9, 2009)"), ("innotek GmbH", "VirtualBox"), ("Dell Inc.", "OptiPlex 7090"), ("", "")]
        {
            let (chosen, why) = choose(&dmi(v, p), |_| true);
            assert!(chosen.is_empty(), "{v} {p}");
            assert!(why.starts_with("none"), "{why}");
        }
    }

    #[test]
    fn every_service_logs_under_the_boot2docker_log_directory() {
        for s in GUEST_SERVICES {
            assert_eq!(s.spec.output, Output::File(Box::leak(format!("{LOG_DIR}/{}.log", s.spec.name).into_boxed_str())));
        }
    }
}
