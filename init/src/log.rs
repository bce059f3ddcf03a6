//! Console log: one line per boot phase with its duration, mirrored to tty0 when the console is serial.
use std::io::Write;
use std::time::Instant;

/// Write one line to the console (stderr of PID 1 is /dev/console) and to tty0 if it is a secondary console.
pub fn line(msg: &str) {
    let text = format!("ferry: {msg}\n");
    let _ = std::io::stderr().write_all(text.as_bytes());
    if mirror_to_tty0() {
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/tty0") {
            let _ = f.write_all(text.replace('\n', "\r\n").as_bytes());
        }
    }
}

/// The kernel sends /dev/console to the last `console=`; tty0 needs its own copy when it is listed but not last.
fn mirror_to_tty0() -> bool {
    static ACTIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
        let words: Vec<&str> = active.split_whitespace().collect();
        words.len() > 1 && words.contains(&"tty0") && words.last() != Some(&"tty0")
    })
}

pub struct Phase {
    name: &'static str,
    start: Instant,
}

impl Phase {
    pub fn start(name: &'static str) -> Phase {
        Phase { name, start: Instant::now() }
    }
    pub fn done(self) {
        line(&format!("[{}] done in {:.2}s", self.name, self.start.elapsed().as_secs_f64()));
    }
    pub fn failed(self, why: &dyn std::fmt::Display) {
        line(&format!("[{}] FAILED after {:.2}s: {why}", self.name, self.start.elapsed().as_secs_f64()));
    }
}

/// Run a phase, log its duration, and turn its error into a logged one (the caller decides if it is fatal).
pub fn phase<T>(name: &'static str, f: impl FnOnce() -> crate::error::Result<T>) -> crate::error::Result<T> {
    let p = Phase::start(name);
    match f() {
        Ok(v) => {
            p.done();
            Ok(v)
        }
        Err(e) => {
            p.failed(&e);
            Err(e)
        }
    }
}

pub fn warn(msg: &str) {
    line(&format!("warning: {msg}"));
}
