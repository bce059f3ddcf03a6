//! The mTLS front door: accept TLS (client certificate required), then splice bytes to dockerd's unix
//! socket. Each direction is pumped separately so a client's half-close (close_notify, or a bare TCP FIN
//! as some clients send) becomes shutdown(SHUT_WR) on the socket, and dockerd can still answer.
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio_rustls::TlsAcceptor;

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_CONNECTIONS: usize = 1024;

/// Server config that can be swapped at runtime (certificates reload without restarting dockerd).
pub type SharedConfig = Arc<RwLock<Arc<rustls::ServerConfig>>>;

pub async fn serve(listener: TcpListener, config: SharedConfig, upstream: PathBuf, log: Arc<dyn Fn(&str) + Send + Sync>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // While dockerd is stopped every connection fails the same way; say so once a minute, not per request.
    let last_complaint = Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
    let last_accept_error = std::sync::Mutex::new(None::<std::time::Instant>);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors (EMFILE) repeats until connections close: say so once a minute.
                complain_once_a_minute(&last_accept_error, || log(&format!("front door: accept: {e}")));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(tcp); // over the limit: refuse rather than queue unbounded
            continue;
        };
        let cfg = match config.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let upstream = upstream.clone();
        let log = log.clone();
        let last_complaint = last_complaint.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(cfg).accept(tcp)).await {
                Ok(Ok(t)) => t,
                // Refusals (no cert, wrong CA, plaintext, too slow) are expected traffic: no console noise.
                Ok(Err(_)) | Err(_) => return,
            };
            let unix = match UnixStream::connect(&upstream).await {
                Ok(u) => u,
                Err(e) => {
                    complain_once_a_minute(&last_complaint, || log(&format!("front door: {peer}: dockerd socket {}: {e} (is docker stopped?)", upstream.display())));
                    return;
                }
            };
            splice(tls, unix).await;
        });
    }
}

/// Run `say` unless it ran less than a minute ago (`last` remembers when).
fn complain_once_a_minute(last: &std::sync::Mutex<Option<std::time::Instant>>, say: impl FnOnce()) {
    if let Ok(mut last) = last.lock() {
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            *last = Some(std::time::Instant::now());
            say();
        }
    }
}

/// Plain TCP to dockerd, no authentication: only for a profile's explicit DOCKER_TLS=no.
pub async fn serve_plain(port: u16, upstream: PathBuf, log: Arc<dyn Fn(&str) + Send + Sync>) {
    let listener = match TcpListener::bind(("0.0.0.0", port)).await {
        Ok(l) => l,
        Err(e) => return log(&format!("ERROR: listen on :{port}: {e}")),
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Ok(unix) = UnixStream::connect(&upstream).await {
                splice(tcp, unix).await;
            }
        });
    }
}

/// Copy both ways until both directions are finished.
pub async fn splice<T: AsyncRead + AsyncWrite + Unpin>(client: T, unix: UnixStream) {
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = unix.into_split();
    let up = async {
        pump(&mut cr, &mut uw).await;
        let _ = uw.shutdown().await; // half-close towards dockerd
    };
    let down = async {
        pump(&mut ur, &mut cw).await;
        let _ = cw.shutdown().await; // close_notify + FIN towards the client
    };
    tokio::join!(up, down);
}

/// Copy until EOF. An EOF without close_notify (UnexpectedEof) counts as a half-close, not an error.
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(r: &mut R, w: &mut W) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
}
