//! The multi-call side of the binary: poweroff, reboot, halt, modprobe, sethostname.
use crate::error::{Error, Result};
use crate::{cmdline, kmod, sys};
use ferry_contract::paths;

/// Signals PID 1 understands (busybox-compatible for USR1/USR2; SIGTERM is power-off for an appliance).
pub const SIG_POWEROFF: libc::c_int = libc::SIGUSR2;
pub const SIG_REBOOT: libc::c_int = libc::SIGINT;
pub const SIG_HALT: libc::c_int = libc::SIGUSR1;

pub fn applet_name(argv0: &str) -> &str {
    argv0.rsplit('/').next().unwrap_or(argv0)
}

/// Run an applet by name; None when the name is not an applet (so the caller runs init).
pub fn run(name: &str, args: &[String]) -> Option<i32> {
    let r = match name {
        "poweroff" => power(SIG_POWEROFF, sys::RebootCommand::PowerOff, args),
        "reboot" => power(SIG_REBOOT, sys::RebootCommand::Restart, args),
        "halt" => power(SIG_HALT, sys::RebootCommand::Halt, args),
        "modprobe" => modprobe(args),
        "sethostname" => sethostname(args),
        _ => return None,
    };
    Some(match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{name}: {e}");
            1
        }
    })
}

fn power(sig: libc::c_int, cmd: sys::RebootCommand, args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "-f" || a == "--force") {
        return sys::reboot(cmd).map_err(|e| Error::msg(format!("{e} (are you root?)")));
    }
    sys::signal(1, sig).map_err(|e| Error::msg(format!("{e} (are you root? try sudo)")))
}

/// `modprobe [-q] [-v] [-a] [-b] [-n] [--] NAME [PARAMS...]`: as the kernel and dockerd call it.
fn modprobe(args: &[String]) -> Result<()> {
    let mut quiet = false;
    let mut all = false;
    let mut dry = false;
    let mut names = Vec::new();
    let mut opts_done = false;
    for a in args {
        if !opts_done && a.starts_with('-') {
            match a.as_str() {
                "--" => opts_done = true,
                s if s.starts_with("--") => {}
                s => {
                    quiet |= s.contains('q');
                    all |= s.contains('a');
                    dry |= s.contains('n');
                }
            }
        } else {
            names.push(a.clone());
        }
    }
    if names.is_empty() {
        return Err(Error::msg("usage: modprobe [-qva] NAME [PARAM=VALUE...]"));
    }
    let (targets, params) = if all { (names, String::new()) } else { (vec![names[0].clone()], names[1..].join(" ")) };
    let db = kmod::ModDb::running()?;
    let mut failed = None;
    for t in &targets {
        let found = db.lookup(t);
        if found.is_empty() {
            failed = Some(Error::msg(format!("module {t} not found")));
            continue;
        }
        for m in found {
            if dry {
                continue;
            }
            if let Err(e) = db.insert(&m, &params) {
                failed = Some(e);
            }
        }
    }
    match failed {
        Some(e) if !quiet => Err(e),
        Some(_) => Err(Error::msg("")),
        None => Ok(()),
    }
}

/// `sethostname NAME`: set it now and persist it where boot reads it (docker-machine calls this with sudo).
fn sethostname(args: &[String]) -> Result<()> {
    let name = args.first().ok_or_else(|| Error::msg("usage: sethostname NAME"))?;
    if !cmdline::valid_hostname(name) {
        return Err(Error::msg(format!("invalid hostname {name:?}: use 1-63 letters, digits or '-'")));
    }
    let name = name.to_ascii_lowercase();
    sys::set_hostname(&name)?;
    crate::net::write_hosts(&name)?;
    sys::mkdir_p(paths::PERSISTENT_ETC, 0o755)?;
    sys::write_atomic(paths::PERSISTED_HOSTNAME, format!("{name}\n").as_bytes(), 0o644)
}
