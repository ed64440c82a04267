//! What a TCP link has carried, counted where the multiplexer meets the TLS stream: the
//! link's byte counts and the moment the peer was last heard, for its idle timeout and for
//! the relay's liveness probe.

use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug)]
pub(super) struct Counters {
    started: Instant,
    pub(super) sent_bytes: AtomicU64,
    pub(super) received_bytes: AtomicU64,
    pub(super) writes: AtomicU64,
    /// Reads that brought bytes: the transport's "packets received".
    pub(super) reads: AtomicU64,
    /// Milliseconds from `started` to the last read that brought bytes.
    last_heard_ms: AtomicU64,
}

impl Counters {
    pub(super) fn new() -> Self {
        Self {
            started: Instant::now(),
            sent_bytes: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            last_heard_ms: AtomicU64::new(0),
        }
    }

    /// How long the peer has been silent.
    pub(super) fn silent_for(&self) -> Duration {
        let heard = Duration::from_millis(self.last_heard_ms.load(Relaxed));
        self.started.elapsed().saturating_sub(heard)
    }

    fn heard(&self, bytes: usize) {
        self.received_bytes.fetch_add(bytes as u64, Relaxed);
        self.reads.fetch_add(1, Relaxed);
        self.last_heard_ms.store(self.started.elapsed().as_millis() as u64, Relaxed);
    }
}

/// An I/O stream whose traffic goes to [`Counters`].
pub(super) struct Counted<T> {
    pub(super) inner: T,
    pub(super) counters: std::sync::Arc<Counters>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.counters.heard(read);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            self.count_written(written);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(written)) = polled {
            self.count_written(written);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T> Counted<T> {
    fn count_written(&self, written: usize) {
        self.counters.sent_bytes.fetch_add(written as u64, Relaxed);
        self.counters.writes.fetch_add(1, Relaxed);
    }
}
