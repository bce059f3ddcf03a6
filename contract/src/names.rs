//! Names both sides check the same way: hostnames (machine names become guest hostnames) and kernel
//! module names (the builder picks modules by name, init loads them by name).

/// A hostname per RFC 1123: 1..=63 chars of [a-z0-9-], not starting or ending with '-'.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Module names treat `-` and `_` as the same character; the kernel reports them with `_`.
pub fn module(name: &str) -> String {
    name.replace('-', "_")
}

/// `kernel/fs/overlayfs/overlay.ko.xz` → `overlay`.
pub fn module_from_path(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    module(stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for ok in ["a", "ferry", "node-1", &"x".repeat(63)] {
            assert!(valid_hostname(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a_b", "a.b", "é", &"x".repeat(64)] {
            assert!(!valid_hostname(bad), "{bad}");
        }
    }

    #[test]
    fn module_names() {
        assert_eq!(module_from_path("kernel/fs/overlayfs/overlay.ko.xz"), "overlay");
        assert_eq!(module_from_path("kernel/drivers/net/virtio-net.ko"), "virtio_net");
        assert_eq!(module("nf-nat"), "nf_nat");
    }
}
