//! Paths that are part of the contract: boot2docker's persistent layout, which docker-machine, profiles
//! and users' hooks rely on, and Ferry's own files that more than one program reads or writes. Every
//! program uses these names; a path spelled out elsewhere is a path only one program knows.

/// boot2docker's persistent directory, on the data disk (mounted with `/var/lib`).
pub const B2D: &str = "/var/lib/boot2docker";
/// The engine's settings (EXTRA_ARGS, DOCKER_TLS, NTP_SERVER, ...), read by the engine and by init.
pub const PROFILE: &str = "/var/lib/boot2docker/profile";
/// The provisioning bundle as stored on the data disk (relative to its root while formatting).
pub const USERDATA: &str = "/var/lib/boot2docker/userdata.tar";
/// The engine's TLS material (generated, or installed by docker-machine).
pub const TLS_DIR: &str = "/var/lib/boot2docker/tls";
/// Extra CA certificates the system trusts (boot2docker's `certs/`).
pub const CERTS_DIR: &str = "/var/lib/boot2docker/certs";
/// Logs that survive a reboot: the engine's, the hooks', the guest tools'.
pub const PERSISTENT_LOG_DIR: &str = "/var/lib/boot2docker/log";
/// sshd's host keys (so a machine keeps its identity across boots); rootfs's sshd_config names them too.
pub const SSH_HOST_KEYS: &str = "/var/lib/boot2docker/ssh";
/// `/etc` files that persist: the hostname, `/etc/docker`.
pub const PERSISTENT_ETC: &str = "/var/lib/boot2docker/etc";
pub const PERSISTED_HOSTNAME: &str = "/var/lib/boot2docker/etc/hostname";
pub const PERSISTENT_DOCKER_ETC: &str = "/var/lib/boot2docker/etc/docker";

/// The docker user's home: its ssh keys and the generated client certificates.
pub const DOCKER_HOME: &str = "/home/docker";
pub const CLIENT_TLS_DIR: &str = "/home/docker/.docker";

/// The engine's configuration directory and file (bound to the persistent copy when there is a disk).
pub const DOCKER_ETC: &str = "/etc/docker";
pub const DAEMON_JSON: &str = "/etc/docker/daemon.json";
/// The engine's local API socket.
pub const DOCKER_SOCK: &str = "/var/run/docker.sock";
/// Logs (bound to `PERSISTENT_LOG_DIR` when there is a disk).
pub const LOG_DIR: &str = "/var/log";
pub const DOCKER_LOG: &str = "/var/log/docker.log";

/// The image's build time (SOURCE_DATE_EPOCH): the clock's floor and the certificates' earliest date.
pub const BUILD_EPOCH: &str = "/etc/ferry/build-epoch";
pub const VERSION: &str = "/etc/ferry/version";
/// Ferry's runtime state (a tmpfs): the engine's control socket, the formatter's staging directory.
pub const RUN_DIR: &str = "/run/ferry";
pub const ENGINE_SOCK: &str = "/run/ferry/engine.sock";
/// Written by PID 1 once the boot's SNTP attempt is over (answered, gave up, or off; the file says
/// which). The engine manager waits for it before it makes certificates, whose dates come from the clock.
pub const CLOCK_CHECKED: &str = "/run/ferry/clock-checked";

/// In the initramfs: the compressed root image, and the file that says "this is stage A".
pub const ROOT_IMAGE: &str = "/rootfs.squashfs";
pub const INITRAMFS_MARKER: &str = "/ferry-initramfs";
/// Where stage A moves the root image's squashfs mount in the new root (kept visible for inspection).
pub const ROOT_IMAGE_MOUNT: &str = "/run/ferry/image";
/// The data disk's copy of the root image, which the root runs from once verified (init/src/rootcopy.rs).
pub const ROOT_IMAGE_COPY: &str = "/var/lib/ferry/rootfs.squashfs";

/// QEMU fw_cfg items the host CLI passes (`-fw_cfg name=...`) and init reads.
pub const FWCFG_USERDATA: &str = "opt/ferry/userdata.tar";
pub const FWCFG_SHARES: &str = "opt/ferry/shares";

/// Where the guest's kernel shows a fw_cfg item.
pub fn fwcfg_file(name: &str) -> String {
    format!("/sys/firmware/qemu_fw_cfg/by_name/{name}/raw")
}

/// `path` relative to the root (`/var/lib/x` → `var/lib/x`), for writing into a tree being built.
pub fn relative(path: &str) -> &str {
    path.trim_start_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistent_paths_live_under_boot2dockers_directory() {
        for p in [
            PROFILE,
            USERDATA,
            SSH_HOST_KEYS,
            TLS_DIR,
            CERTS_DIR,
            PERSISTENT_LOG_DIR,
            PERSISTENT_ETC,
            PERSISTED_HOSTNAME,
            PERSISTENT_DOCKER_ETC,
        ] {
            assert!(p.starts_with(B2D) && p.len() > B2D.len(), "{p}");
        }
        assert!(CLIENT_TLS_DIR.starts_with(DOCKER_HOME) && DAEMON_JSON.starts_with(DOCKER_ETC) && DOCKER_LOG.starts_with(LOG_DIR));
        assert_eq!(relative(USERDATA), "var/lib/boot2docker/userdata.tar");
    }
}
