//! A machine's hardware settings (`settings.json` in its directory): CPUs and memory for the next boot.
//! `ferry up --cpus/--memory` changes them; a machine made before they existed gets the defaults.
use crate::error::{Context, Error, Result};
use std::path::Path;

pub const DEFAULT_CPUS: u32 = 2;
pub const DEFAULT_MEMORY_MB: u32 = 2048;
/// Below this the engine and a container or two do not fit.
pub const MIN_MEMORY_MB: u32 = 512;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub cpus: u32,
    pub memory_mb: u32,
}

impl Default for Settings {
    /// `FERRY_MEMORY` (MiB) still sets the default memory, as before settings existed.
    fn default() -> Settings {
        let memory_mb = std::env::var("FERRY_MEMORY").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MEMORY_MB);
        Settings { cpus: DEFAULT_CPUS, memory_mb }
    }
}

impl Settings {
    pub fn load(path: &Path) -> Result<Settings> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Settings::default()),
            Err(e) => return Err(Error::msg(format!("read {}: {e}", path.display()))),
        };
        let v: serde_json::Value = serde_json::from_str(&text).ctx(|| format!("{}: not JSON", path.display()))?;
        let get = |k: &str, d: u32| v.get(k).and_then(|x| x.as_u64()).map(|x| x as u32).unwrap_or(d);
        let d = Settings::default();
        Ok(Settings { cpus: get("cpus", d.cpus), memory_mb: get("memory_mb", d.memory_mb) })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::json!({ "cpus": self.cpus, "memory_mb": self.memory_mb }).to_string();
        std::fs::write(path, text + "\n").ctx(|| format!("write {}", path.display()))
    }

    /// These settings with the user's `--cpus`/`--memory`, checked against what this host has.
    pub fn with(self, cpus: Option<u32>, memory_mb: Option<u32>, host_cpus: u32) -> Result<Settings> {
        if let Some(c) = cpus {
            if c == 0 || c > host_cpus {
                return Err(Error::msg(format!("--cpus {c}: this host has {host_cpus} CPU(s); use 1 to {host_cpus}")));
            }
        }
        if let Some(m) = memory_mb {
            if m < MIN_MEMORY_MB {
                return Err(Error::msg(format!("--memory {m}M: at least {MIN_MEMORY_MB}M is needed (e.g. --memory 2G)")));
            }
        }
        Ok(Settings { cpus: cpus.unwrap_or(self.cpus), memory_mb: memory_mb.unwrap_or(self.memory_mb) })
    }
}

/// `--memory SIZE`: a size with a unit (`1536M`, `2G`), or a number of MiB.
pub fn parse_memory(s: &str) -> Result<u32> {
    if let Ok(mib) = s.trim().parse::<u32>() {
        return Ok(mib);
    }
    let bytes = crate::disk::parse_size(s).map_err(|_| Error::msg(format!("--memory {s}: use a size like 1536M or 2G")))?;
    u32::try_from(bytes >> 20).map_err(|_| Error::msg(format!("--memory {s}: too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_check() {
        assert_eq!(parse_memory("1536M").unwrap(), 1536);
        assert_eq!(parse_memory("2G").unwrap(), 2048);
        assert_eq!(parse_memory("3000").unwrap(), 3000);
        assert!(parse_memory("lots").unwrap_err().to_string().contains("1536M"));
        let s = Settings { cpus: 2, memory_mb: 2048 };
        assert_eq!(s.with(Some(1), Some(1536), 2).unwrap(), Settings { cpus: 1, memory_mb: 1536 });
        assert_eq!(s.with(None, None, 2).unwrap(), s);
        assert!(s.with(Some(3), None, 2).unwrap_err().to_string().contains("1 to 2"));
        assert!(s.with(Some(0), None, 2).is_err());
        assert!(s.with(None, Some(100), 2).unwrap_err().to_string().contains("512M"));
    }

    #[test]
    fn round_trip_and_defaults() {
        let p = std::env::temp_dir().join(format!("ferry-settings-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&p);
        assert_eq!(Settings::load(&p).unwrap().cpus, DEFAULT_CPUS);
        Settings { cpus: 1, memory_mb: 1536 }.save(&p).unwrap();
        assert_eq!(Settings::load(&p).unwrap(), Settings { cpus: 1, memory_mb: 1536 });
        std::fs::write(&p, "{broken").unwrap();
        assert!(Settings::load(&p).is_err());
        let _ = std::fs::remove_file(&p);
    }
}
