//! Work that waits for the engine's first answer. With one emulated CPU (QEMU's TCG) or an
//! overcommitted host, a lowest-priority thread alone on an otherwise idle vCPU still takes the host's
//! time from dockerd on the other: the root image's copy and the CPU modules' self-tests slowed the
//! engine's first start. They, and boot2docker's `bootlocal.sh`, begin once dockerd answers `/_ping` on
//! its socket (which Ferry owns: daemon.json cannot move it), or when their limit has passed.
use std::time::{Duration, Instant};

/// The engine may be stopped or failing: background work goes on without it after this.
pub const ENGINE_WAIT: Duration = Duration::from_secs(120);
/// How often the socket is asked while dockerd starts.
const POLL: Duration = Duration::from_millis(250);

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

/// Wait for dockerd's socket to answer `/_ping` (the docker socket, at most ENGINE_WAIT).
pub fn after_engine() -> Waited {
    wait_for_engine(ferry_contract::paths::DOCKER_SOCK, ENGINE_WAIT)
}

/// Wait until `socket` answers `/_ping` or `limit` has passed.
pub fn wait_for_engine(socket: &str, limit: Duration) -> Waited {
    let t = Instant::now();
    loop {
        if engine_answers(socket) {
            return Waited { took: t.elapsed(), answered: true };
        }
        if t.elapsed() >= limit {
            return Waited { took: t.elapsed(), answered: false };
        }
        std::thread::sleep(POLL);
    }
}

/// Does dockerd answer `GET /_ping` on its socket?
fn engine_answers(socket: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(3)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && (head.starts_with(b"HTTP/1.0 200") || head.starts_with(b"HTTP/1.1 200"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn socket_path(name: &str) -> String {
        let p = std::env::temp_dir().join(format!("ferry-later-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p.to_string_lossy().into_owned()
    }

    /// A dockerd stand-in that starts listening after `delay` and answers every request with `status`.
    fn engine(path: &str, delay: Duration, status: &'static str) {
        let path = path.to_string();
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                let mut req = [0u8; 256];
                let _ = c.read(&mut req);
                let _ = c.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nOK").as_bytes());
            }
        });
    }

    #[test]
    fn waits_for_the_first_answer() {
        let path = socket_path("late");
        engine(&path, Duration::from_millis(600), "200 OK");
        let w = wait_for_engine(&path, Duration::from_secs(30));
        assert!(w.answered);
        assert!(w.took >= Duration::from_millis(600) && w.took < Duration::from_secs(10), "{:?}", w.took);
        let again = wait_for_engine(&path, Duration::from_secs(30));
        assert!(again.answered && again.took < Duration::from_millis(200), "answering already: no wait, {:?}", again.took);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn no_longer_than_the_limit_without_an_answer() {
        let w = wait_for_engine("/nonexistent/docker.sock", Duration::from_millis(600));
        assert!(!w.answered);
        assert!(w.took >= Duration::from_millis(600) && w.took < Duration::from_secs(5), "{:?}", w.took);
        // A socket that answers, but not 200 (dockerd's API not up yet), is no answer either.
        let path = socket_path("busy");
        engine(&path, Duration::ZERO, "503 Service Unavailable");
        let w = wait_for_engine(&path, Duration::from_millis(600));
        assert!(!w.answered, "a 503 is not the engine's answer");
        let _ = std::fs::remove_file(&path);
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
