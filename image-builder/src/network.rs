//! Shared networks (`ferry up NAME --network NET`): a private layer-2 segment joining the Ferry machines on
//! this host that name it, next to each machine's own user network (which keeps the API and ssh forwards).
//!
//! Each machine gets a second NIC whose QEMU backend is a unix datagram socket; a small switch process
//! (switch.rs, `ferry _switch NET`) forwards Ethernet frames between the machines' sockets. No root, no
//! host interface, no packet leaves this host. Addresses are fixed: the host CLI gives NET a /24 and each
//! member a host number once, kept in `<home>/networks/NET/network.json`, and the guest gets its address on
//! the kernel command line (`ip=ADDR:::255.255.255.0::ethN:off`, see init's ipconfig.rs).
use crate::error::{Context, Error, Result};
use crate::machine::Machine;
use crate::util::{self, FileLock};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// NET's subnet is 192.168.THIRD.0/24 with THIRD in this range, the lowest one no other network uses.
/// Docker's local networks avoid routes the host already has, and Swarm's overlays come from 10.0.0.0/8.
pub const THIRD_OCTETS: std::ops::RangeInclusive<u8> = 100..=199;
/// Member addresses: .2 upwards (.1 is left for a gateway a user may add by hand; there is none).
pub const HOSTS: std::ops::RangeInclusive<u8> = 2..=254;

#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub name: String,
    pub third: u8,
    /// Machine name -> host number (the last octet).
    pub members: BTreeMap<String, u8>,
}

/// `<home>/networks`, next to `machines` (so FERRY_HOME moves both).
pub fn home() -> PathBuf {
    util::machines_home().join("networks")
}

pub fn check_name(name: &str) -> Result<()> {
    if ferry_contract::names::valid_hostname(name) {
        Ok(())
    } else {
        Err(Error::msg(format!("network name {name:?}: use 1-63 letters, digits or '-'")))
    }
}

/// The lowest number in `range` that `used` lacks.
fn lowest_free(range: std::ops::RangeInclusive<u8>, used: &[u8]) -> Option<u8> {
    range.into_iter().find(|n| !used.contains(n))
}

impl Network {
    pub fn dir_of(name: &str) -> PathBuf {
        home().join(name)
    }
    pub fn dir(&self) -> PathBuf {
        Network::dir_of(&self.name)
    }
    pub fn subnet(&self) -> String {
        format!("192.168.{}.0/24", self.third)
    }
    pub fn addr(&self, machine: &str) -> Option<Ipv4Addr> {
        self.members.get(machine).map(|h| Ipv4Addr::new(192, 168, self.third, *h))
    }
    /// A fixed, locally administered MAC per (network, member): the same NIC identity on every boot.
    pub fn mac(&self, machine: &str) -> Option<String> {
        self.members.get(machine).map(|h| format!("52:54:00:fe:{:02x}:{h:02x}", self.third))
    }
    /// The switch's socket, where every member's QEMU sends its frames.
    pub fn switch_socket(&self) -> PathBuf {
        self.dir().join("switch.sock")
    }
    /// A member's own socket (QEMU binds it; the switch sends that member's frames there). The `m-`
    /// prefix keeps member names apart from the switch's files.
    pub fn member_socket(&self, machine: &str) -> PathBuf {
        self.dir().join(format!("m-{machine}.sock"))
    }

    pub fn to_json(&self) -> String {
        let members: serde_json::Map<String, serde_json::Value> =
            self.members.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(*v))).collect();
        serde_json::json!({ "subnet": self.subnet(), "members": members }).to_string() + "\n"
    }

    pub fn from_json(name: &str, text: &str, source: &Path) -> Result<Network> {
        let bad = |why: &str| Error::msg(format!("{}: {why}; ferry network rm {name} and attach the machines again", source.display()));
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(&format!("not JSON ({e})")))?;
        let subnet = v.get("subnet").and_then(|s| s.as_str()).ok_or_else(|| bad("no subnet"))?;
        let third = subnet
            .strip_prefix("192.168.")
            .and_then(|s| s.strip_suffix(".0/24"))
            .and_then(|s| s.parse::<u8>().ok())
            .filter(|t| THIRD_OCTETS.contains(t))
            .ok_or_else(|| bad(&format!("subnet {subnet:?} is not one Ferry gives out")))?;
        let mut members = BTreeMap::new();
        if let Some(m) = v.get("members").and_then(|m| m.as_object()) {
            for (k, h) in m {
                let h = h.as_u64().and_then(|h| u8::try_from(h).ok()).filter(|h| HOSTS.contains(h));
                match h {
                    Some(h) if ferry_contract::names::valid_hostname(k) => {
                        members.insert(k.clone(), h);
                    }
                    _ => return Err(bad(&format!("member {k:?} has no valid address"))),
                }
            }
        }
        Ok(Network { name: name.to_string(), third, members })
    }

    /// NET as saved, or None when no machine ever joined it.
    pub fn load(name: &str) -> Result<Option<Network>> {
        let f = Network::dir_of(name).join("network.json");
        match std::fs::read_to_string(&f) {
            Ok(t) => Network::from_json(name, &t, &f).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::msg(format!("read {}: {e}", f.display()))),
        }
    }

    fn save(&self) -> Result<()> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        let file = dir.join("network.json");
        ferry_contract::file::write_atomic(&file, self.to_json().as_bytes(), 0o644).ctx(|| format!("save {}", file.display()))
    }

    /// Every network, by name. One that cannot be read is named on stderr (with what to do) and left out.
    pub fn all() -> Vec<Network> {
        let (v, unreadable) = load_all(&home());
        for why in unreadable {
            eprintln!("ferry: {why}");
        }
        v
    }

    /// The networks `machine` belongs to, by name: its NICs eth1, eth2, ... in this order.
    pub fn of(machine: &str) -> Vec<Network> {
        Network::all().into_iter().filter(|n| n.members.contains_key(machine)).collect()
    }

    /// Members whose QEMU runs.
    pub fn running(&self) -> Vec<String> {
        self.members.keys().filter(|m| Machine::named(m).is_ok_and(|m| m.pid().is_some())).cloned().collect()
    }
}

/// The networks under `dir` (one directory each, with its network.json), by name, and a line for each that
/// cannot be read. A directory without network.json (a creation cut short) is no network.
fn load_all(dir: &Path) -> (Vec<Network>, Vec<String>) {
    let (mut nets, mut bad) = (vec![], vec![]);
    let Ok(rd) = std::fs::read_dir(dir) else { return (nets, bad) };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.path().is_dir() || !ferry_contract::names::valid_hostname(&name) {
            continue;
        }
        let f = e.path().join("network.json");
        match std::fs::read_to_string(&f) {
            Ok(t) => match Network::from_json(&name, &t, &f) {
                Ok(n) => nets.push(n),
                Err(e) => bad.push(e.to_string()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bad.push(format!("read {}: {e}", f.display())),
        }
    }
    nets.sort_by(|a, b| a.name.cmp(&b.name));
    (nets, bad)
}

/// The lock on every network's state: membership, subnets, starting and stopping switches.
pub fn lock() -> Result<FileLock> {
    let h = home();
    std::fs::create_dir_all(&h).ctx(|| format!("create {}", h.display()))?;
    FileLock::take(&h.join("lock"), "waiting for another ferry changing networks")
}

/// Put `machine` on each of `nets` (made when new); its other networks stay. A member keeps its address.
pub fn join(machine: &str, nets: &[String]) -> Result<()> {
    for n in nets {
        check_name(n)?;
    }
    let _l = lock()?;
    let all = Network::all();
    let mut used: Vec<u8> = all.iter().map(|n| n.third).collect();
    for name in nets {
        let mut n = match all.iter().find(|n| &n.name == name) {
            Some(n) => n.clone(),
            None => {
                let third = lowest_free(THIRD_OCTETS.clone(), &used).ok_or_else(|| {
                    Error::msg(format!("no free subnet for network {name}: {} networks exist; ferry network rm one", used.len()))
                })?;
                used.push(third);
                Network { name: name.clone(), third, members: BTreeMap::new() }
            }
        };
        if !n.members.contains_key(machine) {
            let hosts: Vec<u8> = n.members.values().copied().collect();
            let h = lowest_free(HOSTS.clone(), &hosts)
                .ok_or_else(|| Error::msg(format!("network {name} is full ({} machines)", hosts.len())))?;
            n.members.insert(machine.to_string(), h);
            n.save()?;
        }
    }
    Ok(())
}

/// Take `machine` off every network (`ferry up --no-network`, `ferry rm`).
pub fn leave_all(machine: &str) -> Result<()> {
    let _l = lock()?;
    for mut n in Network::of(machine) {
        n.members.remove(machine);
        n.save()?;
    }
    Ok(())
}

/// `ferry network rm NET`: refused while a member runs; stopped members are taken off it. Returns them.
pub fn remove(name: &str) -> Result<Vec<String>> {
    check_name(name)?;
    let _l = lock()?;
    let n = match Network::load(name) {
        Ok(Some(n)) => n,
        // Unreadable: no machine can be attached to it anyway; removing it is how it is repaired.
        Err(_) if Network::dir_of(name).is_dir() => {
            std::fs::remove_dir_all(Network::dir_of(name)).ctx(|| format!("remove {}", Network::dir_of(name).display()))?;
            return Ok(vec![]);
        }
        _ => {
            let known: Vec<String> = Network::all().into_iter().map(|n| n.name).collect();
            let hint = if known.is_empty() { "there are none".to_string() } else { format!("there are: {}", known.join(", ")) };
            return Err(Error::msg(format!("no network named {name} ({hint})")));
        }
    };
    let running = n.running();
    if !running.is_empty() {
        return Err(Error::msg(format!(
            "network {name} is in use by {}; stop {} first (ferry stop NAME)",
            running.join(", "),
            if running.len() == 1 { "it" } else { "them" }
        )));
    }
    crate::switch::stop(&n);
    std::fs::remove_dir_all(n.dir()).ctx(|| format!("remove {}", n.dir().display()))?;
    Ok(n.members.keys().cloned().collect())
}

/// The kernel arguments that give `machine` its fixed address on each of `nets` (eth1, eth2, ...).
pub fn kernel_args(machine: &str, nets: &[Network]) -> String {
    nets.iter().enumerate().filter_map(|(i, n)| n.addr(machine).map(|a| format!(" ip={a}:::255.255.255.0::eth{}:off", i + 1))).collect()
}

/// Make sure each network's switch runs (started when missing; see switch.rs for why this is safe to
/// call before and after QEMU starts).
pub fn ensure_switches(nets: &[Network]) -> Result<()> {
    let _l = lock()?;
    for n in nets {
        crate::switch::ensure(n, Duration::from_secs(10))?;
    }
    Ok(())
}

/// `ferry network ls` rows: name, subnet, members with address and whether they run.
pub fn table(nets: &[Network]) -> String {
    let mut out = format!("{:<16} {:<18} {}\n", "NAME", "SUBNET", "MACHINES");
    for n in nets {
        let running = n.running();
        let members: Vec<String> = n
            .members
            .keys()
            .map(|m| {
                let addr = n.addr(m).map(|a| a.to_string()).unwrap_or_default();
                format!("{m}={addr}{}", if running.contains(m) { "" } else { " (stopped)" })
            })
            .collect();
        out.push_str(&format!("{:<16} {:<18} {}\n", n.name, n.subnet(), members.join(", ")));
    }
    out
}

pub fn json_line(n: &Network) -> String {
    let running = n.running();
    let members: Vec<serde_json::Value> = n
        .members
        .keys()
        .map(|m| {
            serde_json::json!({
                "machine": m,
                "address": n.addr(m).map(|a| a.to_string()),
                "mac": n.mac(m),
                "running": running.contains(m),
            })
        })
        .collect();
    serde_json::json!({ "name": n.name, "subnet": n.subnet(), "members": members }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(third: u8, members: &[(&str, u8)]) -> Network {
        Network { name: "lab".into(), third, members: members.iter().map(|(m, h)| (m.to_string(), *h)).collect() }
    }

    #[test]
    fn addresses_macs_and_kernel_args() {
        let n = net(101, &[("a", 2), ("b", 3)]);
        assert_eq!(n.subnet(), "192.168.101.0/24");
        assert_eq!(n.addr("b"), Some(Ipv4Addr::new(192, 168, 101, 3)));
        assert_eq!(n.mac("a").as_deref(), Some("52:54:00:fe:65:02"));
        assert_eq!(n.addr("c"), None);
        let m = net(100, &[("a", 7)]);
        assert_eq!(kernel_args("a", &[m, n]), " ip=192.168.100.7:::255.255.255.0::eth1:off ip=192.168.101.2:::255.255.255.0::eth2:off");
        assert_eq!(kernel_args("z", &[net(100, &[])]), "");
    }

    #[test]
    fn json_round_trip_and_bad_files() {
        let n = net(150, &[("alpha", 2), ("beta-2", 9)]);
        let p = Path::new("network.json");
        assert_eq!(Network::from_json("lab", &n.to_json(), p).unwrap(), n);
        for bad in [
            "not json",
            r#"{"members":{}}"#,
            r#"{"subnet":"10.0.0.0/24","members":{}}"#,
            r#"{"subnet":"192.168.99.0/24","members":{}}"#,
            r#"{"subnet":"192.168.100.0/24","members":{"a":1}}"#,
            r#"{"subnet":"192.168.100.0/24","members":{"a":300}}"#,
            r#"{"subnet":"192.168.100.0/24","members":{"a b":3}}"#,
        ] {
            let e = Network::from_json("lab", bad, p).unwrap_err().to_string();
            assert!(e.contains("network.json") && e.contains("ferry network rm lab"), "{bad}: {e}");
        }
    }

    #[test]
    fn unreadable_networks_are_named_and_left_out() {
        let dir = std::env::temp_dir().join(format!("ferry-networks-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, json) in [("good", Some(net(100, &[("a", 2)]).to_json())), ("broken", Some("{".to_string())), ("empty", None)] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            if let Some(j) = json {
                std::fs::write(dir.join(name).join("network.json"), j).unwrap();
            }
        }
        std::fs::write(dir.join("lock"), "").unwrap();
        let (nets, bad) = load_all(&dir);
        assert_eq!(nets.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["good"]);
        assert_eq!(nets[0].addr("a"), Some(Ipv4Addr::new(192, 168, 100, 2)));
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].contains("broken/network.json") && bad[0].contains("ferry network rm broken"), "{bad:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lowest_free_numbers() {
        assert_eq!(lowest_free(THIRD_OCTETS, &[]), Some(100));
        assert_eq!(lowest_free(THIRD_OCTETS, &[100, 101, 103]), Some(102));
        assert_eq!(lowest_free(HOSTS, &(2..=254).collect::<Vec<u8>>()), None);
    }
}
