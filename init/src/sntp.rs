//! A minimal SNTP client (RFC 4330): one 48-byte request, one reply, the clock offset from the four
//! timestamps. Replies are checked the way RFC 4330 section 5 asks (mode, stratum, leap indicator, our
//! own transmit time echoed as the originate time) so a stray or forged packet cannot set the clock.
use crate::error::{Error, Result};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from 1900 (NTP's era 0) to 1970.
const NTP_UNIX_DELTA: f64 = 2_208_988_800.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Add this to the local clock to get the server's time, in seconds.
    pub offset: f64,
    /// Round trip minus the server's own processing time, in seconds.
    pub delay: f64,
}

pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn to_ntp(unix: f64) -> [u8; 8] {
    let t = unix + NTP_UNIX_DELTA;
    let secs = t.floor();
    let frac = ((t - secs) * 4_294_967_296.0) as u64;
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&(secs as u64 as u32).to_be_bytes());
    b[4..].copy_from_slice(&(frac as u32).to_be_bytes());
    b
}

/// RFC 4330 section 3: seconds with the top bit clear are in era 1 (from 2036-02-07 on).
fn from_ntp(b: &[u8]) -> f64 {
    let raw = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let secs = if raw & 0x8000_0000 == 0 { raw as f64 + 4_294_967_296.0 } else { raw as f64 };
    let frac = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as f64 / 4_294_967_296.0;
    secs + frac - NTP_UNIX_DELTA
}

/// A client request (version 4, mode 3) carrying `t1` as its transmit time.
pub fn request(t1: f64) -> [u8; 48] {
    let mut p = [0u8; 48];
    p[0] = (4 << 3) | 3;
    p[40..48].copy_from_slice(&to_ntp(t1));
    p
}

/// Check a reply to `req` received at local time `t4` and compute the sample.
pub fn parse_reply(p: &[u8], req: &[u8; 48], t4: f64) -> std::result::Result<Sample, String> {
    if p.len() < 48 {
        return Err(format!("short reply ({} bytes)", p.len()));
    }
    let (li, mode, stratum) = (p[0] >> 6, p[0] & 7, p[1]);
    if mode != 4 && mode != 5 {
        return Err(format!("not a server reply (mode {mode})"));
    }
    if p[24..32] != req[40..48] {
        return Err("reply does not answer our request (originate time differs)".into());
    }
    if stratum == 0 {
        return Err(format!("server refused (kiss code {:?})", String::from_utf8_lossy(&p[12..16])));
    }
    if li == 3 {
        return Err("server clock is not synchronised (leap indicator 3)".into());
    }
    if p[40..48] == [0; 8] {
        return Err("reply carries no transmit time".into());
    }
    let (t1, t2, t3) = (from_ntp(&req[40..48]), from_ntp(&p[32..40]), from_ntp(&p[40..48]));
    Ok(Sample { offset: ((t2 - t1) + (t3 - t4)) / 2.0, delay: (t4 - t1) - (t3 - t2) })
}

/// `host`, `host:port`, `a.b.c.d` or `[v6]:port`; port 123 unless given.
pub fn resolve(server: &str) -> Result<Vec<SocketAddr>> {
    let with_port = if server.parse::<std::net::IpAddr>().is_ok() {
        match server.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => format!("[{v6}]:123"),
            Err(_) => format!("{server}:123"),
        }
    } else if server.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        server.to_string()
    } else {
        format!("{server}:123")
    };
    let v: Vec<SocketAddr> = with_port.to_socket_addrs().map_err(|e| Error::io(format!("resolve NTP server {server}"), e))?.collect();
    if v.is_empty() {
        return Err(Error::msg(format!("NTP server {server}: no address")));
    }
    Ok(v)
}

/// One exchange with `addr`, waiting at most `timeout` for the answer.
pub fn query(addr: SocketAddr, timeout: Duration) -> Result<Sample> {
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().map_err(|_| Error::msg("bind"))?
    } else {
        "0.0.0.0:0".parse().map_err(|_| Error::msg("bind"))?
    };
    let s = UdpSocket::bind(bind).map_err(|e| Error::io("SNTP socket", e))?;
    s.connect(addr).map_err(|e| Error::io(format!("SNTP to {addr}"), e))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| Error::io("SNTP timeout", e))?;
    let req = request(unix_now());
    s.send(&req).map_err(|e| Error::io(format!("SNTP request to {addr}"), e))?;
    let mut buf = [0u8; 512];
    let end = std::time::Instant::now() + timeout;
    loop {
        let n = s.recv(&mut buf).map_err(|e| Error::io(format!("no SNTP answer from {addr}"), e))?;
        let t4 = unix_now();
        match parse_reply(&buf[..n], &req, t4) {
            Ok(sample) => return Ok(sample),
            // A late answer to an earlier request: keep waiting for ours.
            Err(_) if std::time::Instant::now() < end => continue,
            Err(e) => return Err(Error::msg(format!("SNTP {addr}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server reply built as RFC 4330 describes, `skew` seconds ahead of the client.
    fn reply(req: &[u8; 48], t1: f64, skew: f64, mode: u8, stratum: u8, li: u8) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = (li << 6) | (4 << 3) | mode;
        p[1] = stratum;
        p[24..32].copy_from_slice(&req[40..48]);
        p[32..40].copy_from_slice(&to_ntp(t1 + 0.010 + skew));
        p[40..48].copy_from_slice(&to_ntp(t1 + 0.011 + skew));
        p
    }

    #[test]
    fn offset_and_delay_from_the_four_timestamps() {
        let t1 = 1_790_000_000.25;
        let req = request(t1);
        let s = parse_reply(&reply(&req, t1, 3600.0, 4, 2, 0), &req, t1 + 0.021).unwrap();
        assert!((s.offset - 3600.0).abs() < 1e-3, "{s:?}");
        assert!((s.delay - 0.020).abs() < 1e-3, "{s:?}");
        // Years behind: a clock from an RTC set to 2020 is corrected all the way.
        let s = parse_reply(&reply(&req, t1, -200_000_000.0, 4, 1, 0), &req, t1 + 0.021).unwrap();
        assert!((s.offset + 200_000_000.0).abs() < 1e-3, "{s:?}");
    }

    #[test]
    fn bad_replies_are_refused_with_the_reason() {
        let t1 = 1_790_000_000.0;
        let req = request(t1);
        let other = request(t1 + 1.0);
        for (p, says) in [
            (reply(&req, t1, 0.0, 3, 2, 0), "mode 3"),
            (reply(&other, t1, 0.0, 4, 2, 0), "originate"),
            (reply(&req, t1, 0.0, 4, 0, 0), "kiss"),
            (reply(&req, t1, 0.0, 4, 2, 3), "not synchronised"),
            (vec![0x24; 20], "short"),
        ] {
            let e = parse_reply(&p, &req, t1).unwrap_err();
            assert!(e.contains(says), "{says}: {e}");
        }
    }

    #[test]
    fn timestamps_round_trip() {
        for t in [100_000_000.0, 1_790_000_000.5, 4_000_000_000.0] {
            assert!((from_ntp(&to_ntp(t)) - t).abs() < 1e-6);
        }
    }

    #[test]
    fn a_real_exchange_on_loopback() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 48];
            let (_, from) = server.recv_from(&mut b).unwrap();
            let mut req = [0u8; 48];
            req.copy_from_slice(&b);
            let t1 = from_ntp(&req[40..48]);
            server.send_to(&reply(&req, t1, 42.0, 4, 1, 0), from).unwrap();
        });
        let s = query(addr, Duration::from_secs(5)).unwrap();
        assert!((s.offset - 42.0).abs() < 0.5, "{s:?}");
        assert!(resolve("127.0.0.1").unwrap()[0].port() == 123);
        assert!(resolve("127.0.0.1:1123").unwrap()[0].port() == 1123);
        assert!(resolve("::1").unwrap()[0].is_ipv6());
    }
}
