//! A second API listener for the versus bench only (issue 17, row f): with `ferry.bench=dockerd-tls` on
//! the kernel command line, dockerd also serves the API itself on 12376 (not Swarm's 2377) with its own
//! TLS, from the provisioned material, so the bench can compare the front door with dockerd's native TLS
//! in the same VM. Without that option (every machine a user runs) nothing changes: the front door is
//! the only listener.
use std::path::Path;

pub const OPTION: &str = "ferry.bench=dockerd-tls";
pub const PORT: u16 = 12376;

/// dockerd's flags for the bench listener, when `cmdline` asks for it and `tls_dir` holds the provisioned
/// ca.pem, server.pem and server-key.pem (the same client certificates work on both listeners).
pub fn native_tls_args(cmdline: &str, tls_dir: &Path) -> Option<Vec<String>> {
    if !cmdline.split_whitespace().any(|w| w == OPTION) {
        return None;
    }
    let files = ["ca.pem", "server.pem", "server-key.pem"].map(|f| tls_dir.join(f));
    if !files.iter().all(|f| f.is_file()) {
        return None;
    }
    let [ca, cert, key] = files.map(|f| f.display().to_string());
    Some(vec![
        "-H".into(),
        format!("tcp://0.0.0.0:{PORT}"),
        "--tlsverify".into(),
        format!("--tlscacert={ca}"),
        format!("--tlscert={cert}"),
        format!("--tlskey={key}"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_with_the_option_and_the_files() {
        let dir = std::env::temp_dir().join(format!("ferry-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(native_tls_args("quiet ferry.bench=dockerd-tls", &dir), None, "no files: no listener");
        for f in ["ca.pem", "server.pem", "server-key.pem"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        assert_eq!(native_tls_args("quiet ferry.bench=poweroff", &dir), None, "not asked: no listener");
        assert_eq!(native_tls_args("xferry.bench=dockerd-tls", &dir), None);
        let a = native_tls_args("console=ttyS0 ferry.bench=dockerd-tls", &dir).unwrap();
        assert_eq!(&a[..3], ["-H", "tcp://0.0.0.0:12376", "--tlsverify"]);
        assert!(a[3].ends_with("/ca.pem") && a[5].ends_with("/server-key.pem"), "{a:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
