//! The front door against a local unix-socket server standing in for dockerd: half-close both ways
//! (close_notify and bare FIN), an HTTP upgrade carrying bytes both ways, and refusals.
use ferry_engine::{certs, frontdoor, material};
use rustls::pki_types::ServerName;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};

struct Fixture {
    dir: PathBuf,
    addr: std::net::SocketAddr,
    upstream_connections: Arc<AtomicUsize>,
    bundle: certs::Bundle,
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferry-frontdoor-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Upstream behaviour: "echo-at-eof" answers `got:<everything>` after the client half-closes;
/// "upgrade" answers an HTTP upgrade with 101 and then echoes bytes as they come.
async fn upstream(listener: UnixListener, mode: &'static str, count: Arc<AtomicUsize>) {
    loop {
        let (mut s, _) = listener.accept().await.unwrap();
        count.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            if mode == "echo-at-eof" {
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                s.write_all(b"got:").await.unwrap();
                s.write_all(&all).await.unwrap();
                s.shutdown().await.unwrap();
            } else {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).await.unwrap() == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                assert!(String::from_utf8_lossy(&head).contains("Upgrade: tcp"));
                s.write_all(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n").await.unwrap();
                let mut buf = [0u8; 1024];
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    s.write_all(&buf[..n]).await.unwrap();
                }
            }
        });
    }
}

async fn fixture(tag: &str, mode: &'static str) -> Fixture {
    let dir = tmpdir(tag);
    let bundle = certs::generate("localhost", &[], time::OffsetDateTime::now_utc()).unwrap();
    std::fs::write(dir.join("ca.pem"), &bundle.ca_cert).unwrap();
    std::fs::write(dir.join("server.pem"), &bundle.server_cert).unwrap();
    std::fs::write(dir.join("server-key.pem"), &bundle.server_key).unwrap();
    let cfg = material::server_config(&dir.join("ca.pem"), &dir.join("server.pem"), &dir.join("server-key.pem")).unwrap();
    let sock = dir.join("docker.sock");
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(upstream(UnixListener::bind(&sock).unwrap(), mode, count.clone()));
    let listener = frontdoor::listen_on("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = Arc::new(RwLock::new(Arc::new(cfg)));
    tokio::spawn(frontdoor::serve(listener, shared, sock, Arc::new(|_: &str| {})));
    Fixture { dir, addr, upstream_connections: count, bundle }
}

fn client_config(ca: &str, cert: Option<(&str, &str)>, tls12_only: bool) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let versions: &[&rustls::SupportedProtocolVersion] =
        if tls12_only { &[&rustls::version::TLS12] } else { &[&rustls::version::TLS13, &rustls::version::TLS12] };
    let b = rustls::ClientConfig::builder_with_provider(material::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    match cert {
        Some((c, k)) => {
            let chain = rustls_pemfile::certs(&mut c.as_bytes()).map(|x| x.unwrap()).collect();
            let key = rustls_pemfile::private_key(&mut k.as_bytes()).unwrap().unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    }
}

async fn connect(f: &Fixture, cfg: rustls::ClientConfig) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(f.addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

fn good(f: &Fixture) -> rustls::ClientConfig {
    client_config(&f.bundle.ca_cert, Some((&f.bundle.client_cert, &f.bundle.client_key)), false)
}

#[tokio::test]
async fn half_close_with_close_notify_reaches_upstream() {
    let f = fixture("notify", "echo-at-eof").await;
    let mut s = connect(&f, good(&f)).await.unwrap();
    s.write_all(b"hi\n").await.unwrap();
    s.shutdown().await.unwrap(); // close_notify + FIN
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, b"got:hi\n");
    let _ = std::fs::remove_dir_all(&f.dir);
}

#[tokio::test]
async fn half_close_with_bare_fin_reaches_upstream() {
    let f = fixture("fin", "echo-at-eof").await;
    let mut s = connect(&f, good(&f)).await.unwrap();
    s.write_all(b"data").await.unwrap();
    s.flush().await.unwrap();
    s.get_mut().0.shutdown().await.unwrap(); // TCP FIN without a TLS close_notify (some clients do this)
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    assert_eq!(out, b"got:data");
    let _ = std::fs::remove_dir_all(&f.dir);
}

#[tokio::test]
async fn upgraded_connection_carries_bytes_both_ways() {
    let f = fixture("upgrade", "upgrade").await;
    let mut s = connect(&f, good(&f)).await.unwrap();
    s.write_all(b"POST /containers/x/attach?stream=1 HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    for msg in [&b"first"[..], b"second"] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg);
    }
    let _ = std::fs::remove_dir_all(&f.dir);
}

/// A refused client never gets bytes from upstream and upstream never sees a connection.
async fn assert_refused(f: &Fixture, cfg: rustls::ClientConfig) {
    if let Ok(mut s) = connect(f, cfg).await {
        let _ = s.write_all(b"GET /_ping HTTP/1.0\r\n\r\n").await;
        let mut out = Vec::new();
        let r = s.read_to_end(&mut out).await;
        assert!(r.is_err() || out.is_empty(), "refused client got {out:?}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(f.upstream_connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn clients_without_a_valid_certificate_are_refused() {
    let f = fixture("refuse", "echo-at-eof").await;
    assert_refused(&f, client_config(&f.bundle.ca_cert, None, false)).await;
    assert_refused(&f, client_config(&f.bundle.ca_cert, None, true)).await;
    let other = certs::generate("localhost", &[], time::OffsetDateTime::now_utc()).unwrap();
    assert_refused(&f, client_config(&f.bundle.ca_cert, Some((&other.client_cert, &other.client_key)), false)).await;
    assert_refused(&f, client_config(&f.bundle.ca_cert, Some((&other.client_cert, &other.client_key)), true)).await;
    // Plaintext HTTP on the TLS port.
    let mut tcp = TcpStream::connect(f.addr).await.unwrap();
    tcp.write_all(b"GET /_ping HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    assert!(!String::from_utf8_lossy(&out).contains("OK"));
    assert_eq!(f.upstream_connections.load(Ordering::SeqCst), 0);
    let _ = std::fs::remove_dir_all(&f.dir);
}

#[test]
fn mismatched_key_and_bad_pem_are_named() {
    let dir = tmpdir("material");
    let a = certs::generate("localhost", &[], time::OffsetDateTime::now_utc()).unwrap();
    let b = certs::generate("localhost", &[], time::OffsetDateTime::now_utc()).unwrap();
    std::fs::write(dir.join("ca.pem"), &a.ca_cert).unwrap();
    std::fs::write(dir.join("server.pem"), &a.server_cert).unwrap();
    std::fs::write(dir.join("server-key.pem"), &b.server_key).unwrap();
    let e = material::server_config(&dir.join("ca.pem"), &dir.join("server.pem"), &dir.join("server-key.pem")).unwrap_err().to_string();
    assert!(e.contains("server-key.pem does not match"), "{e}");
    std::fs::write(dir.join("ca.pem"), "not a pem").unwrap();
    let e = material::server_config(&dir.join("ca.pem"), &dir.join("server.pem"), &dir.join("server-key.pem")).unwrap_err().to_string();
    assert!(e.contains("ca.pem"), "{e}");
    // resolve() falls back to a generated set and says why.
    let lines = std::sync::Mutex::new(Vec::new());
    let paths = material::Paths { tls_dir: dir.clone(), client_dir: Some(dir.join("client")), clock_checked: None };
    let m = material::resolve(&paths, None, "box", &[], None, &|l: &str| lines.lock().unwrap().push(l.to_string())).unwrap();
    assert!(m.source.starts_with("generated"));
    assert!(lines.lock().unwrap().iter().any(|l| l.contains("ca.pem")));
    assert!(dir.join("client/key.pem").is_file());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(dir.join("generated/ca-key.pem")).unwrap().permissions().mode() & 0o777, 0o600);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The profile's files win over everything; generated server certificates follow address changes and
/// are left alone when nothing changed.
#[test]
fn profile_files_first_and_generated_certs_follow_addresses() {
    use x509_parser::prelude::*;
    let dir = tmpdir("follow");
    let paths = material::Paths { tls_dir: dir.clone(), client_dir: None, clock_checked: None };
    let quiet = |_: &str| {};
    let ip1: std::net::IpAddr = "10.0.2.15".parse().unwrap();
    let ip2: std::net::IpAddr = "192.168.56.101".parse().unwrap();
    let m = material::resolve(&paths, None, "box", &[ip1], None, &quiet).unwrap();
    assert!(m.source.starts_with("generated"));
    assert!(material::refresh_generated(&paths, "box", &[ip1], &quiet).unwrap().is_none());
    let lines = std::sync::Mutex::new(Vec::new());
    assert!(material::refresh_generated(&paths, "box", &[ip1, ip2], &|l: &str| lines.lock().unwrap().push(l.to_string()))
        .unwrap()
        .is_some());
    assert!(lines.lock().unwrap()[0].contains("192.168.56.101"));
    let pem = std::fs::read(dir.join("generated/server.pem")).unwrap();
    let (_, p) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let (_, cert) = X509Certificate::from_der(&p.contents).unwrap();
    let sans = format!("{:?}", cert.subject_alternative_name().unwrap().unwrap().value.general_names);
    assert!(sans.contains("192.168.56.101") || sans.contains("[192, 168, 56, 101]"), "{sans}");

    // A docker-machine style set named by the profile is used as is.
    let dm = dir.join("dm");
    let b = certs::generate("dm", &[], ::time::OffsetDateTime::now_utc()).unwrap();
    b.write_to(&dm).unwrap();
    let files = (dm.join("ca.pem"), dm.join("server.pem"), dm.join("server-key.pem"));
    let m = material::resolve(&paths, Some(&files), "box", &[ip1], None, &quiet).unwrap();
    assert!(m.source.starts_with("profile"), "{}", m.source);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Copy `from` to `to`, holding every chunk for `delay` first (a slow client, or a slow network).
async fn slow_pipe(mut from: impl tokio::io::AsyncRead + Unpin, mut to: impl tokio::io::AsyncWrite + Unpin, delay: std::time::Duration) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tokio::time::sleep(delay).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

/// The handshake limit is on the client's silence: a handshake that takes longer than the idle limit in
/// all, but never leaves the server waiting that long, completes. A silent client is dropped after the
/// idle limit, and one that trickles a byte at a time after the total limit.
#[tokio::test]
async fn handshake_limit_is_on_silence_not_length() {
    use std::time::{Duration, Instant};
    let f = fixture("slow", "echo-at-eof").await;
    let cfg = Arc::new(material::server_config(&f.dir.join("ca.pem"), &f.dir.join("server.pem"), &f.dir.join("server-key.pem")).unwrap());
    let (idle, total) = (Duration::from_millis(400), Duration::from_millis(2500));

    // Client -> server bytes arrive 300 ms late: two client flights make the handshake last over 600 ms.
    let (client_end, relay_c) = tokio::io::duplex(64 * 1024);
    let (relay_s, server_end) = tokio::io::duplex(64 * 1024);
    let (c_read, c_write) = tokio::io::split(relay_c);
    let (s_read, s_write) = tokio::io::split(relay_s);
    tokio::spawn(slow_pipe(c_read, s_write, Duration::from_millis(300)));
    tokio::spawn(slow_pipe(s_read, c_write, Duration::ZERO));
    let client =
        tokio::spawn(tokio_rustls::TlsConnector::from(Arc::new(good(&f))).connect(ServerName::try_from("localhost").unwrap(), client_end));
    let t = Instant::now();
    let server = frontdoor::handshake(tokio_rustls::TlsAcceptor::from(cfg.clone()), server_end, idle, total).await;
    assert!(server.is_ok(), "a slow but steady client was cut off after {:?}", t.elapsed());
    assert!(t.elapsed() > idle, "the test's handshake was too quick ({:?}) to show anything", t.elapsed());
    assert!(client.await.unwrap().is_ok());

    // Silent after 3 bytes: dropped after about `idle`.
    let (mut quiet, server_end) = tokio::io::duplex(1024);
    quiet.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let t = Instant::now();
    assert!(matches!(
        frontdoor::handshake(tokio_rustls::TlsAcceptor::from(cfg.clone()), server_end, idle, total).await,
        Err(frontdoor::Refused::Silent)
    ));
    assert!(t.elapsed() >= idle && t.elapsed() < total, "silent client dropped after {:?}", t.elapsed());

    // One byte of a valid ClientHello every 200 ms: never silent for `idle`, dropped at `total`.
    let (mut trickle, server_end) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        let hello = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
        for b in hello.iter().cycle() {
            if trickle.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let t = Instant::now();
    assert!(matches!(
        frontdoor::handshake(tokio_rustls::TlsAcceptor::from(cfg), server_end, idle, total).await,
        Err(frontdoor::Refused::TooLong)
    ));
    assert!(t.elapsed() >= total && t.elapsed() < total + idle, "trickling client dropped after {:?}", t.elapsed());
}

/// At the connection limit a new client waits (in the listen backlog) instead of being closed, and is
/// served as soon as one connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limit_new_clients_wait_instead_of_being_closed() {
    use std::time::Duration;
    // Both ends of 1024 connections plus their upstream sockets: more than the usual soft limit of 1024.
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
    let f = fixture("limit", "echo-at-eof").await;
    let mut idle = Vec::new();
    for _ in 0..frontdoor::MAX_CONNECTIONS {
        idle.push(connect(&f, good(&f)).await.unwrap());
    }
    let waiting = tokio::spawn({
        let cfg = good(&f);
        let addr = f.addr;
        async move {
            let tcp = TcpStream::connect(addr).await?;
            tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(ServerName::try_from("localhost").unwrap(), tcp).await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the client over the limit was answered (or closed) while all slots were taken");
    drop(idle.pop());
    let served = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("not served after a slot freed").unwrap();
    let mut s = served.expect("the waiting client's handshake failed");
    s.write_all(b"hello").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"got:hello");
}

/// Refused handshakes are counted by reason and reported as one line, then the count starts again.
#[test]
fn refusals_are_counted_by_reason_and_reset() {
    let t = frontdoor::Tally::default();
    assert_eq!(t.take(), None);
    t.count(&frontdoor::Refused::Silent);
    t.count(&frontdoor::Refused::Silent);
    t.count(&frontdoor::Refused::TooLong);
    t.count(&frontdoor::Refused::Tls(std::io::Error::other("peer sent no certificates")));
    t.count(&frontdoor::Refused::Tls(std::io::Error::other("second")));
    let line = t.take().expect("a report line");
    assert!(line.starts_with("5 handshake(s) refused: 2 silent for 10s, 1 not done in 60s, 2 TLS error(s)"), "{line}");
    assert!(line.contains("e.g. peer sent no certificates") && !line.contains("second"), "{line}");
    assert_eq!(t.take(), None);
}

/// The front door's listen queue holds a burst far beyond the 128 that tokio's own `bind` asks for: 600
/// connections complete while nothing accepts. (With a 128 backlog the kernel drops the SYNs past the
/// queue and connect() stalls for its 1 s retransmit, longer than the timeout here.)
#[test]
fn the_listen_queue_holds_a_burst() {
    use std::time::Duration;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let listener = rt.block_on(async { frontdoor::listen_on("127.0.0.1:0".parse().unwrap()) }).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for i in 0..600 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(s) => held.push(s),
            Err(e) => panic!("connection {i} not queued: {e}"),
        }
    }
    drop(listener);
}

/// The production listener is one dual-stack socket: IPv6 and IPv4 clients both reach it.
#[test]
fn listens_on_ipv6_and_ipv4() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Port 0 through listen_on: the same socket options as listen(PORT).
        let l = frontdoor::listen_on("[::]:0".parse().unwrap()).unwrap();
        let port = l.local_addr().unwrap().port();
        for addr in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
            let c = tokio::net::TcpStream::connect(&addr);
            let (c, a) = tokio::join!(c, l.accept());
            assert!(c.is_ok() && a.is_ok(), "{addr}: {c:?} {a:?}");
        }
    });
}
