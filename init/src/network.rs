//! Stage B's network phase: the kernel's `ip=` plan, fixed addresses, and one DHCP thread per NIC that
//! follows its lease (dhcp.rs): renewing at T1, rebinding at T2, dropping the address at expiry, applying
//! a changed address, MTU, classless routes, DNS servers and search list, NTP servers and the hostname.
//! The default route, DNS and NTP lists are shared by every NIC's thread.
use crate::error::Result;
use crate::{dhcp, ipconfig, log, net, sys, timesync};
use std::net::Ipv4Addr;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

static ROUTE: Mutex<net::DefaultRoute> = Mutex::new(net::DefaultRoute::new());
static DNS: Mutex<(Vec<Ipv4Addr>, Vec<String>)> = Mutex::new((Vec::new(), Vec::new()));

pub fn setup(hostname: &str, hostname_chosen: bool, ip: &[ipconfig::IpArg]) -> Result<()> {
    sys::set_hostname(hostname)?;
    net::write_hosts(hostname)?;
    net::set_up("lo")?;
    let nics = net::ethernet_nics();
    // Written at once, so resolv.conf is never missing; each answer adds its servers, never removes.
    add_dns(&[], &[]);
    if nics.is_empty() {
        log::warn("no Ethernet interface found");
        return Ok(());
    }
    let (plan, warnings) = ipconfig::plan(&nics, ip);
    for w in warnings {
        log::warn(&w);
    }
    if plan.is_empty() {
        log::line("network: ip=off on the kernel command line; no interface configured");
        return Ok(());
    }
    let (tx, rx) = mpsc::channel();
    let mut first_dhcp = None;
    for (index, (nic, fixed)) in plan.into_iter().enumerate() {
        match fixed {
            Some(f) => match configure_fixed(index, &nic, &f) {
                Ok(msg) => log::line(&msg),
                Err(e) => log::warn(&format!("network: {nic}: fixed address from ip=: {e}")),
            },
            None => {
                let (tx, host) = (tx.clone(), hostname.to_string());
                first_dhcp.get_or_insert((index, nic.clone()));
                std::thread::spawn(move || follow_leases(index, &nic, &host, !hostname_chosen, tx));
            }
        }
    }
    drop(tx);
    let Some((first, first_nic)) = first_dhcp else { return Ok(()) };
    // The engine's server cert wants an address and SNTP wants the route to its server: wait for the first
    // DHCP interface's lease, but never block boot for long.
    let mut wait = LeaseWait::new(Instant::now());
    let mut any = false;
    loop {
        match rx.recv_timeout(wait.deadline().saturating_duration_since(Instant::now())) {
            Ok((index, msg)) => {
                log::line(&msg);
                any = true;
                if index == first {
                    break;
                }
                wait.other_lease(Instant::now());
            }
            Err(_) if any => {
                log::warn(&format!("network: no lease on {first_nic} yet; continuing (it is still being requested)"));
                break;
            }
            Err(_) => {
                log::warn("no DHCP lease yet; continuing (leases are still being requested)");
                break;
            }
        }
    }
    Ok(())
}

/// How long boot waits for the first DHCP interface's lease (eth0: boot2docker's NAT, with the default
/// route and the host's services such as 10.0.2.2): `ALL` in all, and at most `AFTER_OTHER` once another
/// interface has its lease, so a first NIC with no cable costs a few seconds, not twenty.
struct LeaseWait {
    start: Instant,
    other: Option<Instant>,
}

impl LeaseWait {
    const ALL: Duration = Duration::from_secs(20);
    const AFTER_OTHER: Duration = Duration::from_secs(5);

    fn new(start: Instant) -> LeaseWait {
        LeaseWait { start, other: None }
    }

    fn other_lease(&mut self, at: Instant) {
        self.other.get_or_insert(at);
    }

    fn deadline(&self) -> Instant {
        let all = self.start + Self::ALL;
        self.other.map_or(all, |t| all.min(t + Self::AFTER_OTHER))
    }
}

/// Add the entries `list` lacks, in order.
fn merge<T: PartialEq + Clone>(list: &mut Vec<T>, new: &[T]) {
    for s in new {
        if !list.contains(s) {
            list.push(s.clone());
        }
    }
}

fn add_dns(servers: &[Ipv4Addr], search: &[String]) {
    if let Ok(mut dns) = DNS.lock() {
        merge(&mut dns.0, servers);
        merge(&mut dns.1, search);
        let _ = sys::write_atomic("/etc/resolv.conf", net::resolv_conf(&dns.0, &dns.1).as_bytes(), 0o644);
    }
}

fn add_ntp(servers: &[Ipv4Addr]) {
    if let Ok(mut ntp) = timesync::DHCP_NTP.lock() {
        merge(&mut ntp, servers);
    }
}

fn take_route(index: usize, nic: &str, gw: Ipv4Addr) {
    let r = match ROUTE.lock() {
        Ok(mut r) => r.take(index, nic, gw),
        Err(_) => return,
    };
    match r {
        Ok(Some(msg)) => log::line(&msg),
        Ok(None) => {}
        Err(e) => log::line(&format!("network: {e}")),
    }
}

fn configure_fixed(index: usize, nic: &str, f: &ipconfig::Fixed) -> Result<String> {
    net::set_up(nic)?;
    net::configure(nic, f.addr, f.mask)?;
    if let Some(gw) = f.gateway {
        take_route(index, nic, gw);
    }
    add_dns(&f.dns, &[]);
    add_ntp(&f.ntp);
    let prefix = u32::from(f.mask).count_ones();
    Ok(format!("network: {nic} {}/{prefix}{} (fixed, from ip=)", f.addr, f.gateway.map(|g| format!(" gateway {g}")).unwrap_or_default()))
}

/// What changed between the lease in force and a new one, for applying only that.
#[derive(Debug, PartialEq, Default)]
pub struct Changes {
    pub address: bool,
    pub mtu: Option<u16>,
    pub routes_gone: Vec<(Ipv4Addr, u8, Ipv4Addr)>,
    pub routes_new: Vec<(Ipv4Addr, u8, Ipv4Addr)>,
}

pub fn changes(old: Option<&dhcp::Lease>, new: &dhcp::Lease) -> Changes {
    let old_routes = old.map(|o| o.static_routes()).unwrap_or_default();
    let new_routes = new.static_routes();
    let address = old.is_none_or(|o| o.ip != new.ip || o.mask != new.mask);
    Changes {
        address,
        mtu: new.mtu.filter(|m| address || old.and_then(|o| o.mtu) != Some(*m)),
        routes_gone: old_routes.iter().filter(|r| address || !new_routes.contains(r)).copied().collect(),
        // A new address drops the kernel's routes through the interface: add them all again.
        routes_new: new_routes.iter().filter(|r| address || !old_routes.contains(r)).copied().collect(),
    }
}

/// Apply a lease (the first, or one that renewed or replaced `old`).
fn apply(index: usize, nic: &str, old: Option<&dhcp::Lease>, l: &dhcp::Lease, adopt_hostname: bool) {
    let c = changes(old, l);
    let mut notes = vec![];
    if c.address {
        if let Err(e) = net::configure(nic, l.ip, l.mask) {
            log::line(&format!("network: {e}"));
        }
        if let Ok(r) = ROUTE.lock() {
            let _ = r.restore(index);
        }
    }
    if let Some(mtu) = c.mtu {
        match net::set_mtu(nic, mtu) {
            Ok(()) => notes.push(format!("MTU {mtu}")),
            Err(e) => log::line(&format!("network: {e}")),
        }
    }
    for (d, p, g) in &c.routes_gone {
        let _ = net::del_route(nic, *d, *p, *g);
    }
    for (d, p, g) in &c.routes_new {
        match net::add_route(nic, *d, *p, *g) {
            Ok(()) => notes.push(format!("route {d}/{p} via {g}")),
            Err(e) => log::line(&format!("network: {e}")),
        }
    }
    if let Some(gw) = l.gateway() {
        take_route(index, nic, gw);
    }
    add_ntp(&l.ntp);
    add_dns(&l.dns, &l.search_list());
    if let Some(h) = l.hostname.as_deref().map(str::to_ascii_lowercase).filter(|h| adopt_hostname && crate::cmdline::valid_hostname(h)) {
        let current = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        if current.trim() != h && sys::set_hostname(&h).and_then(|_| net::write_hosts(&h)).is_ok() {
            notes.push(format!("hostname {h} (from the DHCP server)"));
        }
    }
    if !notes.is_empty() {
        log::line(&format!("network: {nic}: {}", notes.join(", ")));
    }
}

/// The lease is gone (NAK or expiry): the address and its routes go, and the default route if this NIC
/// held it.
fn drop_lease(index: usize, nic: &str, l: &dhcp::Lease, why: &str) {
    log::line(&format!("network: {nic}: lease on {} {why}; address removed", l.ip));
    for (d, p, g) in l.static_routes() {
        let _ = net::del_route(nic, d, p, g);
    }
    if let Err(e) = net::deconfigure(nic) {
        log::line(&format!("network: {e}"));
    }
    if let Some(msg) = ROUTE.lock().ok().and_then(|mut r| r.release(index)) {
        log::line(&msg);
    }
}

fn describe(nic: &str, l: &dhcp::Lease) -> String {
    let prefix = u32::from(l.mask).count_ones();
    let gw = l.gateway().map(|g| format!(" gateway {g}")).unwrap_or_default();
    format!("network: {nic} {}/{prefix}{gw}, lease {}s", l.ip, l.lease_secs)
}

/// Obtain, apply and follow leases on NIC number `index`, forever (RFC 2131 §4.4: INIT, BOUND,
/// RENEWING, REBINDING).
fn follow_leases(index: usize, nic: &str, hostname: &str, adopt_hostname: bool, tx: mpsc::Sender<(usize, String)>) {
    let mut client = match net::set_up(nic).and_then(|_| net::mac(nic)).and_then(|mac| dhcp::Client::new(nic, mac, hostname)) {
        Ok(c) => c,
        Err(e) => return log::line(&format!("network: {e}")),
    };
    loop {
        // INIT (the address, if any, went with the last lease)
        let mut lease = match client.obtain(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(e) => {
                log::line(&format!("network: {e}; retrying"));
                std::thread::sleep(Duration::from_secs(30));
                continue;
            }
        };
        apply(index, nic, None, &lease, adopt_hostname);
        let msg = describe(nic, &lease);
        // The first lease is printed by the phase; later ones (other NICs, new addresses) here.
        if tx.send((index, msg.clone())).is_err() {
            log::line(&msg);
        }
        // BOUND, then RENEWING and REBINDING, until a NAK or the expiry sends us back to INIT.
        let mut granted = Instant::now();
        loop {
            let (t1, t2, end) = lease.timers();
            std::thread::sleep((granted + t1).saturating_duration_since(Instant::now()));
            // RENEWING goes to the server that granted the lease; one that did not say who it is gets a broadcast.
            let server = if lease.server.is_unspecified() { Ipv4Addr::BROADCAST } else { lease.server };
            let renewed = match client.extend(&lease, server, granted + t2) {
                Ok(dhcp::Reply::Silence) => client.extend(&lease, Ipv4Addr::BROADCAST, granted + end),
                r => r,
            };
            match renewed {
                Ok(dhcp::Reply::Ack(new)) => {
                    let how = if new.ip == lease.ip { "renewed" } else { "renewed with a new address" };
                    log::line(&format!("network: {nic}: lease on {} {how} ({}s, server {})", new.ip, new.lease_secs, new.server));
                    apply(index, nic, Some(&lease), &new, adopt_hostname);
                    granted = Instant::now();
                    lease = new;
                }
                Ok(dhcp::Reply::Nak) => {
                    drop_lease(index, nic, &lease, "refused by the server (NAK)");
                    break;
                }
                Ok(dhcp::Reply::Silence) => {
                    drop_lease(index, nic, &lease, "expired with no answer from any server");
                    break;
                }
                Err(e) => {
                    log::line(&format!("network: {e}"));
                    std::thread::sleep(Duration::from_secs(5));
                    if granted.elapsed() >= end {
                        drop_lease(index, nic, &lease, "expired");
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ip: [u8; 4], mtu: Option<u16>, routes: &[(Ipv4Addr, u8, Ipv4Addr)]) -> dhcp::Lease {
        dhcp::Lease { ip: ip.into(), mask: Ipv4Addr::new(255, 255, 255, 0), mtu, routes: routes.to_vec(), ..Default::default() }
    }

    #[test]
    fn only_what_changed_is_applied() {
        let r1 = (Ipv4Addr::new(198, 51, 100, 0), 24, Ipv4Addr::new(192, 168, 77, 1));
        let r2 = (Ipv4Addr::new(203, 0, 113, 0), 24, Ipv4Addr::new(192, 168, 77, 1));
        let a = lease([192, 168, 77, 55], Some(1400), &[r1]);
        let first = changes(None, &a);
        assert_eq!(first, Changes { address: true, mtu: Some(1400), routes_gone: vec![], routes_new: vec![r1] });
        assert_eq!(changes(Some(&a), &a), Changes::default(), "a plain renewal changes nothing");
        let b = lease([192, 168, 77, 55], Some(1500), &[r2]);
        assert_eq!(changes(Some(&a), &b), Changes { address: false, mtu: Some(1500), routes_gone: vec![r1], routes_new: vec![r2] });
        let moved = lease([192, 168, 77, 77], Some(1400), &[r1]);
        assert_eq!(changes(Some(&a), &moved), Changes { address: true, mtu: Some(1400), routes_gone: vec![r1], routes_new: vec![r1] });
    }

    #[test]
    fn the_first_nic_is_awaited_but_not_for_long_once_another_has_a_lease() {
        let t0 = Instant::now();
        let mut w = LeaseWait::new(t0);
        assert_eq!(w.deadline(), t0 + Duration::from_secs(20), "nothing yet: the whole 20 s");
        w.other_lease(t0 + Duration::from_secs(2));
        assert_eq!(w.deadline(), t0 + Duration::from_secs(7), "eth1 first: 5 s more for eth0");
        w.other_lease(t0 + Duration::from_secs(4));
        assert_eq!(w.deadline(), t0 + Duration::from_secs(7), "a third NIC does not extend the wait");
        let mut late = LeaseWait::new(t0);
        late.other_lease(t0 + Duration::from_secs(18));
        assert_eq!(late.deadline(), t0 + Duration::from_secs(20), "never past the 20 s");
    }
}
