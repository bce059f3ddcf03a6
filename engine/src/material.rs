//! TLS material for the front door, in order: provisioned files (userdata / docker-machine), else a set
//! generated on first boot. Bad files are reported by name and never crash the engine.
use crate::certs;
use crate::error::{Context, Error, Kind, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn certs_from(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let data = std::fs::read(path).ctx_as(Kind::TlsUnreadable, || format!("read {}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<std::result::Result<_, _>>()
        .ctx_as(Kind::TlsUnusable, || format!("{}: not valid PEM", path.display()))?;
    if certs.is_empty() {
        return Err(Error::of(Kind::TlsUnusable, format!("{}: no CERTIFICATE block found", path.display())));
    }
    Ok(certs)
}

pub fn key_from(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let data = std::fs::read(path).ctx_as(Kind::TlsUnreadable, || format!("read {}", path.display()))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .ctx_as(Kind::TlsUnusable, || format!("{}: not valid PEM", path.display()))?
        .ok_or_else(|| Error::of(Kind::TlsUnusable, format!("{}: no PRIVATE KEY block found", path.display())))
}

/// A server config that requires a client certificate issued by `ca`. TLS 1.2 and 1.3 only.
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<ServerConfig> {
    let mut roots = RootCertStore::empty();
    for c in certs_from(ca)? {
        roots.add(c).ctx_as(Kind::TlsUnusable, || format!("{}: not a usable CA certificate", ca.display()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .ctx_as(Kind::TlsUnusable, || format!("{}: cannot verify clients with it", ca.display()))?;
    let chain = certs_from(cert)?;
    let key_der = key_from(key)?;
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .ctx(|| "TLS versions".into())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .ctx_as(Kind::TlsKeyMismatch, || format!("{} does not match {}", key.display(), cert.display()))
}

pub struct Paths {
    /// Provisioned: ca.pem, server.pem, server-key.pem. Generated set goes to `generated/` below it.
    pub tls_dir: PathBuf,
    /// Where the docker user finds the generated client bundle (~/.docker).
    pub client_dir: Option<PathBuf>,
    /// The file that says the boot's clock check is over (PID 1 writes it): certificates are made only
    /// after it appears or CLOCK_WAIT has passed, so an RTC that runs ahead does not date them.
    pub clock_checked: Option<PathBuf>,
}

/// The longest the first certificates wait for the boot's clock check (PID 1's SNTP gives up after 3.5 s).
pub const CLOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Wait until `marker` exists or `limit` has passed; one line says so when there is a wait.
fn wait_for_clock(marker: &Path, limit: std::time::Duration, log: &dyn Fn(&str)) {
    if marker.exists() {
        return;
    }
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if let Ok(s) = std::fs::read_to_string(marker) {
            return log(&format!(
                "waited {:.1} s for the boot's clock check ({}) before making certificates",
                start.elapsed().as_secs_f64(),
                s.trim()
            ));
        }
    }
    log(&format!("no {} after {} s; making certificates with the clock as it is", marker.display(), limit.as_secs()));
}

pub struct Material {
    pub config: Arc<ServerConfig>,
    pub source: String,
}

/// The names a generated server certificate was issued for, one per line (hostname, then addresses).
fn names_record(hostname: &str, ips: &[std::net::IpAddr]) -> String {
    let mut s = format!("{hostname}\n");
    for ip in ips {
        s.push_str(&format!("{ip}\n"));
    }
    s
}

/// Resolve the material, in order: the profile's CACERT/SERVERCERT/SERVERKEY (docker-machine), Ferry's
/// provisioned tls/, the generated set (made on first use). `log` receives one line per problem or decision.
pub fn resolve(
    paths: &Paths,
    profile_files: Option<&(PathBuf, PathBuf, PathBuf)>,
    hostname: &str,
    ips: &[std::net::IpAddr],
    floor: Option<i64>,
    log: &dyn Fn(&str),
) -> Result<Material> {
    if let Some((ca, cert, key)) = profile_files {
        match server_config(ca, cert, key) {
            Ok(c) => return Ok(Material { config: Arc::new(c), source: format!("profile ({})", cert.display()) }),
            Err(e) => log(&format!("ERROR: the profile's TLS files are unusable: {e}; falling back")),
        }
    }
    let d = &paths.tls_dir;
    let (ca, cert, key) = (d.join("ca.pem"), d.join("server.pem"), d.join("server-key.pem"));
    if ca.exists() || cert.exists() || key.exists() {
        match server_config(&ca, &cert, &key) {
            Ok(c) => return Ok(Material { config: Arc::new(c), source: format!("provisioned {}", d.display()) }),
            Err(e) => log(&format!("ERROR: provisioned TLS material unusable: {e}; using generated certificates")),
        }
    }
    let g = d.join("generated");
    let (gca, gcert, gkey) = (g.join("ca.pem"), g.join("server.pem"), g.join("server-key.pem"));
    if gca.exists() {
        match server_config(&gca, &gcert, &gkey) {
            Ok(c) => {
                // The home is in RAM: the docker user's copy of the client bundle is put back every boot.
                if let Some(cd) = &paths.client_dir {
                    copy_client_bundle(cd, &g, false).unwrap_or_else(|e| log(&format!("ERROR: client bundle: {e}")));
                }
                return Ok(Material { config: Arc::new(c), source: format!("generated {}", g.display()) });
            }
            Err(e) => log(&format!("ERROR: generated TLS material unusable ({e}); generating a new set")),
        }
    }
    if let Some(m) = &paths.clock_checked {
        wait_for_clock(m, CLOCK_WAIT, log);
    }
    let now = time::OffsetDateTime::now_utc();
    certs::check_clock(now, floor)?;
    let b = certs::generate(hostname, ips, now)?;
    b.write_to(&g)?;
    certs::write_file(&g.join("names"), &names_record(hostname, ips), 0o644)?;
    if let Some(cd) = &paths.client_dir {
        copy_client_bundle(cd, &g, true).unwrap_or_else(|e| log(&format!("ERROR: client bundle: {e}")));
    }
    log(&format!("generated a CA, server and client certificate in {} (client bundle for the docker user)", g.display()));
    let c = server_config(&gca, &gcert, &gkey)?;
    Ok(Material { config: Arc::new(c), source: format!("generated {}", g.display()) })
}

/// Generated server certificates follow the machine: when the hostname or an address changed since the
/// certificate was issued, issue a new one from the generated CA. Returns the new config, if any.
pub fn refresh_generated(paths: &Paths, hostname: &str, ips: &[std::net::IpAddr], log: &dyn Fn(&str)) -> Result<Option<ServerConfig>> {
    let g = paths.tls_dir.join("generated");
    let want = names_record(hostname, ips);
    if std::fs::read_to_string(g.join("names")).ok().as_deref() == Some(want.as_str()) {
        return Ok(None);
    }
    let read = |n: &str| std::fs::read_to_string(g.join(n)).ctx(|| format!("read {}", g.join(n).display()));
    let ca = certs::Ca::from_pem(&read("ca.pem")?, &read("ca-key.pem")?)?;
    let (cert, key) = ca.server(&certs::server_names(hostname), &certs::server_ips(ips), time::OffsetDateTime::now_utc())?;
    certs::write_file(&g.join("server-key.pem"), &key, 0o600)?;
    certs::write_file(&g.join("server.pem"), &cert, 0o644)?;
    certs::write_file(&g.join("names"), &want, 0o644)?;
    let shown: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
    log(&format!("server certificate re-issued for {hostname} and {}", shown.join(", ")));
    server_config(&g.join("ca.pem"), &g.join("server.pem"), &g.join("server-key.pem")).map(Some)
}

/// Copy the generated client bundle (ca, cert, key) from `generated` into `dir`, owned by docker. With
/// `replace` every file is written (a new set was just made); without it only missing files are (the home
/// is in RAM and loses them at a reboot, and a file the user put there, e.g. from userdata.tar, stays).
fn copy_client_bundle(dir: &Path, generated: &Path, replace: bool) -> Result<()> {
    std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
    for (name, mode) in [("ca.pem", 0o644), ("cert.pem", 0o644), ("key.pem", 0o600)] {
        let to = dir.join(name);
        if !replace && to.exists() {
            continue;
        }
        let from = generated.join(name);
        let text = std::fs::read_to_string(&from).ctx(|| format!("read {}", from.display()))?;
        certs::write_file(&to, &text, mode)?;
        chown_docker(&to);
    }
    chown_docker(dir);
    if let Some(parent) = dir.parent() {
        chown_docker(parent);
    }
    Ok(())
}

/// docker:staff, never through a symlink; failure only means the file keeps root ownership.
fn chown_docker(p: &Path) {
    let _ = std::os::unix::fs::lchown(p, Some(1000), Some(50));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reboot keeps tls/generated on the disk but starts with an empty home: the bundle comes back,
    /// and a file the user placed is not replaced.
    #[test]
    fn the_client_bundle_is_restored_after_a_reboot() {
        let root = std::env::temp_dir().join(format!("ferry-material-{}", std::process::id()));
        let paths = Paths { tls_dir: root.join("tls"), client_dir: Some(root.join("home/.docker")), clock_checked: None };
        let ips = ["10.0.2.15".parse().unwrap()];
        resolve(&paths, None, "ferry", &ips, None, &|_| {}).unwrap();
        let cd = root.join("home/.docker");
        let first = std::fs::read_to_string(cd.join("cert.pem")).unwrap();
        std::fs::remove_dir_all(root.join("home")).unwrap();
        std::fs::create_dir_all(&cd).unwrap();
        std::fs::write(cd.join("ca.pem"), "mine").unwrap();
        let m = resolve(&paths, None, "ferry", &ips, None, &|_| {}).unwrap();
        assert!(m.source.starts_with("generated"));
        assert_eq!(std::fs::read_to_string(cd.join("cert.pem")).unwrap(), first);
        assert!(std::fs::read_to_string(cd.join("key.pem")).unwrap().contains("PRIVATE KEY"));
        assert_eq!(std::fs::read_to_string(cd.join("ca.pem")).unwrap(), "mine");
        let _ = std::fs::remove_dir_all(root);
    }

    /// The first certificates wait for PID 1's word that the clock was checked, and are made after it.
    #[test]
    fn certificates_wait_for_the_clock_check() {
        let root = std::env::temp_dir().join(format!("ferry-material-clock-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let marker = root.join("clock-checked");
        let paths = Paths { tls_dir: root.join("tls"), client_dir: None, clock_checked: Some(marker.clone()) };
        let writer = {
            let marker = marker.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(400));
                std::fs::write(marker, "SNTP 10.0.2.2 answered\n").unwrap();
            })
        };
        let lines = std::cell::RefCell::new(Vec::<String>::new());
        resolve(&paths, None, "ferry", &[], None, &|l| lines.borrow_mut().push(l.to_string())).unwrap();
        writer.join().unwrap();
        let lines = lines.into_inner();
        assert!(lines.iter().any(|l| l.starts_with("waited") && l.contains("(SNTP 10.0.2.2 answered)")), "{lines:?}");
        let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        assert!(mtime(&root.join("tls/generated/server.pem")) >= mtime(&marker), "made before the clock check");
        let _ = std::fs::remove_dir_all(root);
    }

    /// Each way provisioned material can be bad has its kind (the messages name the file).
    #[test]
    fn bad_material_is_classified() {
        let root = std::env::temp_dir().join(format!("ferry-material-kinds-{}", std::process::id()));
        let paths = Paths { tls_dir: root.join("tls"), client_dir: None, clock_checked: None };
        resolve(&paths, None, "ferry", &[], None, &|_| {}).unwrap();
        let g = root.join("tls/generated");
        let (ca, cert, key) = (g.join("ca.pem"), g.join("server.pem"), g.join("server-key.pem"));
        let kind = |ca: &Path, cert: &Path, key: &Path| server_config(ca, cert, key).err().map(|e| e.kind);
        assert_eq!(kind(&ca, &cert, &key), None, "the generated set is usable");
        assert_eq!(kind(&root.join("missing.pem"), &cert, &key), Some(Kind::TlsUnreadable));
        let text = root.join("text.pem");
        std::fs::write(&text, "not a certificate\n").unwrap();
        assert_eq!(kind(&text, &cert, &key), Some(Kind::TlsUnusable));
        assert_eq!(kind(&ca, &cert, &text), Some(Kind::TlsUnusable), "no PRIVATE KEY block");
        // The CA's key is a valid key, but not the server certificate's.
        assert_eq!(kind(&ca, &cert, &g.join("ca-key.pem")), Some(Kind::TlsKeyMismatch));
        let clock = certs::check_clock(time::OffsetDateTime::UNIX_EPOCH, Some(1_700_000_000)).unwrap_err();
        assert_eq!(clock.kind, Kind::ClockBeforeBuild);
        let _ = std::fs::remove_dir_all(root);
    }
}
