//! Stage B: PID 1 in the real root. Phases 1, 3, 4, 5, 6 (provisioning), 7 and the main loop (8).
use crate::applets::{SIG_HALT, SIG_POWEROFF, SIG_REBOOT};
use crate::cmdline::Cmdline;
use crate::error::Error;
use crate::services::{self, Supervisor};
use crate::shutdown::{self, Action};
use crate::{
    clock, coldplug, disk, guest_tools, hooks, kmod, log, mounts, network, powerbutton, provision, rescue, shares, sys, timesync, trust,
};
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
    let (hostname, hostname_chosen) = pick_hostname(&cmdline);
    let _ = log::phase("network", || network::setup(&hostname, hostname_chosen, &cmdline.ip));
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
    // boot2docker's order: the trust store, then bootsync.sh, then the engine.
    let _ = log::phase("hooks", || {
        match trust::add_registry_cas(trust::CERTS_DIR, trust::BUNDLE) {
            Ok(s) => log::line(&format!("registry CAs: {s}")),
            Err(e) => log::warn(&format!("registry CAs: {e}")),
        }
        log::line(&format!(
            "hooks: {}",
            hooks::run_bootsync(hooks::DIR, hooks::LOG_DIR, cmdline.bootsync_limit.unwrap_or(hooks::BOOTSYNC_LIMIT))?
        ));
        Ok(())
    });

    let mut sup = Supervisor::default();
    let _ = log::phase("services", || {
        sup.add(services::ENGINE);
        sup.add(services::SSHD);
        let (tools, why) = guest_tools::for_this_machine();
        log::line(&format!("guest tools: {why}"));
        for t in tools {
            sup.add(t.spec.clone());
        }
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
    std::thread::spawn(hooks::bootlocal_thread);
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

/// The hostname, and whether someone chose it (persisted, or on the command line); an unchosen default
/// gives way to a name the DHCP server assigns.
fn pick_hostname(c: &Cmdline) -> (String, bool) {
    if let Ok(s) = std::fs::read_to_string(PERSISTED_HOSTNAME) {
        let s = s.trim().to_ascii_lowercase();
        if crate::cmdline::valid_hostname(&s) {
            return (s, true);
        }
        log::warn(&format!("{PERSISTED_HOSTNAME}: invalid hostname {s:?}; ignoring it"));
    }
    let from_ip = c.ip.iter().find_map(|a| match a {
        crate::ipconfig::IpArg::Fixed(f) => f.hostname.clone(),
        _ => None,
    });
    match c.hostname.clone().or(from_ip) {
        Some(h) => (h, true),
        None => (DEFAULT_HOSTNAME.to_string(), false),
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
