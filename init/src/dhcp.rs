//! A small DHCPv4 client (RFC 2131): DISCOVER/OFFER/REQUEST/ACK with the broadcast flag, one UDP socket
//! bound to the interface. Renews by running the exchange again at half the lease.
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
}

const COOKIE: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

pub fn build(kind: u8, xid: u32, mac: [u8; 6], hostname: &str, req: Option<(Ipv4Addr, Ipv4Addr)>) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10..12].copy_from_slice(&0x8000u16.to_be_bytes()); // broadcast: we have no address to receive unicast
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&COOKIE);
    p.extend_from_slice(&[53, 1, kind]);
    let mut cid = vec![61, 7, 1];
    cid.extend_from_slice(&mac);
    p.extend_from_slice(&cid);
    if let Some((ip, server)) = req {
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
    p.extend_from_slice(&[55, 6, 1, 3, 6, 15, 42, 51]);
    p.push(255);
    while p.len() < 300 {
        p.push(0);
    }
    p
}

/// Parse a server reply for our xid: (message type, lease).
pub fn parse(p: &[u8], xid: u32) -> Option<(u8, Lease)> {
    if p.len() < 240 || p[0] != 2 || p[4..8] != xid.to_be_bytes() || p[236..240] != COOKIE {
        return None;
    }
    let ip = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let mut lease = Lease {
        ip,
        mask: Ipv4Addr::new(255, 255, 255, 0),
        router: None,
        dns: vec![],
        ntp: vec![],
        server: Ipv4Addr::new(p[20], p[21], p[22], p[23]),
        lease_secs: 3600,
    };
    let mut kind = 0;
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
        match code {
            53 if len == 1 => kind = v[0],
            1 => lease.mask = ip4(0)?,
            3 => lease.router = ip4(0),
            6 => lease.dns = (0..len / 4).filter_map(|k| ip4(k * 4)).collect(),
            42 => lease.ntp = (0..len / 4).filter_map(|k| ip4(k * 4)).collect(),
            51 if len == 4 => lease.lease_secs = u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
            54 => lease.server = ip4(0)?,
            _ => {}
        }
        i += 2 + len;
    }
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

fn send(s: &Sock, pkt: &[u8]) -> Result<()> {
    // SAFETY: sockaddr_in zeroed then filled; pkt valid for its length.
    unsafe {
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_port = 67u16.to_be();
        sa.sin_addr.s_addr = u32::from(Ipv4Addr::BROADCAST).to_be();
        let n = libc::sendto(
            s.0,
            pkt.as_ptr() as *const _,
            pkt.len(),
            0,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        if n < 0 {
            return Err(Error::last_os("send DHCP packet"));
        }
    }
    Ok(())
}

fn wait_for(s: &Sock, xid: u32, want: u8, until: Instant) -> Option<Lease> {
    let mut buf = [0u8; 1500];
    while Instant::now() < until {
        // SAFETY: buf valid for its length.
        let n = unsafe { libc::recv(s.0, buf.as_mut_ptr() as *mut _, buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        if let Some((kind, lease)) = parse(&buf[..n as usize], xid) {
            if kind == want || (want == ACK && kind == NAK) {
                return if kind == NAK { None } else { Some(lease) };
            }
        }
    }
    None
}

/// One full exchange, retrying with back-off until `deadline`.
pub fn obtain(ifname: &str, mac: [u8; 6], hostname: &str, deadline: Duration) -> Result<Lease> {
    let s = socket(ifname)?;
    let start = Instant::now();
    let mut attempt = 0u32;
    while start.elapsed() < deadline {
        attempt += 1;
        let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ attempt.wrapping_mul(0x9E37_79B9) ^ std::process::id();
        let wait = Duration::from_secs((1u64 << attempt.min(4)).min(8));
        send(&s, &build(DISCOVER, xid, mac, hostname, None))?;
        let Some(offer) = wait_for(&s, xid, OFFER, Instant::now() + wait) else { continue };
        send(&s, &build(REQUEST, xid, mac, hostname, Some((offer.ip, offer.server))))?;
        if let Some(ack) = wait_for(&s, xid, ACK, Instant::now() + wait) {
            return Ok(ack);
        }
    }
    Err(Error::msg(format!("no DHCP lease on {ifname} after {}s", deadline.as_secs())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_is_well_formed_and_ack_parses() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let d = build(DISCOVER, 7, mac, "ferry", None);
        assert_eq!(d[0], 1);
        assert_eq!(&d[28..34], &mac);
        assert_eq!(&d[236..240], &COOKIE);
        assert_eq!(&d[240..243], &[53, 1, DISCOVER]);
        // Fake ACK built from the request layout.
        let mut a = d.clone();
        a[0] = 2;
        a[16..20].copy_from_slice(&[10, 0, 2, 15]);
        a.truncate(240);
        a.extend_from_slice(&[
            53, 1, ACK, 1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2, 6, 8, 10, 0, 2, 3, 1, 1, 1, 1, 42, 4, 10, 0, 2, 4, 51, 4, 0, 0, 0x0e,
            0x10, 255,
        ]);
        let (kind, l) = parse(&a, 7).unwrap();
        assert_eq!(kind, ACK);
        assert_eq!(l.ip, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(l.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(l.dns.len(), 2);
        assert_eq!(l.ntp, vec![Ipv4Addr::new(10, 0, 2, 4)]);
        assert_eq!(l.lease_secs, 3600);
        assert!(parse(&a, 8).is_none(), "other xid ignored");
        assert!(parse(&a[..100], 7).is_none(), "truncated ignored");
    }
}
