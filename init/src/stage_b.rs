//! Stage B: PID 1 in the real root. Phases 1, 3, 4, 5, 6 (provisioning), 7 and the main loop (8).
use crate::applets::{SIG_HALT, SIG_POWEROFF, SIG_REBOOT};
use crate::cmdline::Cmdline;
use crate::error::{Error, Result};
use crate::services::{self, Supervisor};
use crate::shutdown::{self, Action};
use crate::{clock, coldplug, dhcp, disk, ipconfig, kmod, log, mounts, net, powerbutton, provision, rescue, shares, sys, timesync};
use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::Duration;

pub const DEFAULT_HOSTNAME: &str = "ferry";
pub const PERSISTED_HOSTNAME: &str = "/var/lib/boot2docker/etc/hostname";

pub fn run() -> ! {
    // Threads inherit this mask; the main loop takes signals synchronously with sigtimedwait.
    sys::block_all_signals();
    if let Err(e) = log::phase("mounts", || {
        mounts::mount_all(mounts::STAGE_B)?;
        let _ = std::fs::remove_file("/dev/ptmx");
        std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx").map_err(|e| Error::io("link /dev/ptmx", e))?;
        for (l, t) in [
            ("/dev/fd", "/proc/self/fd"),
            ("/dev/stdin", "/proc/self/fd/0"),
            ("/dev/stdout", "/proc/self/fd/1"),
            ("/dev/stderr", "/proc/self/fd/2"),
        ] {
            let _ = std::os::unix::fs::symlink(t, l);
        }
        sys::mkdir_p("/var/log", 0o755)
    }) {
        rescue::shell_forever(&format!("early mounts: {e}"));
    }
    let cmdline = Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    for w in &cmdline.warnings {
        log::warn(w);
    }
    if cmdline.rescue {
        rescue::shell_forever("ferry.rescue on the kernel command line");
    }
    if let Err(e) = sys::raise_open_files(sys::OPEN_FILES) {
        log::warn(&format!("open-file limit stays at the kernel's default: {e}"));
    }
    // Ctrl-Alt-Del becomes SIGINT to us instead of an immediate reboot.
    // SAFETY: reboot(2) with the CAD-off command only changes a flag.
    unsafe { libc::reboot(libc::RB_DISABLE_CAD) };

    let db = log::phase("modules", || {
        let db = kmod::ModDb::running()?;
        let hot = db.clone();
        std::thread::spawn(move || coldplug::hotplug_thread(hot));
        let n = coldplug::coldplug(&db);
        log::line(&format!("modules: {n} loaded by coldplug"));
        Ok(db)
    });
    let _ = log::phase("clock", || clock::apply_floor().map(|note| log::line(&note)));
    // The disk comes before the network so the persisted hostname is the one DHCP announces.
    let outcome = log::phase("disk", || {
        let o = disk::setup(cmdline.disk.as_deref(), cmdline.pause.as_deref());
        if matches!(o, disk::Outcome::Ram { .. }) {
            mounts::mount_all(mounts::RAM_DATA)?;
        }
        Ok(o)
    });
    let (persistent, fallback) = match outcome {
        Ok(disk::Outcome::Persistent { .. }) => (true, vec![]),
        Ok(disk::Outcome::Ram { userdata }) => (false, userdata),
        Err(_) => (false, vec![]),
    };
    let hostname = pick_hostname(&cmdline);
    let _ = log::phase("network", || network(&hostname, &cmdline.ip));
    // Before the engine makes or checks certificates: SNTP (a few seconds at most), then the RTC witness.
    let _ = log::phase("time", || {
        let dhcp = timesync::DHCP_NTP.lock().map(|v| v.clone()).unwrap_or_default();
        let mut sync = timesync::Sync::new(timesync::pick(&dhcp, timesync::profile_ntp_server().as_deref(), cmdline.ntpserver.as_deref()));
        sync.at_boot(Duration::from_secs(3));
        std::thread::spawn(move || sync.run());
        Ok(())
    });
    let _ = log::phase("userdata", || provision::run(persistent, &fallback).map(|s| log::line(&s)));
    // Before the engine, so containers started at boot see the host's folders.
    if let Ok(db) = &db {
        let _ = log::phase("shares", || {
            log::line(&format!("shares: {}", shares::mount_all(db)));
            Ok(())
        });
    }

    let mut sup = Supervisor::default();
    let _ = log::phase("services", || {
        sup.add(services::ENGINE);
        sup.add(services::SSHD);
        if cmdline.autologin {
            let gid = group_id("docker").unwrap_or(50);
            for tty in consoles() {
                sup.add(services::console_login(tty, gid));
            }
        }
        sup.tick();
        Ok(())
    });
    std::thread::spawn(powerbutton::watch_thread);
    let up = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    log::line(&format!("[boot] userspace up; {}s since kernel start", up.split_whitespace().next().unwrap_or("?")));
    main_loop(&mut sup)
}

fn main_loop(sup: &mut Supervisor) -> ! {
    // SAFETY: plain sigset manipulation.
    let set = unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut s);
        s
    };
    loop {
        let wait = sup.next_due().unwrap_or(Duration::from_secs(5)).min(Duration::from_secs(5));
        let ts = libc::timespec { tv_sec: wait.as_secs() as i64, tv_nsec: wait.subsec_nanos().max(1_000_000) as i64 };
        // SAFETY: valid set and timespec; info may be null.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
        reap(sup);
        let action = match sig {
            s if s == libc::SIGTERM || s == libc::SIGPWR || s == SIG_POWEROFF => Some(Action::PowerOff),
            s if s == SIG_REBOOT => Some(Action::Reboot),
            s if s == SIG_HALT => Some(Action::Halt),
            _ => None,
        };
        if let Some(a) = action {
            shutdown::run(sup, a);
        }
        sup.tick();
    }
}

fn reap(sup: &mut Supervisor) {
    loop {
        let mut st = 0;
        // SAFETY: waitpid with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        sup.exited(pid, st);
    }
}

fn pick_hostname(c: &Cmdline) -> String {
    if let Ok(s) = std::fs::read_to_string(PERSISTED_HOSTNAME) {
        let s = s.trim().to_ascii_lowercase();
        if crate::cmdline::valid_hostname(&s) {
            return s;
        }
        log::warn(&format!("{PERSISTED_HOSTNAME}: invalid hostname {s:?}; ignoring it"));
    }
    let from_ip = c.ip.iter().find_map(|a| match a {
        crate::ipconfig::IpArg::Fixed(f) => f.hostname.clone(),
        _ => None,
    });
    c.hostname.clone().or(from_ip).unwrap_or_else(|| DEFAULT_HOSTNAME.to_string())
}

/// The one default route and the DNS servers every NIC has offered, shared by the DHCP threads.
static ROUTE: std::sync::Mutex<net::DefaultRoute> = std::sync::Mutex::new(net::DefaultRoute::new());
static DNS: std::sync::Mutex<Vec<Ipv4Addr>> = std::sync::Mutex::new(Vec::new());

fn network(hostname: &str, ip: &[ipconfig::IpArg]) -> Result<()> {
    sys::set_hostname(hostname)?;
    net::write_hosts(hostname)?;
    net::set_up("lo")?;
    let nics = net::ethernet_nics();
    // Written at once, so resolv.conf is never missing; each answer adds its servers, never removes.
    add_dns(&[]);
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
    let mut dhcp = 0;
    for (index, (nic, fixed)) in plan.into_iter().enumerate() {
        match fixed {
            Some(f) => match configure_fixed(index, &nic, &f) {
                Ok(msg) => log::line(&msg),
                Err(e) => log::warn(&format!("network: {nic}: fixed address from ip=: {e}")),
            },
            None => {
                let (tx, host) = (tx.clone(), hostname.to_string());
                std::thread::spawn(move || dhcp_loop(index, &nic, &host, tx));
                dhcp += 1;
            }
        }
    }
    drop(tx);
    if dhcp == 0 {
        return Ok(());
    }
    // Wait for the first lease (the engine's server cert wants an address), but never block boot for long.
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(msg) => log::line(&msg),
        Err(_) => log::warn("no DHCP lease yet; continuing (leases are still being requested)"),
    }
    Ok(())
}

/// Add the servers `list` lacks, in order.
fn merge(list: &mut Vec<Ipv4Addr>, servers: &[Ipv4Addr]) {
    for s in servers {
        if !list.contains(s) {
            list.push(*s);
        }
    }
}

fn add_dns(servers: &[Ipv4Addr]) {
    if let Ok(mut dns) = DNS.lock() {
        merge(&mut dns, servers);
        let _ = sys::write_atomic("/etc/resolv.conf", net::resolv_conf(&dns).as_bytes(), 0o644);
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
    add_dns(&f.dns);
    add_ntp(&f.ntp);
    let prefix = u32::from(f.mask).count_ones();
    Ok(format!("network: {nic} {}/{prefix}{} (fixed, from ip=)", f.addr, f.gateway.map(|g| format!(" gateway {g}")).unwrap_or_default()))
}

/// Obtain, apply and renew a lease on NIC number `index`, forever.
fn dhcp_loop(index: usize, nic: &str, hostname: &str, tx: mpsc::Sender<String>) {
    let mac = match net::set_up(nic).and_then(|_| net::mac(nic)) {
        Ok(m) => m,
        Err(e) => return log::line(&format!("network: {e}")),
    };
    let mut current: Option<dhcp::Lease> = None;
    loop {
        match dhcp::obtain(nic, mac, hostname, Duration::from_secs(60)) {
            Ok(l) => {
                if current.as_ref() != Some(&l) {
                    if let Err(e) = net::configure(nic, l.ip, l.mask) {
                        log::line(&format!("network: {e}"));
                    }
                    if let Some(gw) = l.router {
                        take_route(index, nic, gw);
                    }
                    add_ntp(&l.ntp);
                    add_dns(&l.dns);
                    let prefix = u32::from(l.mask).count_ones();
                    let gw = l.router.map(|g| format!(" gateway {g}")).unwrap_or_default();
                    let msg = format!("network: {nic} {}/{prefix}{gw}, lease {}s", l.ip, l.lease_secs);
                    // The first lease is printed by the phase; later ones (other NICs, renewals) here.
                    if tx.send(msg.clone()).is_err() {
                        log::line(&msg);
                    }
                    current = Some(l.clone());
                }
                std::thread::sleep(Duration::from_secs((l.lease_secs as u64 / 2).max(30)));
            }
            Err(e) => {
                log::line(&format!("network: {e}; retrying"));
                std::thread::sleep(Duration::from_secs(30));
            }
        }
    }
}

fn group_id(name: &str) -> Option<u32> {
    let g = std::fs::read_to_string("/etc/group").ok()?;
    g.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name)).then(|| f.get(2)?.parse().ok()).flatten()
    })
}

/// Terminals to give an autologin shell: the serial console and the first VT, when they are consoles.
fn consoles() -> Vec<&'static str> {
    let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
    let mut out = vec![];
    if active.split_whitespace().any(|w| w == "ttyS0") {
        out.push("ttyS0");
    }
    if active.split_whitespace().any(|w| w == "tty0" || w == "tty1") {
        out.push("tty1");
    }
    out
}
