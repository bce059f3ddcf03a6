//! Kernel command line: `ferry.*` options. Unknown or absurd values are reported, never fatal.

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Cmdline {
    pub hostname: Option<String>,
    pub disk: Option<String>,
    pub autologin: bool,
    /// Bench mode: power off as soon as PID 1 starts (measures the kernel alone).
    pub bench_poweroff: bool,
    pub rescue: bool,
    /// Test hook: stop first boot at this point of the disk setup (see disk::PAUSE_POINTS).
    pub pause: Option<String>,
    /// boot2docker's `ntpserver=` (comma or space separated; empty turns SNTP off). None when absent.
    pub ntpserver: Option<String>,
    /// `ferry.bootsync_limit=SECONDS`: how long the boot waits for bootsync.sh (see hooks.rs).
    pub bootsync_limit: Option<std::time::Duration>,
    /// The kernel's `ip=` entries, in order (see ipconfig.rs).
    pub ip: Vec<crate::ipconfig::IpArg>,
    /// Problems found while parsing, printed by init on the console.
    pub warnings: Vec<String>,
}

pub use ferry_contract::names::valid_hostname;

impl Cmdline {
    pub fn parse(text: &str) -> Cmdline {
        let mut c = Cmdline { autologin: true, ..Default::default() };
        for word in text.split_whitespace() {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            match (key, value) {
                ("ferry.hostname", Some(v)) => {
                    if valid_hostname(v) {
                        c.hostname = Some(v.to_ascii_lowercase());
                    } else {
                        c.warnings.push(format!("ignoring ferry.hostname={v:?}: use 1-63 letters, digits or '-'"));
                    }
                }
                ("ferry.disk", Some(v)) => {
                    if v.starts_with("/dev/") && v.len() < 64 && !v.contains("..") {
                        c.disk = Some(v.to_string());
                    } else {
                        c.warnings.push(format!("ignoring ferry.disk={v:?}: expected /dev/NAME"));
                    }
                }
                ("ferry.autologin", Some(v)) => match v {
                    "0" | "no" | "off" => c.autologin = false,
                    "1" | "yes" | "on" => c.autologin = true,
                    _ => c.warnings.push(format!("ignoring ferry.autologin={v:?}: use 0 or 1")),
                },
                ("ip", Some(v)) => match crate::ipconfig::parse(v) {
                    Ok(a) => c.ip.push(a),
                    Err(e) => c.warnings.push(e),
                },
                ("ferry.bootsync_limit", Some(v)) => match v.parse::<u64>() {
                    Ok(n) if (1..=3600).contains(&n) => c.bootsync_limit = Some(std::time::Duration::from_secs(n)),
                    _ => c.warnings.push(format!("ignoring ferry.bootsync_limit={v:?}: use seconds from 1 to 3600")),
                },
                ("ntpserver", Some(v)) => c.ntpserver = Some(v.replace(',', " ")),
                ("ferry.bench", Some("poweroff")) => c.bench_poweroff = true,
                ("ferry.rescue", None) => c.rescue = true,
                ("ferry.debug.pause", Some(v)) => {
                    if crate::disk::PAUSE_POINTS.contains(&v) {
                        c.pause = Some(v.to_string());
                    } else {
                        c.warnings.push(format!("ignoring ferry.debug.pause={v:?}: use one of {:?}", crate::disk::PAUSE_POINTS));
                    }
                }
                (k, _) if k.starts_with("ferry.") => c.warnings.push(format!("unknown kernel option {word:?}")),
                _ => {}
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_options_and_rejects_absurd_values() {
        let c = Cmdline::parse("console=ttyS0 ferry.hostname=Box1 ferry.disk=/dev/vdb ferry.autologin=0");
        assert_eq!(c.hostname.as_deref(), Some("box1"));
        assert_eq!(c.disk.as_deref(), Some("/dev/vdb"));
        assert!(!c.autologin);
        assert!(c.warnings.is_empty());
        assert_eq!(c.ntpserver, None);
        assert_eq!(Cmdline::parse("ntpserver=10.0.2.2,pool.ntp.org").ntpserver.as_deref(), Some("10.0.2.2 pool.ntp.org"));
        assert_eq!(Cmdline::parse("ntpserver=").ntpserver.as_deref(), Some(""));
        assert_eq!(Cmdline::parse("ferry.bootsync_limit=15").bootsync_limit, Some(std::time::Duration::from_secs(15)));
        assert_eq!(Cmdline::parse("ferry.bootsync_limit=0").warnings.len(), 1);

        let long = "x".repeat(300);
        let c = Cmdline::parse(&format!("ferry.hostname={long} ferry.disk=../etc ferry.bogus=1"));
        assert_eq!(c.hostname, None);
        assert_eq!(c.disk, None);
        assert_eq!(c.warnings.len(), 3);
        assert!(c.autologin);
    }
}
