//! dockerd's configuration file, handed over cleaned. The engine manager owns every listener, so a
//! `hosts` entry in `/etc/docker/daemon.json` (or in a `--config-file` the profile names) is dropped with
//! a console note: kept, it would either open a TCP socket without TLS or, next to our `-H`, stop dockerd
//! from starting at all ("specified both as a flag and in the configuration file").
use crate::error::{Context, Result};
use std::path::Path;

pub const DEFAULT: &str = ferry_contract::paths::DAEMON_JSON;
/// The cleaned copy dockerd reads (RAM; rewritten before every start).
pub const CLEANED: &str = "/run/ferry/daemon.json";
/// Keys that make dockerd listen.
const OWNED_KEYS: &[&str] = &["hosts"];

/// What `prepare` made: console notes, and the top-level keys dockerd will read (its defaults yield to them).
#[derive(Debug, Default, PartialEq)]
pub struct Prepared {
    pub notes: Vec<String>,
    pub keys: Vec<String>,
}

/// The text dockerd gets, one note per key removed, and the keys it keeps. Text that is not a JSON object is
/// passed on unchanged: dockerd refuses it with its own message (shown by `/etc/init.d/docker start`), and a
/// config dockerd refuses opens no socket.
pub fn clean(text: &str, source: &str) -> (String, Prepared) {
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_str::<serde_json::Value>(text) else {
        return (text.to_string(), Prepared::default());
    };
    let mut notes = vec![];
    for k in OWNED_KEYS {
        if let Some(v) = map.remove(*k) {
            notes.push(format!("{source}: ignoring \"{k}\": {v} (the engine manager owns the listeners: unix socket and :2376 with TLS)"));
        }
    }
    let keys = map.keys().cloned().collect();
    let out = if notes.is_empty() { text.to_string() } else { serde_json::Value::Object(map).to_string() };
    (out, Prepared { notes, keys })
}

/// Write the cleaned copy of `source` (absent: an empty object) to `dest`.
pub fn prepare(source: &Path, dest: &Path) -> Result<Prepared> {
    let text = match std::fs::read_to_string(source) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "{}".to_string(),
        Err(e) => return Err(e).ctx(|| format!("read {}", source.display())),
    };
    let (out, prepared) = clean(&text, &source.display().to_string());
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
    }
    crate::certs::write_file(dest, &out, 0o600)?;
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_dropped_and_the_rest_kept() {
        let (out, Prepared { notes, keys }) =
            clean(r#"{"hosts": ["tcp://0.0.0.0:2375", "unix:///x.sock"], "debug": true, "labels": ["a=b"]}"#, "d.json");
        assert_eq!(keys, ["debug", "labels"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v.get("hosts").is_none());
        assert_eq!(v["debug"], true);
        assert_eq!(v["labels"][0], "a=b");
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("tcp://0.0.0.0:2375") && notes[0].starts_with("d.json"), "{}", notes[0]);
    }

    #[test]
    fn clean_or_broken_text_is_passed_unchanged() {
        for t in [r#"{"debug": true}"#, "{ not json", "[1]"] {
            let (out, p) = clean(t, "x");
            assert_eq!((out.as_str(), p.notes.len()), (t, 0));
        }
    }

    #[test]
    fn prepare_writes_an_object_when_there_is_no_file() {
        let dir = std::env::temp_dir().join(format!("ferry-dc-{}", std::process::id()));
        let dest = dir.join("out.json");
        assert_eq!(prepare(&dir.join("missing.json"), &dest).unwrap(), Prepared::default());
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "{}");
        std::fs::write(dir.join("in.json"), r#"{"hosts":["tcp://0.0.0.0:2375"],"storage-driver":"vfs"}"#).unwrap();
        let p = prepare(&dir.join("in.json"), &dest).unwrap();
        assert_eq!((p.notes.len(), p.keys), (1, vec!["storage-driver".to_string()]));
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), r#"{"storage-driver":"vfs"}"#);
        let _ = std::fs::remove_dir_all(dir);
    }
}
