//! `ferry ls`: one row per machine. State means the engine answers over mTLS, not merely that QEMU runs.
use crate::machine::Machine;
use crate::{ping, settings::Settings};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum State {
    /// QEMU runs and the engine answers `/version`.
    Running,
    /// QEMU runs but the engine does not answer (booting, or broken: see `ferry logs`).
    Unresponsive,
    Stopped,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Unresponsive => "no-engine",
            State::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    pub state: State,
    /// The accelerator of the running QEMU (recorded at boot), `-` when stopped.
    pub accel: String,
    pub cpus: u32,
    pub memory_mb: u32,
    /// The data disk's size; None for a machine without one.
    pub disk_bytes: Option<u64>,
    /// The engine's version, from its API.
    pub docker: Option<String>,
    pub url: String,
}

/// The `Version` field of a `/version` answer (the body is JSON; the head and any chunk sizes are skipped).
pub fn engine_version(response: &str) -> Option<String> {
    let body = &response[response.find("\r\n\r\n")? + 4..];
    let json = &body[body.find('{')?..=body.rfind('}')?];
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.get("Version")?.as_str().map(str::to_string)
}

pub fn row(m: &Machine) -> Row {
    let s = Settings::load(&m.path("settings.json")).unwrap_or_default();
    let ports = m.ports().ok();
    let running = m.pid().is_some();
    let docker = match (running, ports) {
        (true, Some(p)) => ping::client_config(&m.dir).ok().and_then(|cfg| {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], p.api));
            ping::get(addr, std::sync::Arc::new(cfg), "/version", Duration::from_secs(5)).ok().as_deref().and_then(engine_version)
        }),
        _ => None,
    };
    let state = match (running, &docker) {
        (false, _) => State::Stopped,
        (true, Some(_)) => State::Running,
        (true, None) => State::Unresponsive,
    };
    let accel =
        if running { std::fs::read_to_string(m.path("accel")).map(|a| a.trim().to_string()).unwrap_or("?".into()) } else { "-".into() };
    Row {
        name: m.name.clone(),
        state,
        accel,
        cpus: s.cpus,
        memory_mb: s.memory_mb,
        disk_bytes: std::fs::metadata(m.disk()).ok().map(|md| md.len()),
        docker,
        url: ports.map(|p| format!("tcp://127.0.0.1:{}", p.api)).unwrap_or_default(),
    }
}

fn human(bytes: u64) -> String {
    const G: u64 = 1 << 30;
    if bytes.is_multiple_of(G) {
        format!("{}G", bytes / G)
    } else {
        format!("{}M", bytes >> 20)
    }
}

pub fn table(rows: &[Row]) -> String {
    let mut out =
        format!("{:<16} {:<10} {:<6} {:<5} {:<7} {:<6} {:<9} {}\n", "NAME", "STATE", "ACCEL", "CPUS", "MEMORY", "DISK", "DOCKER", "URL");
    for r in rows {
        out.push_str(&format!(
            "{:<16} {:<10} {:<6} {:<5} {:<7} {:<6} {:<9} {}\n",
            r.name,
            r.state.name(),
            r.accel,
            r.cpus,
            human((r.memory_mb as u64) << 20),
            r.disk_bytes.map(human).unwrap_or("none".into()),
            r.docker.as_deref().unwrap_or("-"),
            r.url
        ));
    }
    out
}

/// One JSON object per line, as `docker ... --format json` prints.
pub fn json_line(r: &Row) -> String {
    serde_json::json!({
        "Name": r.name,
        "State": r.state.name(),
        "Accel": r.accel,
        "CPUs": r.cpus,
        "MemoryMiB": r.memory_mb,
        "DiskBytes": r.disk_bytes,
        "Docker": r.docker,
        "URL": r.url,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: State, docker: Option<&str>) -> Row {
        Row {
            name: "web".into(),
            state,
            accel: "tcg".into(),
            cpus: 2,
            memory_mb: 1536,
            disk_bytes: Some(20 << 30),
            docker: docker.map(str::to_string),
            url: "tcp://127.0.0.1:40000".into(),
        }
    }

    #[test]
    fn version_from_plain_and_chunked_answers() {
        let plain = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"Version\":\"26.1.5+dfsg1\",\"ApiVersion\":\"1.45\"}\n";
        assert_eq!(engine_version(plain).as_deref(), Some("26.1.5+dfsg1"));
        let chunked =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2a\r\n{\"Version\":\"26.1.5\",\"ApiVersion\":\"1.45\"}\r\n0\r\n\r\n";
        assert_eq!(engine_version(chunked).as_deref(), Some("26.1.5"));
        assert_eq!(engine_version("HTTP/1.1 400 Bad Request\r\n\r\nclient version too old"), None);
    }

    #[test]
    fn table_and_json() {
        let t = table(&[row(State::Running, Some("26.1.5")), row(State::Unresponsive, None)]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME") && lines[0].contains("DOCKER") && lines[0].ends_with("URL"));
        assert!(lines[1].contains("running") && lines[1].contains("1536M") && lines[1].contains("20G") && lines[1].contains("26.1.5"));
        assert!(lines[2].contains("no-engine") && lines[2].contains(" - "));
        let v: serde_json::Value = serde_json::from_str(&json_line(&row(State::Stopped, None))).unwrap();
        assert_eq!((v["Name"].as_str(), v["State"].as_str(), v["CPUs"].as_u64()), (Some("web"), Some("stopped"), Some(2)));
        assert!(v["Docker"].is_null());
    }
}
