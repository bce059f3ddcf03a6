//! Network interfaces through classic ioctls: up/down, IPv4 address, netmask, default route; plus
//! /etc/hosts and /etc/resolv.conf.
use crate::error::{Error, Result};
use std::net::Ipv4Addr;

/// DNS servers used when DHCP gives none (documented in docs/decisions.md).
pub const FALLBACK_DNS: &[&str] = &["1.1.1.1", "8.8.8.8"];

fn ifreq(name: &str) -> Result<[u8; 40]> {
    if name.is_empty() || name.len() >= 16 {
        return Err(Error::msg(format!("bad interface name {name:?}")));
    }
    let mut r = [0u8; 40];
    r[..name.len()].copy_from_slice(name.as_bytes());
    Ok(r)
}

fn ctl_socket() -> Result<libc::c_int> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::last_os("control socket"));
    }
    Ok(fd)
}

fn ioctl(req: libc::c_ulong, arg: *mut libc::c_void, what: impl FnOnce() -> String) -> Result<()> {
    let fd = ctl_socket()?;
    // SAFETY: arg points to a buffer of the size the request expects (ifreq or rtentry).
    let rc = unsafe { libc::ioctl(fd, req, arg) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd came from socket().
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(Error::io(what(), err));
    }
    Ok(())
}

pub fn set_up(name: &str) -> Result<()> {
    let mut r = ifreq(name)?;
    ioctl(libc::SIOCGIFFLAGS, r.as_mut_ptr() as *mut _, || format!("read flags of {name}"))?;
    let flags = i16::from_ne_bytes([r[16], r[17]]) | libc::IFF_UP as i16;
    r[16..18].copy_from_slice(&flags.to_ne_bytes());
    ioctl(libc::SIOCSIFFLAGS, r.as_mut_ptr() as *mut _, || format!("bring {name} up"))
}

fn sockaddr_in(ip: Ipv4Addr) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    s[4..8].copy_from_slice(&ip.octets());
    s
}

fn set_addr(name: &str, req: libc::c_ulong, ip: Ipv4Addr, what: &str) -> Result<()> {
    let mut r = ifreq(name)?;
    r[16..32].copy_from_slice(&sockaddr_in(ip));
    ioctl(req, r.as_mut_ptr() as *mut _, || format!("set {what} {ip} on {name}"))
}

pub fn configure(name: &str, ip: Ipv4Addr, mask: Ipv4Addr) -> Result<()> {
    set_addr(name, libc::SIOCSIFADDR, ip, "address")?;
    set_addr(name, libc::SIOCSIFNETMASK, mask, "netmask")?;
    let bcast = Ipv4Addr::from(u32::from(ip) | !u32::from(mask));
    set_addr(name, libc::SIOCSIFBRDADDR, bcast, "broadcast")
}

/// Remove the interface's IPv4 address (setting 0.0.0.0 deletes it; its routes go with it).
pub fn deconfigure(name: &str) -> Result<()> {
    set_addr(name, libc::SIOCSIFADDR, Ipv4Addr::UNSPECIFIED, "address")
}

pub fn set_mtu(name: &str, mtu: u16) -> Result<()> {
    let mut r = ifreq(name)?;
    r[16..20].copy_from_slice(&(mtu as i32).to_ne_bytes());
    ioctl(libc::SIOCSIFMTU, r.as_mut_ptr() as *mut _, || format!("set MTU {mtu} on {name}"))
}

pub fn add_default_route(name: &str, gw: Ipv4Addr) -> Result<()> {
    route(libc::SIOCADDRT, name, Ipv4Addr::UNSPECIFIED, 0, gw)
}

pub fn del_default_route(name: &str, gw: Ipv4Addr) -> Result<()> {
    route(libc::SIOCDELRT, name, Ipv4Addr::UNSPECIFIED, 0, gw)
}

/// A route to `dst`/`prefix` through `gw` (0.0.0.0: directly on the link) on interface `name`.
pub fn add_route(name: &str, dst: Ipv4Addr, prefix: u8, gw: Ipv4Addr) -> Result<()> {
    route(libc::SIOCADDRT, name, dst, prefix, gw)
}

pub fn del_route(name: &str, dst: Ipv4Addr, prefix: u8, gw: Ipv4Addr) -> Result<()> {
    route(libc::SIOCDELRT, name, dst, prefix, gw)
}

fn route(req: libc::c_ulong, name: &str, dst: Ipv4Addr, prefix: u8, gw: Ipv4Addr) -> Result<()> {
    // SAFETY: rtentry is plain data; zeroed is its documented initial state.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix.min(32) as u32) };
    let (d, m, g) = (sockaddr_in(dst), sockaddr_in(Ipv4Addr::from(mask)), sockaddr_in(gw));
    // SAFETY: sockaddr and [u8;16] have the same size and layout.
    unsafe {
        rt.rt_dst = std::mem::transmute::<[u8; 16], libc::sockaddr>(d);
        rt.rt_genmask = std::mem::transmute::<[u8; 16], libc::sockaddr>(m);
        rt.rt_gateway = std::mem::transmute::<[u8; 16], libc::sockaddr>(g);
    }
    rt.rt_flags = libc::RTF_UP;
    if !gw.is_unspecified() {
        rt.rt_flags |= libc::RTF_GATEWAY;
    }
    if prefix == 32 {
        rt.rt_flags |= libc::RTF_HOST;
    }
    let dev = crate::sys::cstr(name)?;
    rt.rt_dev = dev.as_ptr() as *mut libc::c_char;
    let what = if req == libc::SIOCADDRT { "add" } else { "remove" };
    match ioctl(req, &mut rt as *mut _ as *mut _, || format!("{what} the route to {dst}/{prefix} via {gw} on {name}")) {
        Err(e) if req == libc::SIOCADDRT && e.source.as_ref().and_then(|s| s.raw_os_error()) == Some(libc::EEXIST) => Ok(()),
        Err(e) if req == libc::SIOCDELRT && e.source.as_ref().and_then(|s| s.raw_os_error()) == Some(libc::ESRCH) => Ok(()),
        r => r,
    }
}

/// Physical Ethernet NICs: ARPHRD_ETHER with a backing device (skips bridges, veths, docker0).
pub fn ethernet_nics() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
        for e in entries.flatten() {
            let p = e.path();
            let ty = std::fs::read_to_string(p.join("type")).unwrap_or_default();
            if ty.trim() == "1" && p.join("device").exists() {
                out.push(e.file_name().to_string_lossy().to_string());
            }
        }
    }
    out.sort();
    out
}

pub fn mac(name: &str) -> Result<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).map_err(|e| Error::io(format!("read MAC of {name}"), e))?;
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(Error::msg(format!("odd MAC {s:?} on {name}")));
    }
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).map_err(|_| Error::msg(format!("odd MAC {s:?} on {name}")))?;
    }
    Ok(m)
}

/// Who holds the one default route: the first NIC (in name order) that has a gateway. DHCP answers come
/// in any order, so a later answer from an earlier NIC takes the route over.
#[derive(Debug, Default)]
pub struct DefaultRoute {
    held: Option<(usize, String, Ipv4Addr)>,
}

impl DefaultRoute {
    pub const fn new() -> DefaultRoute {
        DefaultRoute { held: None }
    }

    /// Whether NIC number `index` offering gateway `gw` takes the route: None (keep the route as it is),
    /// or Some(the route it replaces, if any).
    pub fn offer(&self, index: usize, nic: &str, gw: Ipv4Addr) -> Option<Option<(String, Ipv4Addr)>> {
        match &self.held {
            Some((i, n, g)) if *i < index || (*i == index && *g == gw && n == nic) => None,
            Some((_, n, g)) => Some(Some((n.clone(), *g))),
            None => Some(None),
        }
    }

    /// NIC number `index` lost its lease: its default route (if it held it) is gone with its address.
    /// Returns a console line when it held it. Another NIC takes the route at its next lease or renewal.
    pub fn release(&mut self, index: usize) -> Option<String> {
        let (i, nic, gw) = self.held.clone()?;
        if i != index {
            return None;
        }
        let _ = del_default_route(&nic, gw);
        self.held = None;
        Some(format!("network: no default route any more (it was via {gw} on {nic})"))
    }

    /// Put the route back when NIC `index` holds it (its address changed, which drops its routes).
    pub fn restore(&self, index: usize) -> Result<()> {
        match &self.held {
            Some((i, nic, gw)) if *i == index => add_default_route(nic, *gw),
            _ => Ok(()),
        }
    }

    /// Apply an offer to the routing table; returns a line for the console when the route moved.
    pub fn take(&mut self, index: usize, nic: &str, gw: Ipv4Addr) -> Result<Option<String>> {
        let Some(replaced) = self.offer(index, nic, gw) else { return Ok(None) };
        if let Some((rn, rg)) = &replaced {
            del_default_route(rn, *rg)?;
        }
        add_default_route(nic, gw)?;
        self.held = Some((index, nic.to_string(), gw));
        Ok(Some(match replaced {
            Some((rn, rg)) => format!("network: default route via {gw} on {nic} (was via {rg} on {rn})"),
            None => format!("network: default route via {gw} on {nic}"),
        }))
    }
}

pub fn hosts_file(name: &str) -> String {
    format!("127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
}

pub fn write_hosts(name: &str) -> Result<()> {
    crate::sys::write_atomic("/etc/hosts", hosts_file(name).as_bytes(), 0o644)?;
    crate::sys::write_atomic("/etc/hostname", format!("{name}\n").as_bytes(), 0o644)
}

pub fn resolv_conf(servers: &[Ipv4Addr], search: &[String]) -> String {
    let mut s = String::new();
    if !search.is_empty() {
        // resolv.conf(5): at most 6 domains are used.
        s.push_str(&format!("search {}\n", search.iter().take(6).cloned().collect::<Vec<_>>().join(" ")));
    }
    for ip in servers {
        s.push_str(&format!("nameserver {ip}\n"));
    }
    if servers.is_empty() {
        for ip in FALLBACK_DNS {
            s.push_str(&format!("nameserver {ip}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn files() {
        assert!(hosts_file("box").contains("127.0.1.1\tbox\n"));
        assert_eq!(resolv_conf(&[Ipv4Addr::new(10, 0, 2, 3)], &[]), "nameserver 10.0.2.3\n");
        assert!(resolv_conf(&[], &[]).contains("1.1.1.1"));
        assert_eq!(resolv_conf(&[Ipv4Addr::new(10, 0, 2, 3)], &["a.test".into(), "b".into()]), "search a.test b\nnameserver 10.0.2.3\n");
    }

    #[test]
    fn one_default_route_through_the_first_nic_with_a_gateway() {
        let gw = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let mut r = DefaultRoute::default();
        assert_eq!(r.offer(1, "eth1", gw("192.168.56.2")), Some(None));
        r.held = Some((1, "eth1".into(), gw("192.168.56.2")));
        // eth0 answers later: it takes the route over; eth2 never does; a renewal changes nothing.
        assert_eq!(r.offer(0, "eth0", gw("10.0.2.2")), Some(Some(("eth1".into(), gw("192.168.56.2")))));
        assert_eq!(r.offer(2, "eth2", gw("10.0.9.2")), None);
        assert_eq!(r.offer(1, "eth1", gw("192.168.56.2")), None);
        // A new gateway on the holder moves the route.
        assert!(r.offer(1, "eth1", gw("192.168.56.1")).is_some());
    }
}
