//! containerd as Ferry runs it. PID 1 starts it as soon as the data disk is mounted, so its start
//! overlaps the network and clock phases instead of following dockerd's; the engine hands it to dockerd
//! with `--containerd`, and starts it again when it is gone. The layout is the one dockerd gives the
//! containerd it starts itself (a profile that moves dockerd's roots gets exactly that back).

pub const BINARY: &str = "/usr/bin/containerd";
/// Its configuration (rootfs/overlay): root, state and sockets below.
pub const CONFIG: &str = "/etc/ferry/containerd.toml";
/// dockerd's exec-root part for containerd: sockets, pid file, task state (tmpfs).
pub const STATE_DIR: &str = "/var/run/docker/containerd";
pub const SOCKET: &str = "/var/run/docker/containerd/containerd.sock";
/// The pid file dockerd also uses for the containerd it starts; whoever starts containerd writes it.
pub const PID_FILE: &str = "/var/run/docker/containerd/containerd.pid";
/// dockerd's data root, and containerd's working directory: a containerd whose working directory is
/// no longer this directory (a hook mounted something over it) works on the wrong data and is replaced.
pub const DATA_ROOT: &str = "/var/lib/docker";

/// The command line.
pub const ARGV: &[&str] = &[BINARY, "--config", CONFIG];

#[cfg(test)]
mod tests {
    use super::*;

    /// The file's settings, as `key = "value"` lines within their `[section]`.
    fn setting(text: &str, section: &str, key: &str) -> Option<String> {
        let mut current = String::new();
        for line in text.lines().map(str::trim) {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = s.to_string();
            } else if let Some((k, v)) = line.split_once('=') {
                if current == section && k.trim() == key {
                    return Some(v.trim().trim_matches('"').to_string());
                }
            }
        }
        None
    }

    #[test]
    fn the_configuration_file_says_what_the_constants_say() {
        let text = include_str!("../../rootfs/overlay/etc/ferry/containerd.toml");
        assert_eq!(setting(text, "grpc", "address").as_deref(), Some(SOCKET));
        assert_eq!(setting(text, "", "root"), Some(format!("{DATA_ROOT}/containerd/daemon")));
        assert_eq!(setting(text, "", "state"), Some(format!("{STATE_DIR}/daemon")));
        assert_eq!(setting(text, "debug", "address"), Some(format!("{STATE_DIR}/containerd-debug.sock")));
        assert!(PID_FILE.starts_with(STATE_DIR) && SOCKET.starts_with(STATE_DIR));
    }
}
