//! The kernel's `ip=` syntax (Documentation/admin-guide/nfs/nfsroot.rst), read by init because Debian's
//! kernel is built without IP_PNP: `ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>:
//! <dns0>:<dns1>:<ntp0>`, one per interface. A fixed address needs `<client>` and `<device>` (or a single
//! `ip=` on a one-NIC machine); `<autoconf>` `off`/`none`/`static` (or empty with an address) means fixed,
//! `dhcp`/`on`/`any`/`both` means DHCP on that device. `ip=dhcp` and `ip=off` alone are accepted too.
//! A malformed value is reported and ignored: that interface falls back to DHCP.
use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixed {
    pub device: Option<String>,
    pub addr: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpArg {
    Fixed(Fixed),
    /// DHCP on this device (None: every device, as without `ip=`).
    Dhcp(Option<String>),
    /// No automatic configuration at all.
    Off,
}

fn addr(field: &str, what: &str, value: &str) -> Result<Option<Ipv4Addr>, String> {
    if field.is_empty() {
        return Ok(None);
    }
    field.parse().map(Some).map_err(|_| format!("ignoring ip={value:?}: {what} {field:?} is not an IPv4 address"))
}

/// The class default when no netmask is given (what the kernel does).
fn default_mask(a: Ipv4Addr) -> Ipv4Addr {
    match a.octets()[0] {
        0..=127 => Ipv4Addr::new(255, 0, 0, 0),
        128..=191 => Ipv4Addr::new(255, 255, 0, 0),
        _ => Ipv4Addr::new(255, 255, 255, 0),
    }
}

pub fn parse(value: &str) -> Result<IpArg, String> {
    match value {
        "off" | "none" => return Ok(IpArg::Off),
        "dhcp" | "on" | "any" | "both" | "bootp" | "rarp" => return Ok(IpArg::Dhcp(None)),
        _ => {}
    }
    let f: Vec<&str> = value.split(':').collect();
    if f.len() > 10 {
        return Err(format!("ignoring ip={value:?}: more than 10 ':'-separated fields"));
    }
    let get = |i: usize| f.get(i).copied().unwrap_or("");
    let device = Some(get(5)).filter(|d| !d.is_empty()).map(str::to_string);
    if let Some(d) = &device {
        if d.len() >= 16 || !d.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(format!("ignoring ip={value:?}: {d:?} is not an interface name"));
        }
    }
    match get(6) {
        "dhcp" | "on" | "any" | "both" | "bootp" | "rarp" => return Ok(IpArg::Dhcp(device)),
        "off" | "none" | "static" | "" => {}
        other => return Err(format!("ignoring ip={value:?}: unknown autoconf {other:?} (use off or dhcp)")),
    }
    let Some(client) = addr(get(0), "address", value)? else {
        return if get(6).is_empty() { Err(format!("ignoring ip={value:?}: no address and no autoconf method")) } else { Ok(IpArg::Off) };
    };
    let mask = addr(get(3), "netmask", value)?.unwrap_or_else(|| default_mask(client));
    if u32::from(mask).leading_ones() != u32::from(mask).count_ones() {
        return Err(format!("ignoring ip={value:?}: netmask {mask} is not contiguous"));
    }
    let gateway = addr(get(2), "gateway", value)?;
    let _server = addr(get(1), "server", value)?;
    let hostname = Some(get(4)).filter(|h| !h.is_empty()).map(str::to_string);
    if let Some(h) = &hostname {
        if !crate::cmdline::valid_hostname(h) {
            return Err(format!("ignoring ip={value:?}: hostname {h:?} is not valid"));
        }
    }
    let dns = [addr(get(7), "dns0", value)?, addr(get(8), "dns1", value)?].into_iter().flatten().collect();
    let ntp = addr(get(9), "ntp0", value)?.into_iter().collect();
    Ok(IpArg::Fixed(Fixed { device, addr: client, mask, gateway, hostname, dns, ntp }))
}

/// How each NIC (sorted names) is configured: Some(fixed) or None for DHCP; NICs left out get nothing.
/// Warnings name `ip=` entries that match no interface.
pub fn plan(nics: &[String], args: &[IpArg]) -> (Vec<(String, Option<Fixed>)>, Vec<String>) {
    let mut warnings = vec![];
    if args.contains(&IpArg::Off) && args.len() == 1 {
        return (vec![], warnings);
    }
    let mut out: Vec<(String, Option<Fixed>)> = nics.iter().map(|n| (n.clone(), None)).collect();
    for a in args {
        if let IpArg::Fixed(f) = a {
            let target = match &f.device {
                Some(d) => d.clone(),
                // No device: the kernel would use the first one that comes up; so do we, if there is one.
                None => match nics.first() {
                    Some(n) => n.clone(),
                    None => continue,
                },
            };
            match out.iter_mut().find(|(n, _)| *n == target) {
                Some(slot) => slot.1 = Some(f.clone()),
                None => warnings.push(format!("ip=: no interface {target} (have {}); ignored", nics.join(", "))),
            }
        }
    }
    (out, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_kernel_syntax() {
        let a = parse("192.168.56.10::192.168.56.1:255.255.255.0:box:eth1:off:192.168.56.1::192.168.56.2").unwrap();
        assert_eq!(
            a,
            IpArg::Fixed(Fixed {
                device: Some("eth1".into()),
                addr: ip("192.168.56.10"),
                mask: ip("255.255.255.0"),
                gateway: Some(ip("192.168.56.1")),
                hostname: Some("box".into()),
                dns: vec![ip("192.168.56.1")],
                ntp: vec![ip("192.168.56.2")]
            })
        );
        let IpArg::Fixed(f) = parse("10.1.2.3").unwrap() else { panic!() };
        assert_eq!((f.mask, f.device, f.gateway), (ip("255.0.0.0"), None, None));
        assert_eq!(parse("dhcp").unwrap(), IpArg::Dhcp(None));
        assert_eq!(parse(":::::eth0:dhcp").unwrap(), IpArg::Dhcp(Some("eth0".into())));
        assert_eq!(parse("off").unwrap(), IpArg::Off);
    }

    #[test]
    fn malformed_values_say_why() {
        for (v, says) in [
            ("300.1.1.1::::::off", "not an IPv4 address"),
            ("10.0.0.1:::255.0.255.0::eth0:off", "not contiguous"),
            ("10.0.0.1:::::eth0:maybe", "unknown autoconf"),
            ("10.0.0.1:::::eth0/../x:off", "not an interface name"),
            ("10.0.0.1::::bad_host:eth0:off", "hostname"),
            ("1:2:3:4:5:6:7:8:9:10:11", "more than 10"),
            ("::::::", "no address"),
        ] {
            let e = parse(v).unwrap_err();
            assert!(e.contains(says) && e.contains("ignoring ip="), "{v}: {e}");
        }
    }

    #[test]
    fn plan_per_interface() {
        let nics = vec!["eth0".to_string(), "eth1".to_string(), "eth2".to_string()];
        let fixed = parse("10.0.9.50::10.0.9.2:255.255.255.0::eth2:off").unwrap();
        let (p, w) = plan(&nics, &[fixed.clone(), parse("10.0.0.1:::::eth7:off").unwrap()]);
        assert_eq!(
            p.iter().map(|(n, f)| (n.as_str(), f.is_some())).collect::<Vec<_>>(),
            vec![("eth0", false), ("eth1", false), ("eth2", true)]
        );
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("eth7"));
        assert!(plan(&nics, &[IpArg::Off]).0.is_empty());
        let (p, _) = plan(&nics, &[parse("10.1.2.3").unwrap()]);
        assert!(p[0].1.is_some(), "no device: the first NIC");
    }
}
