//! Deadlines for peers that stall: a write the peer does not take within `write_stall`, or a
//! connection with no byte moving either way for `idle`, ends with `TimedOut`.
//!
//! A visitor that stops reading would otherwise hold its connection, its stream and its
//! place under the caps forever, and a few thousand of them would fill every cap. Only
//! waiting counts: a slow but steady reader resets the write deadline with every byte it takes.

use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// How long a connection may wait on its peer; `None` waits for ever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StallLimits {
    /// Longest a write may wait for the peer to take bytes.
    pub write_stall: Option<Duration>,
    /// Longest the connection may go with no byte moving either way.
    pub idle: Option<Duration>,
}

fn timed_out(what: &str, limit: Duration) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} for {limit:?}"))
}

/// Runs one write, failing with `TimedOut` if it waits longer than `limit`.
pub async fn write_within<T>(limit: Option<Duration>, write: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    let Some(limit) = limit else { return write.await };
    // Most writes complete at once: only one that waits pays for a timer.
    let mut write = std::pin::pin!(write);
    if let Poll::Ready(done) = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        return done;
    }
    tokio::time::timeout(limit, write).await.unwrap_or_else(|_| Err(timed_out("the peer took no bytes", limit)))
}

/// When a connection last moved a byte, for its idle deadline. Both directions touch it, so
/// it is shared, and an atomic keeps it free of locks.
#[derive(Debug)]
pub struct Idle {
    limit: Option<Duration>,
    start: Instant,
    /// Milliseconds from `start` to the last byte moved.
    last: AtomicU64,
}

impl Idle {
    pub fn new(limit: Option<Duration>) -> Self {
        Self { limit, start: Instant::now(), last: AtomicU64::new(0) }
    }

    /// Records that a byte moved now.
    pub fn touch(&self) {
        if self.limit.is_some() {
            let since_start = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last.store(since_start, Relaxed);
        }
    }

    /// Completes once nothing has moved for the limit; never without one.
    pub async fn expired(&self) -> io::Error {
        let Some(limit) = self.limit else {
            return std::future::pending().await;
        };
        loop {
            let deadline = self.start + Duration::from_millis(self.last.load(Relaxed)) + limit;
            if Instant::now() >= deadline {
                return timed_out("no bytes moved either way", limit);
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Times one wait on a peer: it starts at the first poll that finds nothing and ends with any
/// progress. The timer is allocated at the first wait, as most polls never wait.
#[derive(Default)]
pub struct WaitClock {
    timer: Option<Pin<Box<Sleep>>>,
    running: bool,
}

impl WaitClock {
    /// For a poll that found nothing: whether the wait has now lasted `limit`. Until then the
    /// task is woken when it would.
    pub fn waited_too_long(&mut self, limit: Duration, cx: &mut Context<'_>) -> bool {
        let deadline = Instant::now() + limit;
        let timer = match &mut self.timer {
            Some(timer) if self.running => timer,
            Some(timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.running = timer.as_mut().poll(cx).is_pending();
        !self.running
    }

    /// The peer made progress: the next wait starts afresh.
    pub fn progressed(&mut self) {
        self.running = false;
    }
}

/// An IO whose writes (flushes and shutdown included) fail with `TimedOut` once one has
/// waited longer than its limit for the peer, for connections served by a library (hyper)
/// rather than a splice.
pub struct Stall<IO> {
    io: IO,
    limit: Option<Duration>,
    waiting: WaitClock,
}

impl<IO> Stall<IO> {
    pub fn new(io: IO, write_stall: Option<Duration>) -> Self {
        Self { io, limit: write_stall, waiting: WaitClock::default() }
    }

    /// Passes a write's outcome on; a wait starts the deadline, anything else ends it.
    fn bound<T>(&mut self, polled: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let Some(limit) = self.limit.filter(|_| polled.is_pending()) else {
            self.waiting.progressed();
            return polled;
        };
        if self.waiting.waited_too_long(limit, cx) {
            return Poll::Ready(Err(timed_out("the peer took no bytes", limit)));
        }
        Poll::Pending
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Stall<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Stall<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.bound(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.bound(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.bound(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.bound(polled, cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const LIMIT: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_takes_times_out_after_the_limit() {
        let (near, _far) = tokio::io::duplex(16);
        let mut io = Stall::new(near, Some(LIMIT));
        let started = Instant::now();
        let err = io.write_all(&[0; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_steady_reader_is_never_cut_off() {
        let (near, mut far) = tokio::io::duplex(16);
        let mut io = Stall::new(near, Some(LIMIT));
        let reader = tokio::spawn(async move {
            let mut byte = [0; 16];
            let mut total = 0;
            while total < 160 {
                tokio::time::sleep(LIMIT - Duration::from_secs(1)).await;
                total += far.read(&mut byte).await?;
            }
            io::Result::Ok(total)
        });
        io.write_all(&[0; 160]).await.unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), 160);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_limit_a_write_waits() {
        let (near, _far) = tokio::io::duplex(16);
        let mut io = Stall::new(near, None);
        let waited = tokio::time::timeout(LIMIT * 100, io.write_all(&[0; 64])).await;
        assert!(waited.is_err(), "still waiting");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_expires_after_the_last_touch() {
        let idle = Idle::new(Some(LIMIT));
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        idle.touch();
        let err = idle.expired().await;
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(3) + LIMIT);
        let never = Idle::new(None);
        assert!(tokio::time::timeout(LIMIT * 100, never.expired()).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn write_within_bounds_one_write() {
        let err = write_within(Some(LIMIT), std::future::pending::<io::Result<()>>()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(write_within(Some(LIMIT), async { io::Result::Ok(7) }).await.unwrap(), 7);
    }
}
