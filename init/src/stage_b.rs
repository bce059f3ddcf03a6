//! Stage B: PID 1 in the real root. Phases 1, 3, 4, 5, 6 (provisioning), 7 and the main loop (8).
use crate::applets::{SIG_HALT, SIG_POWEROFF, SIG_REBOOT};
use crate::cmdline::Cmdline;
use crate::error::{Error, Result};
use crate::services::{self, Supervisor};
use crate::shutdown::{self, Action};
use crate::{clock, coldplug, dhcp, disk, kmod, log, mounts, net, powerbutton, provision, rescue, sys};
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

    let _ = log::phase("modules", || {
        let db = kmod::ModDb::running()?;
        let hot = db.clone();
        std::thread::spawn(move || coldplug::hotplug_thread(hot));
        let n = coldplug::coldplug(&db);
        log::line(&format!("modules: {n} loaded by coldplug"));
        Ok(())
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
    let _ = log::phase("network", || network(&hostname));
    let _ = log::phase("userdata", || provision::run(persistent, &fallback).map(|s| log::line(&s)));

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
    c.hostname.clone().unwrap_or_else(|| DEFAULT_HOSTNAME.to_string())
}

fn network(hostname: &str) -> Result<()> {
    sys::set_hostname(hostname)?;
    net::write_hosts(hostname)?;
    net::set_up("lo")?;
    let nics = net::ethernet_nics();
    if nics.is_empty() {
        log::warn("no Ethernet interface found");
        sys::write_atomic("/etc/resolv.conf", net::resolv_conf(&[]).as_bytes(), 0o644)?;
        return Ok(());
    }
    let (tx, rx) = mpsc::channel();
    for nic in &nics {
        let (nic, tx, host) = (nic.clone(), tx.clone(), hostname.to_string());
        std::thread::spawn(move || dhcp_loop(&nic, &host, tx));
    }
    drop(tx);
    // Wait for the first lease (the engine's server cert wants an address), but never block boot for long.
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(msg) => log::line(&msg),
        Err(_) => log::warn("no DHCP lease yet; continuing (leases are still being requested)"),
    }
    Ok(())
}

/// Obtain, apply and renew a lease on one NIC, forever.
fn dhcp_loop(nic: &str, hostname: &str, tx: mpsc::Sender<String>) {
    static DNS: std::sync::Mutex<Vec<Ipv4Addr>> = std::sync::Mutex::new(Vec::new());
    let mac = match net::set_up(nic).and_then(|_| net::mac(nic)) {
        Ok(m) => m,
        Err(e) => return log::line(&format!("network: {e}")),
    };
    let mut current: Option<dhcp::Lease> = None;
    loop {
        match dhcp::obtain(nic, mac, hostname, Duration::from_secs(60)) {
            Ok(l) => {
                if current.as_ref() != Some(&l) {
                    let r = net::configure(nic, l.ip, l.mask).and_then(|_| match l.router {
                        Some(gw) => net::add_default_route(nic, gw),
                        None => Ok(()),
                    });
                    if let Err(e) = r {
                        log::line(&format!("network: {e}"));
                    }
                    if let Ok(mut dns) = DNS.lock() {
                        for d in &l.dns {
                            if !dns.contains(d) {
                                dns.push(*d);
                            }
                        }
                        let _ = sys::write_atomic("/etc/resolv.conf", net::resolv_conf(&dns).as_bytes(), 0o644);
                    }
                    let prefix = u32::from(l.mask).count_ones();
                    let gw = l.router.map(|g| format!(" via {g}")).unwrap_or_default();
                    let _ = tx.send(format!("network: {nic} {}/{prefix}{gw}, lease {}s", l.ip, l.lease_secs));
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
