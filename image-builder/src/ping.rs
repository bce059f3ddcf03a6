//! The host's mTLS client for `GET /_ping` on the appliance's front door (readiness for `ferry up`).
use crate::error::{Context, Error, Result};
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub fn client_config(cert_dir: &Path) -> Result<rustls::ClientConfig> {
    use ferry_engine::material::{certs_from, key_from};
    let engine_err = |e: ferry_engine::error::Error| Error::msg(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_from(&cert_dir.join("ca.pem")).map_err(engine_err)? {
        roots.add(c).ctx(|| "add CA".into())?;
    }
    let chain = certs_from(&cert_dir.join("cert.pem")).map_err(engine_err)?;
    let key = key_from(&cert_dir.join("key.pem")).map_err(engine_err)?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .ctx(|| "TLS versions".into())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .ctx(|| format!("client certificate in {}", cert_dir.display()))
}

/// An mTLS connection to the front door (server name `localhost`, which every Ferry certificate carries).
pub fn connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let tcp = TcpStream::connect_timeout(&addr, timeout).ctx(|| format!("connect {addr}"))?;
    tcp.set_read_timeout(Some(timeout)).ctx(|| "timeout".into())?;
    tcp.set_write_timeout(Some(timeout)).ctx(|| "timeout".into())?;
    let name = ServerName::try_from("localhost").map_err(|e| Error::msg(e.to_string()))?;
    let conn = rustls::ClientConnection::new(cfg, name).ctx(|| "TLS client".into())?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Send `request` as it is and read the answer until the server closes; returns the raw response.
pub fn request(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, request: &str, timeout: Duration) -> Result<String> {
    let mut s = connect(addr, cfg, timeout)?;
    s.write_all(request.as_bytes()).ctx(|| format!("send to {addr}"))?;
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Err(e) => return Err(Error::msg(format!("read from {addr}: {e}"))),
    }
    Ok(String::from_utf8_lossy(&buf).to_string())
}

/// One HTTPS GET over mTLS; returns the raw response.
pub fn get(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, path: &str, timeout: Duration) -> Result<String> {
    request(addr, cfg, &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"), timeout)
}

pub fn ping(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> bool {
    get(addr, cfg, "/_ping", Duration::from_secs(5)).map(|r| r.starts_with("HTTP/1.1 200") && r.ends_with("OK")).unwrap_or(false)
}
