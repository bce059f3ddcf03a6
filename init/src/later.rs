//! Background work that waits for the engine. With one emulated CPU (QEMU's TCG) or an overcommitted
//! host, a lowest-priority thread alone on an otherwise idle vCPU still takes the host's time from
//! dockerd on the other: the root image's copy and the CPU modules' self-tests slowed the engine's
//! first start. They begin once the engine manager writes ENGINE_READY, or after ENGINE_WAIT.
use ferry_contract::paths::ENGINE_READY;
use std::path::Path;
use std::time::{Duration, Instant};

/// The engine may be stopped or failing: the work goes on without it after this.
pub const ENGINE_WAIT: Duration = Duration::from_secs(120);

/// How the wait ended, for the work's console line.
pub struct Waited {
    pub took: Duration,
    pub answered: bool,
}

impl std::fmt::Display for Waited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.took.as_secs_f64();
        if self.answered {
            write!(f, "begun {s:.1}s after the services, once the engine answered")
        } else {
            write!(f, "begun {s:.0}s after the services with no answer from the engine")
        }
    }
}

/// Wait for the engine's first /_ping answer (at most ENGINE_WAIT).
pub fn after_engine() -> Waited {
    let took = wait_for(Path::new(ENGINE_READY), ENGINE_WAIT);
    Waited { took, answered: Path::new(ENGINE_READY).exists() }
}

/// Wait until `marker` exists or `limit` has passed; returns the time waited.
pub fn wait_for(marker: &Path, limit: Duration) -> Duration {
    let t = Instant::now();
    while !marker.exists() && t.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(200));
    }
    t.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_marker_and_no_longer_than_the_limit() {
        let dir = std::env::temp_dir().join(format!("ferry-later-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("ready");
        let m = marker.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            std::fs::write(m, b"").unwrap();
        });
        let waited = wait_for(&marker, Duration::from_secs(30));
        writer.join().unwrap();
        assert!(waited >= Duration::from_millis(500) && waited < Duration::from_secs(10), "{waited:?}");
        assert!(wait_for(&marker, Duration::from_secs(30)) < Duration::from_millis(100), "present: no wait");
        std::fs::remove_file(&marker).unwrap();
        let waited = wait_for(&marker, Duration::from_millis(600));
        assert!(waited >= Duration::from_millis(600) && waited < Duration::from_secs(5), "absent: the limit, {waited:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_line_says_whether_the_engine_answered() {
        let took = Duration::from_millis(20_400);
        assert_eq!(Waited { took, answered: true }.to_string(), "begun 20.4s after the services, once the engine answered");
        assert_eq!(
            Waited { took: Duration::from_secs(120), answered: false }.to_string(),
            "begun 120s after the services with no answer from the engine"
        );
    }
}
