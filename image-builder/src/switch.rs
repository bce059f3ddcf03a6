//! The switch behind a shared network (network.rs): one process per network (`ferry _switch NET`, started by
//! `ferry up`) that forwards Ethernet frames between the members' QEMUs. Each QEMU's NIC backend is a unix
//! datagram socket (`-netdev dgram`): one frame per datagram, to the switch's socket, from the member's own.
//!
//! Why a switch of our own: QEMU's other rootless backends either join exactly two VMs (`stream`, `dgram`
//! point to point) or use multicast (`socket,mcast=`), whose packets the host routes like any other and may
//! send out of a real interface. A learning switch on unix sockets reaches no address at all.
//!
//! Lifetime: the switch exits once no member has run for IDLE; `ferry up` starts it before QEMU and checks
//! again after, so a switch that exited in between is started again (the datagram backend keeps no
//! connection, so QEMU does not notice). The start check and the exit decision both hold the networks'
//! lock, so a member never runs without a switch.
use crate::error::{Context, Error, Result};
use crate::network::{self, Network};
use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A learned address is trusted this long without a frame from it (a moved machine is re-learned).
const AGE: Duration = Duration::from_secs(300);
/// At most this many learned addresses (a guest sending from random source addresses cannot grow us).
const TABLE_MAX: usize = 4096;
/// The switch exits after this long with no member running.
const IDLE: Duration = Duration::from_secs(10);
/// Frames from QEMU's datagram backend have no offload headers: an MTU-sized frame plus room to spare.
const FRAME_MAX: usize = 65536;

#[derive(Debug, PartialEq)]
pub enum Route {
    Drop,
    To(PathBuf),
    /// To every port but the one it came from (broadcast, multicast, or a destination not learned yet).
    Flood,
}

/// Source address -> the port (member socket) it was last seen on.
#[derive(Default)]
pub struct Table {
    entries: HashMap<[u8; 6], (PathBuf, Instant)>,
}

impl Table {
    /// Learn the frame's source and say where the frame goes.
    pub fn route(&mut self, frame: &[u8], from: &Path, now: Instant) -> Route {
        let (Some(dst), Some(src)) = (frame.get(0..6), frame.get(6..12)) else { return Route::Drop };
        if frame.len() < 14 {
            return Route::Drop;
        }
        let mut s = [0u8; 6];
        s.copy_from_slice(src);
        // Only unicast sources are learned (a multicast source is malformed).
        if s[0] & 1 == 0 {
            if self.entries.len() >= TABLE_MAX && !self.entries.contains_key(&s) {
                self.entries.retain(|_, (_, t)| now.duration_since(*t) < AGE);
                if self.entries.len() >= TABLE_MAX {
                    self.entries.clear();
                }
            }
            self.entries.insert(s, (from.to_path_buf(), now));
        }
        if dst[0] & 1 == 1 {
            return Route::Flood;
        }
        let mut d = [0u8; 6];
        d.copy_from_slice(dst);
        match self.entries.get(&d) {
            Some((p, t)) if now.duration_since(*t) < AGE => {
                if p == from {
                    Route::Drop
                } else {
                    Route::To(p.clone())
                }
            }
            _ => Route::Flood,
        }
    }
}

/// Wait up to `timeout` for `sock` to be readable.
fn readable(sock: &UnixDatagram, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd on a descriptor `sock` owns, for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
    n > 0 && p.revents & libc::POLLIN != 0
}

/// Forward frames arriving on `sock` (non-blocking) until `tick` returns None. `tick` runs about once a
/// second and returns the current ports (member sockets). A frame that a port cannot take at once is
/// dropped, as a switch does with a full queue: one stalled VM never stalls the others.
pub fn serve(sock: &UnixDatagram, mut tick: impl FnMut() -> Option<Vec<PathBuf>>) -> Result<()> {
    sock.set_nonblocking(true).ctx(|| "switch socket: non-blocking".into())?;
    let mut table = Table::default();
    let mut buf = vec![0u8; FRAME_MAX];
    let Some(mut ports) = tick() else { return Ok(()) };
    let mut last = Instant::now();
    loop {
        if last.elapsed() >= Duration::from_secs(1) {
            match tick() {
                Some(p) => ports = p,
                None => return Ok(()),
            }
            last = Instant::now();
        }
        if !readable(sock, Duration::from_millis(500)) {
            continue;
        }
        // Drain what is queued, then look at the clock again.
        for _ in 0..256 {
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).ctx(|| "switch: receive".into()),
            };
            // QEMU binds its end, so every sender has a path; an unbound sender cannot be answered.
            let Some(from) = from.as_pathname() else { continue };
            let frame = &buf[..n];
            match table.route(frame, from, Instant::now()) {
                Route::Drop => {}
                Route::To(p) => {
                    let _ = sock.send_to(frame, &p);
                }
                Route::Flood => {
                    for p in ports.iter().filter(|p| p.as_path() != from) {
                        let _ = sock.send_to(frame, p);
                    }
                }
            }
        }
    }
}

fn pidfile(n: &Network) -> PathBuf {
    n.dir().join("switch.pid")
}

/// The running switch of `n`: its pid, when the pid file names a live `ferry _switch NET`.
fn running(n: &Network) -> Option<i32> {
    crate::util::live_pid(&pidfile(n), |args| args.contains(&b"_switch".as_slice()) && args.contains(&n.name.as_bytes()))
}

/// Start `n`'s switch unless it runs, and wait until its socket exists. The caller holds network::lock.
pub fn ensure(n: &Network, wait: Duration) -> Result<()> {
    if running(n).is_some() && n.switch_socket().exists() {
        return Ok(());
    }
    let dir = n.dir();
    std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
    let sock = n.switch_socket();
    // A unix socket path holds at most 107 bytes; say so instead of QEMU's or bind's terse error.
    for p in std::iter::once(sock.clone()).chain(n.members.keys().map(|m| n.member_socket(m))) {
        if p.as_os_str().len() > 107 {
            return Err(Error::msg(format!(
                "network {}: {} is too long for a unix socket (107 bytes); set FERRY_HOME to a shorter directory",
                n.name,
                p.display()
            )));
        }
    }
    let _ = std::fs::remove_file(&sock);
    let logf = dir.join("switch.log");
    let mut child = crate::machine::spawn_agent(&["_switch", &n.name], &logf)?;
    std::fs::write(pidfile(n), format!("{}\n", child.id())).ctx(|| format!("write {}", pidfile(n).display()))?;
    let end = Instant::now() + wait;
    while Instant::now() < end {
        if sock.exists() {
            // Reaped by nobody else: the switch outlives us (setsid); the kernel re-parents it when we exit.
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(Error::msg(format!("the switch of network {} exited ({st}); see {}", n.name, logf.display())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(Error::msg(format!("the switch of network {} made no socket within {}s; see {}", n.name, wait.as_secs(), logf.display())))
}

/// End `n`'s switch, if it runs (`ferry network rm`).
pub fn stop(n: &Network) {
    if let Some(pid) = running(n) {
        // SAFETY: signalling the switch process whose pid file and command line name this network.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

/// `ferry _switch NET`: bind the socket and forward until no member has run for IDLE.
pub fn run(name: &str) -> Result<()> {
    network::check_name(name)?;
    let Some(n) = Network::load(name)? else { return Err(Error::msg(format!("no network named {name}"))) };
    let sock_path = n.switch_socket();
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).ctx(|| format!("bind {}", sock_path.display()))?;
    eprintln!("switch {name}: forwarding on {}", sock_path.display());
    let mut idle_since: Option<Instant> = None;
    let result = serve(&sock, || {
        let n = Network::load(name).ok().flatten()?;
        if !n.running().is_empty() {
            idle_since = None;
        } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= IDLE {
            // Decide under the lock, so a `ferry up` either sees this switch gone or sees it stay.
            let _l = network::lock().ok()?;
            let n = Network::load(name).ok().flatten()?;
            if n.running().is_empty() {
                let _ = std::fs::remove_file(&sock_path);
                let _ = std::fs::remove_file(pidfile(&n));
                eprintln!("switch {name}: no machine runs on the network; exiting");
                std::process::exit(0);
            }
            idle_since = None;
        }
        Some(n.members.keys().map(|m| n.member_socket(m)).collect())
    });
    let _ = std::fs::remove_file(&sock_path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend(src);
        f.extend([0x08, 0x00]);
        f.extend([0u8; 46]);
        f
    }
    const A: [u8; 6] = [0x52, 0x54, 0, 0xfe, 100, 2];
    const B: [u8; 6] = [0x52, 0x54, 0, 0xfe, 100, 3];
    const BCAST: [u8; 6] = [0xff; 6];

    #[test]
    fn learns_floods_and_forwards() {
        let (pa, pb) = (Path::new("/n/m-a.sock"), Path::new("/n/m-b.sock"));
        let mut t = Table::default();
        let now = Instant::now();
        // ARP request from a: broadcast; the reply from b goes straight back to a, learned from the request.
        assert_eq!(t.route(&frame(BCAST, A), pa, now), Route::Flood);
        assert_eq!(t.route(&frame(A, B), pb, now), Route::To(pa.into()));
        assert_eq!(t.route(&frame(B, A), pa, now), Route::To(pb.into()));
        // An unknown destination floods; a frame for the port it came from goes nowhere.
        assert_eq!(t.route(&frame([0x52, 0x54, 0, 1, 2, 3], A), pa, now), Route::Flood);
        assert_eq!(t.route(&frame(A, B), pa, now), Route::Drop);
        // Multicast floods (IPv6 neighbour discovery, VXLAN's peers use unicast).
        assert_eq!(t.route(&frame([0x33, 0x33, 0, 0, 0, 1], B), pb, now), Route::Flood);
        // Short frames are dropped, and a forgotten address floods again.
        assert_eq!(t.route(&[0u8; 13], pa, now), Route::Drop);
        assert_eq!(t.route(&frame(B, A), pa, now + AGE + Duration::from_secs(1)), Route::Flood);
        // A machine that moved to another port is re-learned.
        assert_eq!(t.route(&frame(BCAST, A), pb, now), Route::Flood);
        assert_eq!(t.route(&frame(A, B), pa, now), Route::To(pb.into()));
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut t = Table::default();
        let now = Instant::now();
        for i in 0..(TABLE_MAX as u32 + 10) {
            let b = i.to_be_bytes();
            t.route(&frame(BCAST, [0x02, 0, b[0], b[1], b[2], b[3]]), Path::new("/p"), now);
        }
        assert!(t.entries.len() <= TABLE_MAX);
    }

    #[test]
    fn frames_cross_real_sockets() {
        let dir = std::env::temp_dir().join(format!("ferry-switch-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (sw, pa, pb, pc) = (dir.join("switch.sock"), dir.join("a.sock"), dir.join("b.sock"), dir.join("c.sock"));
        let sock = UnixDatagram::bind(&sw).unwrap();
        let ports = vec![pa.clone(), pb.clone(), pc.clone()];
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let t = std::thread::spawn(move || serve(&sock, || (!s2.load(std::sync::atomic::Ordering::SeqCst)).then(|| ports.clone())));
        let a = UnixDatagram::bind(&pa).unwrap();
        let b = UnixDatagram::bind(&pb).unwrap();
        let c = UnixDatagram::bind(&pc).unwrap();
        for s in [&a, &b, &c] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let mut buf = [0u8; 2048];
        // A broadcast from a reaches b and c, not a.
        a.send_to(&frame(BCAST, A), &sw).unwrap();
        assert_eq!(b.recv(&mut buf).unwrap(), 60);
        assert_eq!(c.recv(&mut buf).unwrap(), 60);
        // b answers a by unicast: only a gets it.
        b.send_to(&frame(A, B), &sw).unwrap();
        assert_eq!(a.recv(&mut buf).unwrap(), 60);
        assert_eq!(&buf[6..12], &B);
        c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        assert!(c.recv(&mut buf).is_err(), "c saw a unicast frame for a");
        // A port that went away (its machine stopped) does not stop the others.
        drop(c);
        let _ = std::fs::remove_file(&pc);
        a.send_to(&frame(BCAST, A), &sw).unwrap();
        assert_eq!(b.recv(&mut buf).unwrap(), 60);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        t.join().unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
