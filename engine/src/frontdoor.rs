//! The mTLS front door: accept TLS (client certificate required), then splice bytes to dockerd's unix
//! socket. Each direction is pumped separately so a client's half-close (close_notify, or a bare TCP FIN
//! as some clients send) becomes shutdown(SHUT_WR) on the socket, and dockerd can still answer.
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio_rustls::TlsAcceptor;

/// A handshake is dropped when the client sends nothing for this long (a slowloris) ...
pub const HANDSHAKE_IDLE: Duration = Duration::from_secs(10);
/// ... or when it is not done after this long in all (a client that trickles a byte now and then).
/// The limit is on the client's silence, not the handshake's length: a busy machine doing hundreds of
/// handshakes at once is slow on its own side, and its clients must not be cut off for that.
pub const HANDSHAKE_TOTAL: Duration = Duration::from_secs(60);
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections the kernel completes and queues until we accept them (the kernel caps it at somaxconn,
/// 4096). tokio's and std's `bind` ask for 128: a burst of 200 clients against a busy guest overflowed
/// that, and the overflow showed up as clients cut off mid-handshake. Deep enough for a full second
/// round of MAX_CONNECTIONS waiting at the limit.
pub const BACKLOG: u32 = 4096;

/// Listen on every IPv6 and IPv4 address of `port` (one dual-stack socket on `[::]`; IPv4 clients arrive
/// as `::ffff:a.b.c.d`), with the deep backlog. A kernel without IPv6 gets `0.0.0.0` instead.
pub fn listen(port: u16) -> std::io::Result<TcpListener> {
    match listen_on(std::net::SocketAddr::from(([0u16; 8], port))) {
        Ok(l) => Ok(l),
        Err(_) => listen_on(std::net::SocketAddr::from(([0, 0, 0, 0], port))),
    }
}

pub fn listen_on(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let s = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    if addr.is_ipv6() {
        // Dual stack explicitly, whatever net.ipv6.bindv6only says.
        rustix::net::sockopt::set_ipv6_v6only(&s, false)?;
    }
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(BACKLOG)
}

/// Server config that can be swapped at runtime (certificates reload without restarting dockerd).
pub type SharedConfig = Arc<RwLock<Arc<rustls::ServerConfig>>>;

pub async fn serve(listener: TcpListener, config: SharedConfig, upstream: PathBuf, log: Arc<dyn Fn(&str) + Send + Sync>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // While dockerd is stopped every connection fails the same way; say so once a minute, not per request.
    let last_complaint = Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
    let last_accept_error = std::sync::Mutex::new(None::<std::time::Instant>);
    let last_full = std::sync::Mutex::new(None::<std::time::Instant>);
    let tally = Arc::new(Tally::default());
    let _report = {
        let (tally, log) = (tally.clone(), log.clone());
        AbortOnDrop(tokio::spawn(async move {
            let mut minute = tokio::time::interval(Duration::from_secs(60));
            loop {
                minute.tick().await;
                if let Some(line) = tally.take() {
                    log(&format!("front door, last minute: {line}"));
                }
            }
        }))
    };
    loop {
        // A slot first, then accept: at the limit, new clients wait in the kernel's listen backlog until a
        // connection ends (they see a slow answer, not a closed connection; the backlog bounds the queue).
        if slots.available_permits() == 0 {
            complain_once_a_minute(&last_full, || log(&format!("front door: all {MAX_CONNECTIONS} connections in use; new clients wait")));
        }
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors (EMFILE) repeats until connections close: say so once a minute.
                complain_once_a_minute(&last_accept_error, || log(&format!("front door: accept: {e}")));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let cfg = match config.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let upstream = upstream.clone();
        let log = log.clone();
        let last_complaint = last_complaint.clone();
        let tally = tally.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let tcp = crate::readahead::ReadAhead::new(tcp);
            let tls = match handshake(TlsAcceptor::from(cfg), tcp, HANDSHAKE_IDLE, HANDSHAKE_TOTAL).await {
                Ok(t) => t,
                Err(r) => return tally.count(&r),
            };
            let unix = match UnixStream::connect(&upstream).await {
                Ok(u) => u,
                Err(e) => {
                    complain_once_a_minute(&last_complaint, || {
                        log(&format!("front door: {peer}: dockerd socket {}: {e} (is docker stopped?)", upstream.display()))
                    });
                    return;
                }
            };
            splice(tls, unix).await;
        });
    }
}

/// A stream that notes when it last received bytes (milliseconds since `start`).
struct Progress<S> {
    inner: S,
    start: tokio::time::Instant,
    last_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Progress<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last_ms.store(self.start.elapsed().as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Progress<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        b: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why a handshake did not finish.
#[derive(Debug)]
pub enum Refused {
    /// The client sent nothing for the idle limit.
    Silent,
    /// The handshake was not done within the total limit.
    TooLong,
    /// TLS said no (no or wrong certificate, old protocol, not TLS at all) or the connection broke.
    Tls(std::io::Error),
}

/// The TLS handshake, given up when the client is silent for `idle` or it takes `total` in all.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: TlsAcceptor,
    tcp: S,
    idle: Duration,
    total: Duration,
) -> Result<tokio_rustls::server::TlsStream<impl AsyncRead + AsyncWrite + Unpin>, Refused> {
    let start = tokio::time::Instant::now();
    let last_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut accept = std::pin::pin!(acceptor.accept(Progress { inner: tcp, start, last_ms: last_ms.clone() }));
    loop {
        let last = start + Duration::from_millis(last_ms.load(std::sync::atomic::Ordering::Relaxed));
        let deadline = (last + idle).min(start + total);
        if tokio::time::Instant::now() >= deadline {
            return Err(if deadline >= start + total { Refused::TooLong } else { Refused::Silent });
        }
        tokio::select! {
            // Handshake first: after a stall of this task, bytes that arrived meanwhile count before the timer.
            biased;
            r = &mut accept => return r.map_err(Refused::Tls),
            // Bytes may have come while we slept: the deadline is worked out again.
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Refused handshakes, counted and reported once a minute: each one is expected traffic (scanners,
/// wrong certificates), but a sudden count is how a cut-off client can be explained afterwards.
#[derive(Default)]
pub struct Tally {
    silent: std::sync::atomic::AtomicU64,
    too_long: std::sync::atomic::AtomicU64,
    tls: std::sync::atomic::AtomicU64,
    example: std::sync::Mutex<Option<String>>,
}

impl Tally {
    pub fn count(&self, r: &Refused) {
        use std::sync::atomic::Ordering::Relaxed;
        match r {
            Refused::Silent => self.silent.fetch_add(1, Relaxed),
            Refused::TooLong => self.too_long.fetch_add(1, Relaxed),
            Refused::Tls(e) => {
                if let Ok(mut x) = self.example.lock() {
                    x.get_or_insert_with(|| e.to_string());
                }
                self.tls.fetch_add(1, Relaxed)
            }
        };
    }

    /// The counts since the last call as one line, or None when nothing was refused.
    pub fn take(&self) -> Option<String> {
        use std::sync::atomic::Ordering::Relaxed;
        let (s, l, t) = (self.silent.swap(0, Relaxed), self.too_long.swap(0, Relaxed), self.tls.swap(0, Relaxed));
        let example = self.example.lock().ok().and_then(|mut x| x.take()).map(|e| format!(" (e.g. {e})")).unwrap_or_default();
        (s + l + t > 0).then(|| {
            format!(
                "{} handshake(s) refused: {s} silent for {}s, {l} not done in {}s, {t} TLS error(s){example}",
                s + l + t,
                HANDSHAKE_IDLE.as_secs(),
                HANDSHAKE_TOTAL.as_secs()
            )
        })
    }
}

/// Stops a background task when its owner goes (the front door's reporter ends with the front door).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
    let listener = match listen(port) {
        Ok(l) => l,
        Err(e) => return log(&format!("ERROR: listen on :{port}: {e}")),
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Ok(unix) = UnixStream::connect(&upstream).await {
                splice(tcp, unix).await;
            }
        });
    }
}

/// The lowest API version dockerd 26 accepts (it cannot be lowered: DOCKER_MIN_API_VERSION only raises it).
pub const API_FLOOR: &[u8; 2] = b"24";

/// docker-machine v0.16's `ls` and `upgrade` ask `GET /v1.15/version`, which dockerd 26 refuses. Only that
/// read-only request, with a version from 1.12 to 1.23, is raised to 1.24 (two digits for two, so no other
/// byte of the stream moves); the answer's fields are the same. Returns whether the line was changed.
pub fn raise_legacy_version(line: &mut [u8]) -> bool {
    const PREFIX: &[u8] = b"GET /v1.";
    let Some(rest) = line.strip_prefix(PREFIX) else { return false };
    let (Some(digits), Some(path)) = (rest.get(..2), rest.get(2..)) else { return false };
    let minor = std::str::from_utf8(digits).ok().filter(|d| d.bytes().all(|b| b.is_ascii_digit())).and_then(|d| d.parse::<u8>().ok());
    if !minor.is_some_and(|m| (12..24).contains(&m)) || !(path.starts_with(b"/version ") || path.starts_with(b"/version?")) {
        return false;
    }
    line[PREFIX.len()..PREFIX.len() + 2].copy_from_slice(API_FLOOR);
    true
}

/// Copy both ways until both directions are finished. The client's first line is read whole first and
/// passed through raise_legacy_version.
pub async fn splice<T: AsyncRead + AsyncWrite + Unpin>(client: T, unix: UnixStream) {
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = unix.into_split();
    let up = async {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.contains(&b'\n') && head.len() < 4096 {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        if let Some(end) = head.iter().position(|&b| b == b'\n') {
            raise_legacy_version(&mut head[..end]);
        }
        if !head.is_empty() && (uw.write_all(&head).await.is_err() || uw.flush().await.is_err()) {
            return;
        }
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
    let mut buf = vec![0u8; PUMP_BUF];
    loop {
        let n = match gather(r, &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
}

/// What one write to the other side carries at most: four TLS records.
const PUMP_BUF: usize = 64 * 1024;

/// Read what is available now into `buf`, waiting only for the first bytes. A TLS stream hands out one
/// record (16 KiB at most) per read; gathering the records already received makes one write, and one
/// wake-up of dockerd, out of several (a `docker load` through the front door spent its time there).
async fn gather<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::task::Poll;
    std::future::poll_fn(|cx| {
        let mut out = tokio::io::ReadBuf::new(buf);
        loop {
            let before = out.filled().len();
            match std::pin::Pin::new(&mut *r).poll_read(cx, &mut out) {
                // EOF, a full buffer: hand on what there is (EOF comes again on the next read).
                Poll::Ready(Ok(())) if out.filled().len() == before || out.remaining() == 0 => break,
                Poll::Ready(Ok(())) => {}
                // An error or nothing more yet: the bytes gathered so far go first.
                Poll::Ready(Err(e)) if before == 0 => return Poll::Ready(Err(e)),
                Poll::Pending if before == 0 => return Poll::Pending,
                Poll::Ready(Err(_)) | Poll::Pending => break,
            }
        }
        Poll::Ready(Ok(out.filled().len()))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_docker_machines_old_version_request_is_raised() {
        for (before, after) in [
            ("GET /v1.15/version HTTP/1.1\r", "GET /v1.24/version HTTP/1.1\r"),
            ("GET /v1.12/version?x=1 HTTP/1.1\r", "GET /v1.24/version?x=1 HTTP/1.1\r"),
            ("GET /v1.23/version HTTP/1.1\r", "GET /v1.24/version HTTP/1.1\r"),
        ] {
            let mut l = before.as_bytes().to_vec();
            assert!(raise_legacy_version(&mut l), "{before}");
            assert_eq!(l, after.as_bytes());
        }
        for same in [
            "GET /v1.24/version HTTP/1.1",
            "GET /v1.45/version HTTP/1.1",
            "GET /v1.11/version HTTP/1.1",
            "GET /v1.15/containers/json HTTP/1.1",
            "POST /v1.15/version HTTP/1.1",
            "GET /v1.15/versions HTTP/1.1",
            "GET /v1.1x/version HTTP/1.1",
            "GET /version HTTP/1.1",
            "GET /v1.",
        ] {
            let mut l = same.as_bytes().to_vec();
            assert!(!raise_legacy_version(&mut l), "{same}");
            assert_eq!(l, same.as_bytes());
        }
    }

    /// A reader that hands out at most one "record" per read, then has nothing more for now.
    struct Records {
        queued: Vec<Vec<u8>>,
    }

    impl AsyncRead for Records {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            out: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.queued.is_empty() {
                return std::task::Poll::Pending;
            }
            let r = self.queued.remove(0);
            out.put_slice(&r);
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn gather_takes_every_record_already_received_up_to_the_buffer() {
        let mut r = Records { queued: (0..6u8).map(|i| vec![i; 16 * 1024]).collect() };
        let mut buf = vec![0u8; PUMP_BUF];
        assert_eq!(gather(&mut r, &mut buf).await.unwrap(), 64 * 1024, "four records in one piece");
        assert!(buf[..16 * 1024].iter().all(|&b| b == 0) && buf[48 * 1024..].iter().all(|&b| b == 3));
        assert_eq!(gather(&mut r, &mut buf).await.unwrap(), 32 * 1024, "the two left; nothing more yet");
        assert!(buf[..32 * 1024].iter().all(|&b| b == 4 || b == 5));
        let mut eof: &[u8] = b"";
        assert_eq!(gather(&mut eof, &mut buf).await.unwrap(), 0, "EOF");
    }

    /// Through the real splice: the first request is raised, the body and later bytes pass untouched,
    /// and the client's EOF still reaches the socket as a half-close.
    #[tokio::test(flavor = "multi_thread")]
    async fn splice_raises_the_first_line_only() {
        let (client, mut far) = tokio::io::duplex(64 * 1024);
        let (unix, mut daemon) = UnixStream::pair().unwrap();
        let task = tokio::spawn(splice(client, unix));
        far.write_all(b"GET /v1.15/vers").await.unwrap();
        far.write_all(b"ion HTTP/1.1\r\nHost: d\r\n\r\nGET /v1.15/version HTTP/1.1\r\n\r\n").await.unwrap();
        far.shutdown().await.unwrap();
        let mut got = Vec::new();
        daemon.read_to_end(&mut got).await.unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), "GET /v1.24/version HTTP/1.1\r\nHost: d\r\n\r\nGET /v1.15/version HTTP/1.1\r\n\r\n");
        daemon.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        daemon.shutdown().await.unwrap();
        let mut answer = Vec::new();
        far.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"HTTP/1.1 200 OK\r\n\r\n");
        task.await.unwrap();
    }
}
