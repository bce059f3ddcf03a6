//! Keeping the clock right after boot: SNTP (`sntp.rs`) from the configured servers, and the RTC as a
//! witness. A host that sleeps (a paused VM: QMP `stop`/`cont`) leaves the guest's system clock behind,
//! while the RTC follows the host's clock. So a thread compares the two every few seconds; the offset
//! between them is learnt at boot and after every SNTP answer (so an RTC set years off, with
//! `-rtc base=...`, is still a good witness), and a jump of more than 2 s is corrected at once from the RTC,
//! to a few milliseconds by waiting for its seconds to tick over, then refined by SNTP when there is a
//! server. One console line per step, with the offset.
//!
//! Servers, first found wins: DHCP option 42; the profile's `NTP_SERVER`; the kernel's `ntpserver=`;
//! `pool.ntp.org`. An explicitly empty `NTP_SERVER` or `ntpserver=` turns SNTP off (the RTC witness stays).
use crate::{log, sntp};
use ferry_contract::paths::{self, PROFILE};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const DEFAULT_SERVER: &str = "pool.ntp.org";
const RTC: &str = "/sys/class/rtc/rtc0/since_epoch";

/// NTP servers from DHCP option 42, filled by the DHCP threads.
pub static DHCP_NTP: Mutex<Vec<Ipv4Addr>> = Mutex::new(Vec::new());

#[derive(Debug, Clone, PartialEq)]
pub enum Servers {
    Off(&'static str),
    Use(Vec<String>, &'static str),
}

/// The choice of servers, from its inputs (None: not set; Some(""): set empty = off).
pub fn pick(dhcp: &[Ipv4Addr], profile: Option<&str>, cmdline: Option<&str>) -> Servers {
    let words = |s: &str| s.split([' ', ',', '\t']).filter(|w| !w.is_empty()).map(str::to_string).collect::<Vec<_>>();
    // An explicit "off" from the user beats what the network offers.
    if profile.is_some_and(|p| words(p).is_empty()) {
        return Servers::Off("NTP_SERVER is empty in the profile");
    }
    if cmdline.is_some_and(|c| words(c).is_empty()) {
        return Servers::Off("ntpserver= is empty on the kernel command line");
    }
    if !dhcp.is_empty() {
        return Servers::Use(dhcp.iter().map(|a| a.to_string()).collect(), "DHCP option 42");
    }
    if let Some(p) = profile {
        return Servers::Use(words(p), "the profile's NTP_SERVER");
    }
    if let Some(c) = cmdline {
        return Servers::Use(words(c), "ntpserver= on the kernel command line");
    }
    Servers::Use(vec![DEFAULT_SERVER.into()], "the default")
}

/// `NTP_SERVER` as the profile sets it (a shell fragment, evaluated as boot2docker did), with a time
/// limit. None when there is no profile or it does not set the variable.
pub fn profile_ntp_server() -> Option<String> {
    if !std::path::Path::new(PROFILE).is_file() {
        return None;
    }
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args([
        "-c",
        ". \"$1\" >/dev/null 2>&1 </dev/null; if [ \"${NTP_SERVER+set}\" = set ]; then printf 'set:%s' \"$NTP_SERVER\"; fi",
        "sh",
        PROFILE,
    ])
    .env_clear()
    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    crate::sys::unblock_signals_in_child(&mut cmd);
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    let mut child = cmd.spawn().ok()?;
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                // SAFETY: kill(2) of the process group we just made.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                log::warn(&format!("clock: {PROFILE} took over 5 s to evaluate; NTP_SERVER from it ignored"));
                return None;
            }
        }
    }
    let mut out = String::new();
    use std::io::Read;
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    out.strip_prefix("set:").map(str::to_string)
}

fn step_by(offset: f64) -> bool {
    let t = sntp::unix_now() + offset;
    crate::sys::set_clock(t.floor() as i64, ((t - t.floor()) * 1e9) as i64).is_ok()
}

fn rtc_seconds() -> Option<i64> {
    std::fs::read_to_string(RTC).ok()?.trim().parse().ok()
}

/// The RTC's time to a few milliseconds: wait for its seconds to tick over (at most 1.1 s) and return
/// (RTC seconds at the tick, system time at the tick).
fn rtc_tick() -> Option<(f64, f64)> {
    let first = rtc_seconds()?;
    let end = Instant::now() + Duration::from_millis(1100);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(4));
        let now = rtc_seconds()?;
        if now != first {
            return Some((now as f64, sntp::unix_now()));
        }
    }
    None
}

/// Format an offset the way the console shows it: `+3.214 s`.
pub fn fmt_offset(o: f64) -> String {
    format!("{o:+.3} s")
}

/// Ask each server in turn (each address of each name), round after round, until one answers or `limit`
/// has passed: a lost datagram or a route that is not there yet gets another try. Each server that fails
/// is named on the console once.
fn ask(servers: &[String], limit: Duration) -> Result<(String, sntp::Sample), String> {
    let end = Instant::now() + limit;
    let mut last = String::from("no server");
    for round in 0.. {
        let started = Instant::now();
        for s in servers {
            let addrs = match sntp::resolve(s) {
                Ok(a) => a,
                Err(e) => {
                    last = e.to_string();
                    if round == 0 {
                        log::warn(&format!("clock: {last}"));
                    }
                    continue;
                }
            };
            for a in addrs {
                let left = end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!("{last}; gave up after {}s", limit.as_secs()));
                }
                match sntp::query(a, left.min(Duration::from_secs(2))) {
                    Ok(sample) => return Ok((s.clone(), sample)),
                    Err(e) => {
                        last = e.to_string();
                        if round == 0 {
                            log::warn(&format!("clock: {last}"));
                        }
                    }
                }
            }
        }
        // A round that failed at once (no route, refused) waits a little before the next.
        let pause = Duration::from_millis(250).saturating_sub(started.elapsed());
        if Instant::now() + pause >= end {
            break;
        }
        std::thread::sleep(pause);
    }
    Err(format!("{last}; gave up after {}s", limit.as_secs()))
}

pub struct Sync {
    servers: Servers,
    /// true time − RTC time, learnt at the last good reading.
    rtc_offset: Option<f64>,
}

impl Sync {
    pub fn new(servers: Servers) -> Sync {
        Sync { servers, rtc_offset: None }
    }

    /// Ask SNTP and step the clock. Returns whether a server answered.
    fn sntp_step(&mut self, limit: Duration, why: &str) -> bool {
        let Servers::Use(list, _) = &self.servers else { return false };
        let r = ask(list, limit);
        let answered = self.apply(r, why);
        if answered {
            self.learn_rtc();
        }
        answered
    }

    fn apply(&mut self, r: Result<(String, sntp::Sample), String>, why: &str) -> bool {
        match r {
            Ok((server, s)) => {
                if s.offset.abs() >= 0.05 {
                    if step_by(s.offset) {
                        log::line(&format!(
                            "clock: SNTP {server} ({why}): offset {}, delay {:.3} s; stepped",
                            fmt_offset(s.offset),
                            s.delay
                        ));
                    } else {
                        log::warn(&format!("clock: SNTP {server}: offset {} but the clock could not be set", fmt_offset(s.offset)));
                    }
                } else if why == "boot" {
                    log::line(&format!("clock: SNTP {server} ({why}): offset {}; clock already right", fmt_offset(s.offset)));
                }
                true
            }
            Err(e) => {
                if why == "boot" {
                    log::warn(&format!("clock: no SNTP answer ({e}); keeping the RTC time for now, retrying in the background"));
                }
                false
            }
        }
    }

    fn learn_rtc(&mut self) {
        if let Some((rtc, sys)) = rtc_tick() {
            self.rtc_offset = Some(sys - rtc);
        }
    }

    /// At boot, in the clock's own thread: at most `limit` for SNTP; then the outcome goes to `done` (the
    /// boot waits on it only when the RTC was before the build) and into `CLOCK_CHECKED` (the engine
    /// manager waits on that before it makes certificates); then the RTC witness is learnt, which can
    /// take a second of waiting for its tick and holds up nobody.
    pub fn at_boot(&mut self, limit: Duration, done: std::sync::mpsc::Sender<String>) {
        let outcome = match &self.servers {
            Servers::Off(why) => {
                log::line(&format!("clock: SNTP off ({why}); following the RTC"));
                "SNTP off".to_string()
            }
            Servers::Use(list, from) => {
                log::line(&format!("clock: SNTP servers {} (from {from})", list.join(" ")));
                // Name lookups can hang far longer than the limit (no DNS yet): ask from a thread and stop waiting.
                let (tx, rx) = std::sync::mpsc::channel();
                let list = list.clone();
                std::thread::spawn(move || {
                    let _ = tx.send(ask(&list, limit));
                });
                let r = rx
                    .recv_timeout(limit + Duration::from_millis(500))
                    .unwrap_or_else(|_| Err(format!("nothing within {}s", limit.as_secs())));
                let outcome = match &r {
                    Ok((server, _)) => format!("SNTP {server} answered"),
                    Err(_) => "no SNTP answer; the RTC's time".to_string(),
                };
                self.apply(r, "boot");
                outcome
            }
        };
        mark_checked(&outcome);
        let _ = done.send(outcome);
        self.learn_rtc();
    }
}

/// Tell the engine manager the boot's clock check is over (`outcome` says how it went).
fn mark_checked(outcome: &str) {
    let done = std::fs::create_dir_all(paths::RUN_DIR).and_then(|_| std::fs::write(paths::CLOCK_CHECKED, format!("{outcome}\n")));
    if let Err(e) = done {
        log::warn(&format!("clock: cannot write {}: {e}; the engine waits its limit before making certificates", paths::CLOCK_CHECKED));
    }
}

impl Sync {
    /// Forever: every 5 s compare with the RTC; every 15 minutes (and after a jump) ask SNTP.
    pub fn run(mut self) -> ! {
        let mut last_sntp = Instant::now();
        loop {
            std::thread::sleep(Duration::from_secs(5));
            if let (Some(off), Some(rtc)) = (self.rtc_offset, rtc_seconds()) {
                // One-second RTC resolution: only a gap well past it counts as a jump.
                let gap = (rtc as f64 + off) - sntp::unix_now();
                if gap.abs() > 2.0 {
                    if let Some((rtc, sys)) = rtc_tick() {
                        let gap = (rtc + off) - sys;
                        if step_by(gap) {
                            log::line(&format!("clock: {} from the RTC (the host slept or the VM was paused); stepped", fmt_offset(gap)));
                        }
                    }
                    if self.sntp_step(Duration::from_secs(5), "after a jump") {
                        last_sntp = Instant::now();
                    }
                    continue;
                }
            } else if self.rtc_offset.is_none() {
                self.learn_rtc();
            }
            if last_sntp.elapsed() > Duration::from_secs(900) {
                self.sntp_step(Duration::from_secs(5), "periodic");
                last_sntp = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_order_and_explicit_off() {
        let dhcp = [Ipv4Addr::new(10, 0, 2, 4)];
        assert_eq!(pick(&dhcp, Some("a b"), Some("c")), Servers::Use(vec!["10.0.2.4".into()], "DHCP option 42"));
        assert_eq!(pick(&[], Some("a  b"), Some("c")), Servers::Use(vec!["a".into(), "b".into()], "the profile's NTP_SERVER"));
        assert_eq!(pick(&[], None, Some("c,d")), Servers::Use(vec!["c".into(), "d".into()], "ntpserver= on the kernel command line"));
        assert_eq!(pick(&[], None, None), Servers::Use(vec!["pool.ntp.org".into()], "the default"));
        assert!(matches!(pick(&dhcp, Some(""), None), Servers::Off(w) if w.contains("NTP_SERVER")));
        assert!(matches!(pick(&dhcp, None, Some(" ")), Servers::Off(w) if w.contains("ntpserver=")));
    }

    #[test]
    fn offsets_read_well() {
        assert_eq!(fmt_offset(3.2144), "+3.214 s");
        assert_eq!(fmt_offset(-120.0), "-120.000 s");
    }
}
