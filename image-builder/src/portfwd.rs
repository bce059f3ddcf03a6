//! Published ports on the host's loopback, as Docker Desktop, colima and lima give them.
//!
//! One agent process per running machine (`ferry up` starts it; it ends with the machine's QEMU). It
//! follows the engine's container events over the same mTLS API the user has, and after each event (and
//! every 30 s) compares the published ports of the running containers with the forwards it holds. It adds
//! and removes QEMU user-network forwards at run time through QMP (`hostfwd_add`/`hostfwd_remove`), always
//! on 127.0.0.1 and at the same port number. A host port already taken is logged once and retried while
//! the container runs. What it holds is written to `forwards` (the QEMU pid, then `tcp 8080` lines), so a
//! restarted agent takes over the same QEMU's forwards, and `ports.log` says what it did.
use crate::error::{Context, Error, Result};
use crate::machine::Machine;
use crate::{ping, qemu};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port {
    pub proto: Proto,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.proto.name())
    }
}

/// The host ports the running containers publish (`GET /containers/json`), whatever guest address
/// they are bound to. An unparsable answer is an error, not "no ports".
pub fn published(json: &str) -> Result<BTreeSet<Port>> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| Error::msg(format!("containers list: {e}")))?;
    let list = v.as_array().ok_or_else(|| Error::msg("containers list: not a JSON array"))?;
    let mut out = BTreeSet::new();
    for c in list {
        for p in c.get("Ports").and_then(|p| p.as_array()).into_iter().flatten() {
            let Some(public) = p.get("PublicPort").and_then(|x| x.as_u64()).and_then(|x| u16::try_from(x).ok()).filter(|x| *x > 0) else {
                continue;
            };
            let proto = match p.get("Type").and_then(|t| t.as_str()) {
                Some("tcp") => Proto::Tcp,
                Some("udp") => Proto::Udp,
                _ => continue, // sctp: QEMU's user network cannot forward it
            };
            out.insert(Port { proto, port: public });
        }
    }
    Ok(out)
}

/// The HMP lines that take `held` to `want`: removals first, so a port that changes hands is free again.
pub fn plan(held: &BTreeSet<Port>, want: &BTreeSet<Port>) -> (Vec<Port>, Vec<Port>) {
    (held.difference(want).copied().collect(), want.difference(held).copied().collect())
}

pub fn hostfwd_add(p: Port) -> String {
    format!("hostfwd_add {} {}:127.0.0.1:{}-:{}", qemu::NETDEV, p.proto.name(), p.port, p.port)
}

pub fn hostfwd_remove(p: Port) -> String {
    format!("hostfwd_remove {} {}:127.0.0.1:{}", qemu::NETDEV, p.proto.name(), p.port)
}

fn parse_state(text: &str, qemu_pid: i32) -> BTreeSet<Port> {
    let mut l = text.lines();
    if l.next().and_then(|p| p.trim().parse::<i32>().ok()) != Some(qemu_pid) {
        return BTreeSet::new();
    }
    l.filter_map(|line| {
        let (proto, port) = line.split_once(' ')?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return None,
        };
        Some(Port { proto, port: port.trim().parse().ok()? })
    })
    .collect()
}

fn state_text(qemu_pid: i32, held: &BTreeSet<Port>) -> String {
    let mut s = format!("{qemu_pid}\n");
    for p in held {
        s.push_str(&format!("{} {}\n", p.proto.name(), p.port));
    }
    s
}

/// One HTTP/1.0 request over mTLS (HTTP/1.0 so the answer is never chunked); returns the body.
fn api_get(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, path: &str) -> Result<String> {
    let raw = ping::request(addr, cfg, &format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n"), Duration::from_secs(20))?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(|| Error::msg(format!("GET {path}: no HTTP header")))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(Error::msg(format!("GET {path}: {}", head.lines().next().unwrap_or(""))));
    }
    Ok(body.to_string())
}

struct Agent {
    m: Machine,
    qemu_pid: i32,
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    held: BTreeSet<Port>,
    /// Ports whose host side was taken, already logged.
    blocked: BTreeSet<Port>,
}

fn log(msg: &str) {
    // stderr is ports.log (set up by `spawn`).
    let now = time::OffsetDateTime::now_utc();
    eprintln!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z {msg}",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
}

impl Agent {
    fn sync(&mut self) -> Result<()> {
        let want = published(&api_get(self.addr, self.cfg.clone(), "/containers/json")?)?;
        let (remove, add) = plan(&self.held, &want);
        let sock = self.m.path("qmp.sock");
        for p in remove {
            match qemu::hmp(&sock, &hostfwd_remove(p)) {
                // QEMU 7.2 says "host forwarding rule for ... removed"; later ones may say nothing.
                Ok(out) if out.trim().is_empty() || out.contains("removed") => {
                    log(&format!("port {p}: container gone; 127.0.0.1:{} closed", p.port))
                }
                Ok(out) => log(&format!("port {p}: remove: {}", out.trim())),
                Err(e) => return Err(e),
            }
            self.held.remove(&p);
        }
        for p in add {
            let out = qemu::hmp(&sock, &hostfwd_add(p))?;
            if out.trim().is_empty() {
                log(&format!("port {p}: forwarded from 127.0.0.1:{}", p.port));
                self.held.insert(p);
                self.blocked.remove(&p);
            } else if self.blocked.insert(p) {
                log(&format!("port {p}: 127.0.0.1:{} is taken on the host ({}); not forwarded while it stays taken", p.port, out.trim()));
            }
        }
        self.blocked.retain(|p| want.contains(p));
        let _ = std::fs::write(self.m.path("forwards"), state_text(self.qemu_pid, &self.held));
        Ok(())
    }

    fn alive(&self) -> bool {
        self.m.pid() == Some(self.qemu_pid)
    }

    /// Follow `/events` until the stream ends or errs; sync after every event and every 30 s.
    fn follow(&mut self) -> Result<()> {
        let filters = "%7B%22type%22%3A%5B%22container%22%5D%7D"; // {"type":["container"]}
        let mut s = ping::connect(self.addr, self.cfg.clone(), Duration::from_secs(20))?;
        s.write_all(format!("GET /events?filters={filters} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .ctx(|| "send GET /events".into())?;
        s.sock.set_read_timeout(Some(Duration::from_secs(5))).ctx(|| "events timeout".into())?;
        self.sync()?;
        let mut last = Instant::now();
        let mut buf = [0u8; 16384];
        while self.alive() {
            match s.read(&mut buf) {
                Ok(0) => return Err(Error::msg("the events stream ended")),
                Ok(_) => {
                    // Events come in bursts (create, attach, start): let the burst pass, then look once.
                    std::thread::sleep(Duration::from_millis(300));
                    self.sync()?;
                    last = Instant::now();
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    if last.elapsed() > Duration::from_secs(30) {
                        self.sync()?;
                        last = Instant::now();
                    }
                }
                Err(e) => return Err(Error::msg(format!("events stream: {e}"))),
            }
        }
        Ok(())
    }
}

/// The agent's main loop (`ferry _ports NAME`): runs until the machine's QEMU is gone.
pub fn run(m: Machine) -> Result<()> {
    let qemu_pid = m.pid().ok_or_else(|| Error::msg(format!("machine {} is not running", m.name)))?;
    let p = m.ports()?;
    let cfg = Arc::new(ping::client_config(&m.dir)?);
    let held = parse_state(&std::fs::read_to_string(m.path("forwards")).unwrap_or_default(), qemu_pid);
    let mut a = Agent { addr: SocketAddr::from(([127, 0, 0, 1], p.api)), cfg, held, blocked: BTreeSet::new(), m, qemu_pid };
    log(&format!("following machine {} (QEMU pid {qemu_pid}); holding {} forward(s)", a.m.name, a.held.len()));
    let mut told = false;
    while a.alive() {
        match a.follow() {
            Ok(()) => break,
            Err(e) => {
                // The engine restarts, the guest reboots: say it once, retry quietly.
                if !told {
                    log(&format!("engine not reachable ({e}); retrying every 2 s"));
                    told = true;
                }
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
        }
    }
    log("machine stopped; exiting");
    let _ = std::fs::remove_file(a.m.path("forwards"));
    Ok(())
}

/// Start the agent for a running machine unless one already follows this QEMU. Its pid and the QEMU pid
/// it follows are in `ports.pid`; its log is `ports.log`.
pub fn ensure(m: &Machine) -> Result<()> {
    let Some(qemu_pid) = m.pid() else { return Ok(()) };
    let pidfile = m.path("ports.pid");
    if let Some((agent, followed)) = std::fs::read_to_string(&pidfile).ok().and_then(|t| {
        let v: Vec<i32> = t.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        (v.len() == 2).then(|| (v[0], v[1]))
    }) {
        if followed == qemu_pid && is_agent(agent) {
            return Ok(());
        }
    }
    let child = crate::machine::spawn_agent(&["_ports", &m.name], &m.path("ports.log"))?;
    std::fs::write(&pidfile, format!("{} {qemu_pid}\n", child.id())).ctx(|| format!("write {}", pidfile.display()))
}

fn is_agent(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| c.split(|b| *b == 0).any(|a| a == b"_ports")).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(proto: Proto, port: u16) -> Port {
        Port { proto, port }
    }

    #[test]
    fn published_ports_from_the_containers_list() {
        let json = r#"[{"Id":"a","Ports":[{"IP":"0.0.0.0","PrivatePort":80,"PublicPort":18080,"Type":"tcp"},{"IP":"::","PrivatePort":80,"PublicPort":18080,"Type":"tcp"},{"PrivatePort":443,"Type":"tcp"}]},
                       {"Id":"b","Ports":[{"IP":"127.0.0.1","PrivatePort":53,"PublicPort":5353,"Type":"udp"},{"PrivatePort":9,"PublicPort":9,"Type":"sctp"}]},{"Id":"c"}]"#;
        let got: Vec<Port> = published(json).unwrap().into_iter().collect();
        assert_eq!(got, vec![port(Proto::Tcp, 18080), port(Proto::Udp, 5353)]);
        assert!(published("{\"message\":\"x\"}").is_err());
        assert!(published("not json").is_err());
    }

    #[test]
    fn plan_and_commands() {
        let held: BTreeSet<Port> = [port(Proto::Tcp, 80), port(Proto::Udp, 53)].into();
        let want: BTreeSet<Port> = [port(Proto::Tcp, 80), port(Proto::Tcp, 8080)].into();
        assert_eq!(plan(&held, &want), (vec![port(Proto::Udp, 53)], vec![port(Proto::Tcp, 8080)]));
        assert_eq!(hostfwd_add(port(Proto::Tcp, 8080)), "hostfwd_add net0 tcp:127.0.0.1:8080-:8080");
        assert_eq!(hostfwd_remove(port(Proto::Udp, 53)), "hostfwd_remove net0 udp:127.0.0.1:53");
    }

    #[test]
    fn state_belongs_to_one_qemu() {
        let held: BTreeSet<Port> = [port(Proto::Tcp, 80), port(Proto::Udp, 53)].into();
        let t = state_text(42, &held);
        assert_eq!(parse_state(&t, 42), held);
        assert!(parse_state(&t, 43).is_empty(), "another QEMU holds none of these");
        assert!(parse_state("garbage", 42).is_empty());
    }
}
