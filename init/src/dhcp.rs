//! A DHCPv4 client (RFC 2131) that follows its lease: INIT (DISCOVER/OFFER/REQUEST/ACK, broadcast),
//! BOUND until T1, RENEWING (REQUEST unicast to the server that granted the lease) until T2, REBINDING
//! (REQUEST broadcast) until the lease expires; a NAK or the expiry ends the lease. One UDP socket bound
//! to the interface and port 68 receives both broadcast and unicast replies.
//! Options used: 1 mask, 3 router, 6 DNS, 12 hostname (sent, and read), 15 domain, 26 MTU, 42 NTP,
//! 51 lease, 58/59 T1/T2, 119 domain search (RFC 3397), 121 classless routes (RFC 3442).
use crate::error::{Error, Result};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// Option 42: NTP servers.
    pub ntp: Vec<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub lease_secs: u32,
    pub t1_secs: Option<u32>,
    pub t2_secs: Option<u32>,
    pub mtu: Option<u16>,
    pub hostname: Option<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    /// Option 121: (destination, prefix length, router; 0.0.0.0 = on the link).
    pub routes: Vec<(Ipv4Addr, u8, Ipv4Addr)>,
}

impl Default for Lease {
    fn default() -> Lease {
        let any = Ipv4Addr::UNSPECIFIED;
        Lease {
            ip: any,
            mask: any,
            router: None,
            dns: vec![],
            ntp: vec![],
            server: any,
            lease_secs: 0,
            t1_secs: None,
            t2_secs: None,
            mtu: None,
            hostname: None,
            domain: None,
            search: vec![],
            routes: vec![],
        }
    }
}

impl Lease {
    /// RFC 2131 §4.4.5 defaults: T1 at half the lease, T2 at seven eighths; T1 < T2 < lease enforced.
    pub fn timers(&self) -> (Duration, Duration, Duration) {
        let lease = self.lease_secs.max(1) as u64;
        let t2 = self.t2_secs.map(u64::from).filter(|t| *t < lease).unwrap_or(lease * 7 / 8);
        let t1 = self.t1_secs.map(u64::from).filter(|t| *t < t2).unwrap_or((lease / 2).min(t2));
        (Duration::from_secs(t1), Duration::from_secs(t2), Duration::from_secs(lease))
    }

    /// The default gateway: from option 121 when it has a default route (RFC 3442 says to ignore option
    /// 3 whenever 121 is present), else option 3.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        if self.routes.is_empty() {
            return self.router;
        }
        self.routes.iter().find(|(_, p, _)| *p == 0).map(|r| r.2)
    }

    /// Option 121's routes other than the default one.
    pub fn static_routes(&self) -> Vec<(Ipv4Addr, u8, Ipv4Addr)> {
        self.routes.iter().filter(|r| r.1 != 0).copied().collect()
    }

    /// The resolv.conf search list: option 119, else option 15.
    pub fn search_list(&self) -> Vec<String> {
        if self.search.is_empty() {
            self.domain.iter().cloned().collect()
        } else {
            self.search.clone()
        }
    }
}

const COOKIE: [u8; 4] = [99, 130, 83, 99];
pub const DISCOVER: u8 = 1;
pub const OFFER: u8 = 2;
pub const REQUEST: u8 = 3;
pub const ACK: u8 = 5;
pub const NAK: u8 = 6;
/// What we ask for (option 55).
const WANTED: &[u8] = &[1, 3, 6, 12, 15, 26, 42, 51, 58, 59, 119, 121];

/// How a request is addressed (RFC 2131 table 5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stage {
    Discover,
    /// REQUEST after an OFFER: the offered address and the server chosen (options 50 and 54).
    Selecting {
        ip: Ipv4Addr,
        server: Ipv4Addr,
    },
    /// REQUEST while renewing or rebinding: our address in ciaddr, no 50/54, replies may be unicast.
    Bound {
        ip: Ipv4Addr,
    },
}

pub fn build(xid: u32, mac: [u8; 6], hostname: &str, stage: Stage) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    if let Stage::Bound { ip } = stage {
        p[12..16].copy_from_slice(&ip.octets());
    } else {
        p[10..12].copy_from_slice(&0x8000u16.to_be_bytes()); // broadcast: no address to receive unicast yet
    }
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&COOKIE);
    p.extend_from_slice(&[53, 1, if stage == Stage::Discover { DISCOVER } else { REQUEST }]);
    let mut cid = vec![61, 7, 1];
    cid.extend_from_slice(&mac);
    p.extend_from_slice(&cid);
    if let Stage::Selecting { ip, server } = stage {
        p.extend_from_slice(&[50, 4]);
        p.extend_from_slice(&ip.octets());
        p.extend_from_slice(&[54, 4]);
        p.extend_from_slice(&server.octets());
    }
    let h = hostname.as_bytes();
    if !h.is_empty() && h.len() < 64 {
        p.extend_from_slice(&[12, h.len() as u8]);
        p.extend_from_slice(h);
    }
    p.extend_from_slice(&[55, WANTED.len() as u8]);
    p.extend_from_slice(WANTED);
    p.push(255);
    while p.len() < 300 {
        p.push(0);
    }
    p
}

/// RFC 3442: each route is a prefix length, the significant octets of the destination, and a router.
pub fn classless_routes(v: &[u8]) -> Option<Vec<(Ipv4Addr, u8, Ipv4Addr)>> {
    let mut out = vec![];
    let mut i = 0;
    while i < v.len() {
        let prefix = v[i];
        if prefix > 32 {
            return None;
        }
        let n = (prefix as usize).div_ceil(8);
        let dst = v.get(i + 1..i + 1 + n)?;
        let gw = v.get(i + 1 + n..i + 5 + n)?;
        let mut d = [0u8; 4];
        d[..n].copy_from_slice(dst);
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix as u32) };
        out.push((Ipv4Addr::from(u32::from_be_bytes(d) & mask), prefix, Ipv4Addr::new(gw[0], gw[1], gw[2], gw[3])));
        i += 5 + n;
    }
    Some(out)
}

/// RFC 3397: DNS-encoded names, compression pointers relative to the option's (concatenated) data.
pub fn search_names(v: &[u8]) -> Option<Vec<String>> {
    let mut out = vec![];
    let mut i = 0;
    while i < v.len() {
        let (name, next) = read_name(v, i)?;
        if !name.is_empty() {
            out.push(name);
        }
        i = next;
    }
    Some(out)
}

/// One name at `at`: (the dotted name, the offset after it in the original sequence).
fn read_name(v: &[u8], at: usize) -> Option<(String, usize)> {
    let (mut labels, mut pos, mut end, mut jumps) = (Vec::<String>::new(), at, None, 0);
    loop {
        let len = *v.get(pos)? as usize;
        match len {
            0 => return Some((labels.join("."), end.unwrap_or(pos + 1))),
            l if l & 0xC0 == 0xC0 => {
                let target = ((l & 0x3F) << 8) | *v.get(pos + 1)? as usize;
                jumps += 1;
                if jumps > 32 || target >= v.len() {
                    return None;
                }
                end.get_or_insert(pos + 2);
                pos = target;
            }
            l if l < 64 => {
                let label = v.get(pos + 1..pos + 1 + l)?;
                if !label.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_') {
                    return None;
                }
                labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
                pos += 1 + l;
            }
            _ => return None,
        }
    }
}

/// Parse a server reply for our xid: (message type, lease).
pub fn parse(p: &[u8], xid: u32) -> Option<(u8, Lease)> {
    if p.len() < 240 || p[0] != 2 || p[4..8] != xid.to_be_bytes() || p[236..240] != COOKIE {
        return None;
    }
    let mut lease = Lease {
        ip: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        mask: Ipv4Addr::new(255, 255, 255, 0),
        server: Ipv4Addr::new(p[20], p[21], p[22], p[23]),
        lease_secs: 3600,
        ..Default::default()
    };
    let mut kind = 0;
    // Option 119 may be split over several instances (RFC 3396); they are concatenated.
    let mut search = Vec::new();
    let mut i = 240;
    while i < p.len() {
        let code = p[i];
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let len = *p.get(i + 1)? as usize;
        let v = p.get(i + 2..i + 2 + len)?;
        let ip4 = |o: usize| v.get(o..o + 4).map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]));
        let u32v = || (len == 4).then(|| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
        let text = || std::str::from_utf8(v).ok().map(|s| s.trim_end_matches('\0').to_string()).filter(|s| !s.is_empty());
        match code {
            53 if len == 1 => kind = v[0],
            1 => lease.mask = ip4(0)?,
            3 => lease.router = ip4(0),
            6 => lease.dns = (0..len / 4).filter_map(|k| ip4(k * 4)).collect(),
            12 => lease.hostname = text(),
            15 => lease.domain = text(),
            26 if len == 2 => lease.mtu = Some(u16::from_be_bytes([v[0], v[1]])).filter(|m| *m >= 576),
            42 => lease.ntp = (0..len / 4).filter_map(|k| ip4(k * 4)).collect(),
            51 => lease.lease_secs = u32v()?,
            54 => lease.server = ip4(0)?,
            58 => lease.t1_secs = u32v(),
            59 => lease.t2_secs = u32v(),
            119 => search.extend_from_slice(v),
            121 => lease.routes = classless_routes(v).unwrap_or_default(),
            _ => {}
        }
        i += 2 + len;
    }
    lease.search = search_names(&search).unwrap_or_default();
    Some((kind, lease))
}

struct Sock(libc::c_int);
impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: fd owned by this struct.
        unsafe { libc::close(self.0) };
    }
}

fn socket(ifname: &str) -> Result<Sock> {
    // SAFETY: socket setup with correctly sized option values and sockaddr_in.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(Error::last_os("DHCP socket"));
        }
        let s = Sock(fd);
        let one: libc::c_int = 1;
        let sz = std::mem::size_of::<libc::c_int>() as u32;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_BROADCAST, &one as *const _ as *const _, sz);
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one as *const _ as *const _, sz);
        if libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, ifname.as_ptr() as *const _, ifname.len() as u32) != 0 {
            return Err(Error::last_os(format!("bind DHCP socket to {ifname}")));
        }
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_port = 68u16.to_be();
        if libc::bind(fd, &sa as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_in>() as u32) != 0 {
            return Err(Error::last_os(format!("bind UDP port 68 on {ifname}")));
        }
        let tv = libc::timeval { tv_sec: 1, tv_usec: 0 };
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv as *const _ as *const _, std::mem::size_of::<libc::timeval>() as u32);
        Ok(s)
    }
}

/// What a REQUEST while bound brought back.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Ack(Lease),
    Nak,
    Silence,
}

/// One interface's client: its socket, MAC and the hostname it announces.
pub struct Client {
    sock: Sock,
    pub ifname: String,
    mac: [u8; 6],
    hostname: String,
    attempt: u32,
}

impl Client {
    pub fn new(ifname: &str, mac: [u8; 6], hostname: &str) -> Result<Client> {
        Ok(Client { sock: socket(ifname)?, ifname: ifname.into(), mac, hostname: hostname.into(), attempt: 0 })
    }

    fn xid(&mut self) -> u32 {
        self.attempt = self.attempt.wrapping_add(1);
        let m = self.mac;
        u32::from_be_bytes([m[2], m[3], m[4], m[5]]) ^ self.attempt.wrapping_mul(0x9E37_79B9) ^ std::process::id().rotate_left(16)
    }

    fn send(&self, pkt: &[u8], to: Ipv4Addr) -> Result<()> {
        // SAFETY: sockaddr_in zeroed then filled; pkt valid for its length.
        unsafe {
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as u16;
            sa.sin_port = 67u16.to_be();
            sa.sin_addr.s_addr = u32::from(to).to_be();
            let n = libc::sendto(
                self.sock.0,
                pkt.as_ptr() as *const _,
                pkt.len(),
                0,
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            if n < 0 {
                return Err(Error::last_os(format!("send DHCP packet to {to} on {}", self.ifname)));
            }
        }
        Ok(())
    }

    /// Wait for an answer of kind `want` (or a NAK to a REQUEST) to `xid`.
    fn wait_for(&self, xid: u32, want: u8, until: Instant) -> Option<(u8, Lease)> {
        let mut buf = [0u8; 1500];
        while Instant::now() < until {
            // SAFETY: buf valid for its length.
            let n = unsafe { libc::recv(self.sock.0, buf.as_mut_ptr() as *mut _, buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            if let Some((kind, lease)) = parse(&buf[..n as usize], xid) {
                if kind == want || (want == ACK && kind == NAK) {
                    return Some((kind, lease));
                }
            }
        }
        None
    }

    /// INIT: one full exchange, retried with back-off until `deadline`.
    pub fn obtain(&mut self, deadline: Duration) -> Result<Lease> {
        let start = Instant::now();
        let mut tries = 0u32;
        while start.elapsed() < deadline {
            tries += 1;
            let xid = self.xid();
            let wait = Duration::from_secs((1u64 << tries.min(4)).min(8));
            self.send(&build(xid, self.mac, &self.hostname, Stage::Discover), Ipv4Addr::BROADCAST)?;
            let Some((_, offer)) = self.wait_for(xid, OFFER, Instant::now() + wait) else { continue };
            let stage = Stage::Selecting { ip: offer.ip, server: offer.server };
            self.send(&build(xid, self.mac, &self.hostname, stage), Ipv4Addr::BROADCAST)?;
            if let Some((ACK, ack)) = self.wait_for(xid, ACK, Instant::now() + wait) {
                return Ok(ack);
            }
        }
        Err(Error::msg(format!("no DHCP lease on {} after {}s", self.ifname, deadline.as_secs())))
    }

    /// RENEWING (`to` = the server, unicast) or REBINDING (`to` = broadcast) until `until`: the request
    /// is repeated at half the time left, at least every 10 s and at most every 60 s (RFC 2131 §4.4.5
    /// asks for no more than one a minute on real leases; short test leases need the lower bound).
    pub fn extend(&mut self, lease: &Lease, to: Ipv4Addr, until: Instant) -> Result<Reply> {
        while Instant::now() < until {
            let left = until - Instant::now();
            let wait = (left / 2).clamp(Duration::from_secs(10), Duration::from_secs(60)).min(left);
            let xid = self.xid();
            self.send(&build(xid, self.mac, &self.hostname, Stage::Bound { ip: lease.ip }), to)?;
            match self.wait_for(xid, ACK, Instant::now() + wait) {
                Some((ACK, ack)) => return Ok(Reply::Ack(ack)),
                Some(_) => return Ok(Reply::Nak),
                None => {}
            }
        }
        Ok(Reply::Silence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(kind: u8, xid: u32, options: &[u8]) -> Vec<u8> {
        let mut a = build(xid, [0x52, 0x54, 0, 0x12, 0x34, 0x56], "ferry", Stage::Discover);
        a[0] = 2;
        a[16..20].copy_from_slice(&[10, 0, 2, 15]);
        a.truncate(240);
        a.extend_from_slice(&[53, 1, kind]);
        a.extend_from_slice(options);
        a.push(255);
        a
    }

    #[test]
    fn requests_are_addressed_per_stage() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let d = build(7, mac, "ferry", Stage::Discover);
        assert_eq!((d[0], &d[28..34], &d[236..240], &d[240..243]), (1, &mac[..], &COOKIE[..], &[53, 1, DISCOVER][..]));
        assert_eq!(&d[10..12], &[0x80, 0], "broadcast flag before we have an address");
        assert!(d.windows(7).any(|w| w == [12, 5, b'f', b'e', b'r', b'r', b'y']), "hostname sent");
        let s = build(7, mac, "ferry", Stage::Selecting { ip: Ipv4Addr::new(10, 0, 2, 15), server: Ipv4Addr::new(10, 0, 2, 2) });
        assert!(s.windows(6).any(|w| w == [50, 4, 10, 0, 2, 15]) && s.windows(6).any(|w| w == [54, 4, 10, 0, 2, 2]));
        let r = build(7, mac, "ferry", Stage::Bound { ip: Ipv4Addr::new(10, 0, 2, 15) });
        assert_eq!(&r[12..16], &[10, 0, 2, 15], "ciaddr while renewing");
        assert_eq!(&r[10..12], &[0, 0], "no broadcast flag while renewing");
        assert!(!r[240..].windows(2).any(|w| w == [50, 4]) && !r[240..].windows(2).any(|w| w == [54, 4]), "no 50/54 while renewing");
    }

    #[test]
    fn every_option_we_honour_parses() {
        let opts = [
            &[1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2, 6, 8, 10, 0, 2, 3, 1, 1, 1, 1, 42, 4, 10, 0, 2, 4, 51, 4, 0, 0, 0, 120][..],
            &[58, 4, 0, 0, 0, 20, 59, 4, 0, 0, 0, 40, 26, 2, 5, 120, 12, 3, b'b', b'o', b'x', 15, 4, b'l', b'a', b'b', 0],
            // 119: "ferry.test", then "lab" + pointer to "ferry.test" at offset 0.
            &[119, 18, 5, b'f', b'e', b'r', b'r', b'y', 4, b't', b'e', b's', b't', 0, 3, b'l', b'a', b'b', 0xC0, 0],
            // 121: 198.51.100.0/24 via 10.0.2.9, 0.0.0.0/0 via 10.0.2.1.
            &[121, 13, 24, 198, 51, 100, 10, 0, 2, 9, 0, 10, 0, 2, 1],
        ]
        .concat();
        let (kind, l) = parse(&reply(ACK, 7, &opts), 7).unwrap();
        assert_eq!(kind, ACK);
        assert_eq!(
            (l.ip, l.router, l.dns.len(), l.ntp.clone()),
            (Ipv4Addr::new(10, 0, 2, 15), Some(Ipv4Addr::new(10, 0, 2, 2)), 2, vec![Ipv4Addr::new(10, 0, 2, 4)])
        );
        assert_eq!((l.lease_secs, l.t1_secs, l.t2_secs, l.mtu), (120, Some(20), Some(40), Some(1400)));
        assert_eq!((l.hostname.as_deref(), l.domain.as_deref()), (Some("box"), Some("lab")));
        assert_eq!(l.search, ["ferry.test", "lab.ferry.test"]);
        assert_eq!(l.search_list(), ["ferry.test", "lab.ferry.test"]);
        assert_eq!(l.static_routes(), [(Ipv4Addr::new(198, 51, 100, 0), 24, Ipv4Addr::new(10, 0, 2, 9))]);
        assert_eq!(l.gateway(), Some(Ipv4Addr::new(10, 0, 2, 1)), "121's default wins over option 3");
        assert_eq!(l.timers(), (Duration::from_secs(20), Duration::from_secs(40), Duration::from_secs(120)));
        assert!(parse(&reply(ACK, 7, &opts), 8).is_none(), "other xid ignored");
        assert!(parse(&reply(ACK, 7, &opts)[..100], 7).is_none(), "truncated ignored");
    }

    #[test]
    fn defaults_and_hostile_options() {
        let l = Lease {
            lease_secs: 3600,
            routes: vec![(Ipv4Addr::new(10, 9, 0, 0), 16, Ipv4Addr::UNSPECIFIED)],
            router: Some(Ipv4Addr::new(1, 2, 3, 4)),
            domain: Some("d".into()),
            ..Default::default()
        };
        assert_eq!(l.timers(), (Duration::from_secs(1800), Duration::from_secs(3150), Duration::from_secs(3600)));
        assert_eq!(l.gateway(), None, "option 3 ignored when 121 is present");
        assert_eq!(l.search_list(), ["d"]);
        let odd = Lease { lease_secs: 100, t1_secs: Some(500), t2_secs: Some(90), ..Default::default() };
        assert_eq!(odd.timers(), (Duration::from_secs(50), Duration::from_secs(90), Duration::from_secs(100)));
        assert_eq!(classless_routes(&[33, 1, 2, 3, 4, 5]), None);
        assert_eq!(classless_routes(&[24, 198, 51]), None, "truncated");
        assert_eq!(classless_routes(&[8, 10, 0, 0, 0, 0]).unwrap(), [(Ipv4Addr::new(10, 0, 0, 0), 8, Ipv4Addr::UNSPECIFIED)]);
        assert_eq!(search_names(&[0xC0, 0]), None, "a pointer loop");
        assert_eq!(search_names(&[3, b'a', b'/', b'b', 0]), None, "not a hostname label");
        let (_, l) = parse(&reply(ACK, 1, &[26, 2, 0, 10]), 1).unwrap();
        assert_eq!(l.mtu, None, "an MTU below 576 is ignored");
    }
}
