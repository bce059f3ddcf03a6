//! Larger reads from the client's socket during bulk uploads. rustls asks its transport for 4 KiB at a
//! time, so a `docker load` through the front door cost four `recvfrom` calls (and as many trips
//! through the runtime) per 16 KiB TLS record; dockerd's own TLS reads a record or more at once. A
//! read that fills rustls's whole request is a sign more is queued: the next reads go through a buffer
//! of READ_AHEAD bytes, which is dropped again once a fill comes back small, so an idle or interactive
//! connection holds no buffer at all.
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The buffer for bulk reads: four full TLS records.
pub const READ_AHEAD: usize = 64 * 1024;

pub struct ReadAhead<S> {
    inner: S,
    buf: Vec<u8>,
    /// The unread bytes are buf[lo..hi].
    lo: usize,
    hi: usize,
    /// Drop the buffer once it is drained.
    release: bool,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        ReadAhead { inner, buf: Vec::new(), lo: 0, hi: 0, release: false }
    }

    /// Whether a buffer is held (for tests).
    pub fn buffering(&self) -> bool {
        !self.buf.is_empty()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.lo == this.hi {
            let wanted = out.remaining();
            if this.buf.is_empty() || wanted >= READ_AHEAD {
                // Straight into the caller's buffer; a full answer asks for the buffer next time.
                let before = out.filled().len();
                let r = Pin::new(&mut this.inner).poll_read(cx, out);
                if matches!(r, Poll::Ready(Ok(()))) && wanted > 0 && wanted < READ_AHEAD && out.filled().len() - before == wanted {
                    this.buf = vec![0; READ_AHEAD];
                }
                return r;
            }
            let mut fill = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut fill) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            this.hi = fill.filled().len();
            // A small fill: the sender has slowed down; back to direct reads once these are handed on.
            this.release = this.hi < READ_AHEAD / 2;
        }
        let take = out.remaining().min(this.hi - this.lo);
        out.put_slice(&this.buf[this.lo..this.lo + take]);
        this.lo += take;
        if this.lo == this.hi {
            (this.lo, this.hi) = (0, 0);
            if this.release {
                this.buf = Vec::new();
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, b)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A socket stand-in: `data` is what the kernel has queued; counts the reads asked of it.
    struct Queued {
        data: Vec<u8>,
        at: usize,
        reads: usize,
    }

    impl AsyncRead for Queued {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
            self.reads += 1;
            let n = out.remaining().min(self.data.len() - self.at);
            let at = self.at;
            out.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_bulk_upload_is_read_in_large_pieces_and_arrives_whole() {
        let data: Vec<u8> = (0..1usize << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
        let mut r = ReadAhead::new(Queued { data: data.clone(), at: 0, reads: 0 });
        let mut got = Vec::new();
        let mut piece = [0u8; 4096]; // what rustls asks for
        loop {
            let n = r.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
        }
        assert!(got == data, "the bytes arrive whole and in order");
        // One direct read, then 16 fills of 64 KiB and the EOF, instead of 256 reads of 4 KiB.
        assert!(r.inner.reads <= 20, "{} reads from the socket", r.inner.reads);
        assert!(!r.buffering(), "the EOF's empty fill releases the buffer");
    }

    #[tokio::test]
    async fn a_slow_sender_leaves_no_buffer_behind() {
        let (mut far, near) = tokio::io::duplex(1 << 20);
        let mut r = ReadAhead::new(near);
        far.write_all(&[1u8; 8192]).await.unwrap();
        let mut piece = [0u8; 4096];
        assert_eq!(r.read(&mut piece).await.unwrap(), 4096);
        assert!(r.buffering(), "a full read asks for the buffer");
        assert_eq!(r.read(&mut piece).await.unwrap(), 4096, "the rest, through the buffer");
        assert!(!r.buffering(), "a small fill, drained: the buffer is dropped");
        far.write_all(b"ping").await.unwrap();
        assert_eq!(r.read(&mut piece).await.unwrap(), 4);
        assert!(!r.buffering());
        assert_eq!(&piece[..4], b"ping");
    }
}
