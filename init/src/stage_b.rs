//! Stage B: PID 1 in the real root. Its phases are a table (PHASES) that says what each failure means;
//! then the main loop: signals, reaping, service restarts.
use crate::applets::{SIG_HALT, SIG_POWEROFF, SIG_REBOOT};
use crate::cmdline::Cmdline;
use crate::error::Error;
use crate::services::{self, Supervisor};
use crate::shutdown::{self, Action};
use crate::{
    clock, coldplug, containerd, disk, guest_tools, hooks, kmod, log, mounts, network, powerbutton, provision, rescue, rootcopy, shares,
    sys, timesync, trust, tuning,
};
use ferry_contract::paths::{self, PERSISTED_HOSTNAME};
use std::time::Duration;

pub const DEFAULT_HOSTNAME: &str = "ferry";

/// What a phase's failure means for the boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Nothing after it can work: a rescue shell on the console.
    Rescue,
    /// Logged (the phase line says FAILED and why); the boot goes on with less.
    Continue,
}

/// What the phases hand on to each other.
#[derive(Default)]
pub struct Boot {
    cmdline: Cmdline,
    /// The module index (coldplug, hotplug and the shares use it); None when it could not be read.
    db: Option<kmod::ModDb>,
    /// The data disk is mounted; else everything lives in RAM and `fallback` holds a failed format-me
    /// disk's userdata, so its SSH keys still work.
    persistent: bool,
    /// The CPU's aliases, whose modules load after the services (coldplug::deferred).
    cpu_aliases: Vec<String>,
    /// The RTC was before the build time: the clock is surely wrong, and the boot waits for SNTP.
    clock_raised: bool,
    fallback: Vec<ferry_contract::userdata::Entry>,
    sup: Supervisor,
}

pub struct Phase {
    pub name: &'static str,
    pub on_error: OnError,
    run: fn(&mut Boot) -> Result<(), Error>,
}

/// Stage B in order, one console line each with its duration.
pub const PHASES: &[Phase] = &[
    Phase { name: "mounts", on_error: OnError::Rescue, run: early_mounts },
    Phase { name: "cmdline", on_error: OnError::Rescue, run: read_cmdline },
    Phase { name: "modules", on_error: OnError::Continue, run: modules },
    Phase { name: "clock", on_error: OnError::Continue, run: clock_floor },
    // The disk comes before the network so the persisted hostname is the one DHCP announces.
    Phase { name: "disk", on_error: OnError::Continue, run: data_disk },
    // As soon as /var/lib/docker is where it stays: containerd starts while the network and clock settle.
    Phase { name: "containerd", on_error: OnError::Continue, run: |_| containerd::start().map(|s| log::line(&s)) },
    Phase { name: "network", on_error: OnError::Continue, run: network },
    // SNTP in the clock's thread: the boot waits for it only when the RTC was before the build; the
    // engine manager waits for its word (CLOCK_CHECKED) before it makes certificates.
    Phase { name: "time", on_error: OnError::Continue, run: time },
    Phase { name: "userdata", on_error: OnError::Continue, run: |b| provision::run(b.persistent, &b.fallback).map(|s| log::line(&s)) },
    // Before the engine, so containers started at boot see the host's folders.
    Phase { name: "shares", on_error: OnError::Continue, run: host_shares },
    // boot2docker's order: the trust store, then bootsync.sh, then the engine.
    Phase { name: "hooks", on_error: OnError::Continue, run: boot_hooks },
    Phase { name: "services", on_error: OnError::Continue, run: start_services },
];

pub fn run() -> ! {
    // Threads inherit this mask; the main loop takes signals synchronously with sigtimedwait.
    sys::block_all_signals();
    let mut boot = Boot::default();
    for p in PHASES {
        if let Err(e) = log::phase(p.name, || (p.run)(&mut boot)) {
            if p.on_error == OnError::Rescue {
                rescue::shell_forever(&format!("{}: {e}", p.name));
            }
        }
    }
    std::thread::spawn(powerbutton::watch_thread);
    std::thread::spawn(hooks::bootlocal_thread);
    if boot.persistent {
        std::thread::spawn(rootcopy::thread);
    }
    if let Some(db) = boot.db.clone() {
        let aliases = std::mem::take(&mut boot.cpu_aliases);
        std::thread::spawn(move || coldplug::load_later(db, aliases));
    }
    let up = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    log::line(&format!("[boot] userspace up; {}s since kernel start", up.split_whitespace().next().unwrap_or("?")));
    main_loop(&mut boot.sup)
}

fn early_mounts(_: &mut Boot) -> Result<(), Error> {
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
    sys::mkdir_p(paths::LOG_DIR, 0o755)
}

/// The kernel command line (its mistakes are warnings), and PID 1's own settings. `ferry.rescue` asks
/// for the rescue shell: this phase's error.
fn read_cmdline(b: &mut Boot) -> Result<(), Error> {
    b.cmdline = Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    for w in &b.cmdline.warnings {
        log::warn(w);
    }
    if b.cmdline.rescue {
        return Err(Error::msg("ferry.rescue on the kernel command line"));
    }
    if let Err(e) = sys::raise_open_files(sys::OPEN_FILES) {
        log::warn(&format!("open-file limit stays at the kernel's default: {e}"));
    }
    tuning::apply();
    // Ctrl-Alt-Del becomes SIGINT to us instead of an immediate reboot.
    if let Err(e) = sys::reboot(sys::RebootCommand::CadOff) {
        log::warn(&format!("Ctrl-Alt-Del stays an immediate reboot: {e}"));
    }
    Ok(())
}

fn modules(b: &mut Boot) -> Result<(), Error> {
    let db = kmod::ModDb::running()?;
    let hot = db.clone();
    std::thread::spawn(move || coldplug::hotplug_thread(hot));
    let report = coldplug::coldplug(&db);
    log::line(&format!("modules: {report}"));
    b.cpu_aliases = report.deferred;
    b.db = Some(db);
    Ok(())
}

fn data_disk(b: &mut Boot) -> Result<(), Error> {
    match disk::setup(b.cmdline.disk.as_deref(), b.cmdline.pause.as_deref()) {
        disk::Outcome::Persistent { .. } => b.persistent = true,
        disk::Outcome::Ram { userdata } => {
            b.fallback = userdata;
            mounts::mount_all(mounts::RAM_DATA)?;
        }
    }
    Ok(())
}

fn network(b: &mut Boot) -> Result<(), Error> {
    let (hostname, chosen) = pick_hostname(&b.cmdline);
    network::setup(&hostname, chosen, &b.cmdline.ip)
}

fn clock_floor(b: &mut Boot) -> Result<(), Error> {
    let floor = clock::apply_floor()?;
    log::line(&floor.note);
    b.clock_raised = floor.raised;
    Ok(())
}

/// How long the boot's SNTP attempt may take.
const SNTP_AT_BOOT: Duration = Duration::from_secs(3);

fn time(b: &mut Boot) -> Result<(), Error> {
    let dhcp = timesync::DHCP_NTP.lock().map(|v| v.clone()).unwrap_or_default();
    let mut sync = timesync::Sync::new(timesync::pick(&dhcp, timesync::profile_ntp_server().as_deref(), b.cmdline.ntpserver.as_deref()));
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        sync.at_boot(SNTP_AT_BOOT, done);
        sync.run()
    });
    if !b.clock_raised {
        // The RTC (under a hypervisor, the host's clock) is believed meanwhile; a wrong one is stepped when
        // SNTP answers, and nothing before the engine's certificates depends on the exact time.
        log::line("clock: the RTC's time is after the build; SNTP checks it in the background");
        return Ok(());
    }
    // A clock raised to the build time is surely behind: bootsync.sh and the engine get SNTP's time if
    // it comes within the limit.
    match outcome.recv_timeout(SNTP_AT_BOOT + Duration::from_secs(1)) {
        Ok(o) => log::line(&format!("clock: the boot waited for SNTP, the RTC being before the build: {o}")),
        Err(_) => log::warn("clock: no word from SNTP within its limit; going on with the build time"),
    }
    Ok(())
}

fn host_shares(b: &mut Boot) -> Result<(), Error> {
    let Some(db) = &b.db else { return Err(Error::msg("no module index (see the modules phase); shares not mounted")) };
    log::line(&format!("shares: {}", shares::mount_all(db)));
    Ok(())
}

fn boot_hooks(b: &mut Boot) -> Result<(), Error> {
    match trust::add_registry_cas(paths::CERTS_DIR, trust::BUNDLE) {
        Ok(s) => log::line(&format!("registry CAs: {s}")),
        Err(e) => log::warn(&format!("registry CAs: {e}")),
    }
    let limit = b.cmdline.bootsync_limit.unwrap_or(hooks::BOOTSYNC_LIMIT);
    log::line(&format!("hooks: {}", hooks::run_bootsync(paths::B2D, paths::PERSISTENT_LOG_DIR, limit)?));
    Ok(())
}

fn start_services(b: &mut Boot) -> Result<(), Error> {
    let sup = &mut b.sup;
    sup.add(services::ENGINE);
    sup.add(services::SSHD);
    let (tools, why) = guest_tools::for_this_machine();
    log::line(&format!("guest tools: {why}"));
    for t in tools {
        sup.add(t.spec.clone());
    }
    if b.cmdline.autologin {
        let gid = group_id("docker").unwrap_or(50);
        for tty in consoles() {
            sup.add(services::console_login(tty, gid));
        }
    }
    sup.tick();
    Ok(())
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
        sup.reap();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn position(name: &str) -> usize {
        PHASES.iter().position(|p| p.name == name).unwrap_or_else(|| panic!("no phase {name}"))
    }

    #[test]
    fn only_the_ground_floor_is_fatal() {
        let fatal: Vec<&str> = PHASES.iter().filter(|p| p.on_error == OnError::Rescue).map(|p| p.name).collect();
        assert_eq!(fatal, ["mounts", "cmdline"]);
        assert_eq!(&PHASES[..2].iter().map(|p| p.name).collect::<Vec<_>>(), &fatal, "the fatal phases come first");
    }

    #[test]
    fn the_order_the_boot_relies_on() {
        // The persisted hostname (disk) before DHCP announces one; SNTP before the engine's certificates;
        // shares and boot2docker's hooks before the engine starts; containerd on the data disk, and early.
        for (before, after) in [
            ("modules", "disk"),
            ("disk", "network"),
            ("disk", "containerd"),
            ("containerd", "network"),
            ("network", "time"),
            ("time", "services"),
            ("userdata", "services"),
            ("shares", "services"),
            ("hooks", "services"),
        ] {
            assert!(position(before) < position(after), "{before} must come before {after}");
        }
        assert_eq!(PHASES.last().map(|p| p.name), Some("services"));
    }
}
