//! Carrying bytes between a TCP connection and a link's stream, with both ends' closes mapped.
//!
//! A TCP FIN becomes a stream finish and back. An error on either side must not look like a
//! clean end, so it becomes a stream reset on the link's side and an RST (zero linger) on the
//! TCP side.
//!
//! Chunks read from the stream are written to TCP as they are (gathered into one writev), and
//! TCP reads go through a per-thread scratch buffer into exactly-sized chunks. No buffer is
//! held while a connection is idle, so a thousand quiet visitors cost almost nothing.
//!
//! A [`Progress`] passed in counts the bytes as they move, so dashboards can show a long
//! transfer while it runs instead of at its end.
//!
//! [`StallLimits`] bound how long the TCP side may stall a write or stay quiet; past them the
//! splice fails with `TimedOut`, and both ends are aborted as for any other error.

use std::{
    io::IoSlice,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncWriteExt, ReadBuf},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use crate::{
    StreamCode,
    deadline::{Idle, StallLimits, write_within},
    link::{StreamReader, StreamWriter},
};

/// Most bytes taken from TCP in one read.
pub const READ_CHUNK: usize = 64 * 1024;

/// Bytes moved: `tcp_to_stream` then `stream_to_tcp`.
pub type Moved = (u64, u64);

/// Bytes a splice has moved so far, readable by others while it runs.
///
/// Each chunk is counted just before it is written on, so a peer that has received a byte
/// finds it counted. Relaxed ordering is enough: readers want a recent figure, not a
/// synchronisation point, and a splice's own totals come back from [`splice`].
#[derive(Debug, Default)]
pub struct Progress {
    tcp_to_stream: AtomicU64,
    stream_to_tcp: AtomicU64,
}

impl Progress {
    /// Bytes moved so far: `tcp_to_stream` then `stream_to_tcp`.
    pub fn moved(&self) -> Moved {
        (self.tcp_to_stream.load(Relaxed), self.stream_to_tcp.load(Relaxed))
    }

    pub fn add_tcp_to_stream(&self, bytes: u64) {
        self.tcp_to_stream.fetch_add(bytes, Relaxed);
    }

    pub fn add_stream_to_tcp(&self, bytes: u64) {
        self.stream_to_tcp.fetch_add(bytes, Relaxed);
    }
}

/// Splices `tcp` with the stream until both directions have ended, counting into `progress`
/// as it goes. On success `progress` has grown by exactly the totals returned. The TCP side
/// is held to `limits`.
pub async fn splice<W: StreamWriter, R: StreamReader>(
    tcp: TcpStream,
    mut send: W,
    mut recv: R,
    progress: &Progress,
    limits: StallLimits,
) -> std::io::Result<Moved> {
    // Small writes (keystrokes, requests) must not wait for Nagle's algorithm.
    tcp.set_nodelay(true).ok();
    let (mut tcp_read, mut tcp_write) = tcp.into_split();
    let idle = Idle::new(limits.idle);
    let both_ways = async {
        tokio::try_join!(
            tcp_to_stream(&mut tcp_read, &mut send, progress, &idle),
            stream_to_tcp(&mut recv, &mut tcp_write, progress, (limits.write_stall, &idle))
        )
    };
    let moved = tokio::select! {
        moved = both_ways => moved,
        quiet = idle.expired() => Err(quiet),
    };
    if moved.is_err() {
        abort_stream(&mut send, &mut recv, StreamCode::Aborted);
        abort_halves(tcp_read, tcp_write);
    }
    moved
}

async fn tcp_to_stream<W: StreamWriter>(
    tcp: &mut OwnedReadHalf,
    send: &mut W,
    progress: &Progress,
    idle: &Idle,
) -> std::io::Result<u64> {
    let mut total = 0;
    loop {
        let chunk = std::future::poll_fn(|cx| read_chunk(tcp, cx)).await?;
        idle.touch();
        if chunk.is_empty() {
            send.finish()?;
            return Ok(total);
        }
        total += chunk.len() as u64;
        progress.add_tcp_to_stream(chunk.len() as u64);
        send.write_chunk(chunk).await?;
    }
}

/// One TCP read, through the thread's scratch buffer into a chunk of exactly the bytes read.
/// The read completes within one poll, so one scratch buffer per thread serves every
/// connection and an idle visitor holds none. It goes through `AsyncRead` rather than
/// `try_read`: tokio then takes a short read as the socket drained and waits for the next
/// readiness, where `try_read` spends a second system call to learn `WouldBlock` after every
/// read that drains the socket, as each request-sized read does.
fn read_chunk(tcp: &mut OwnedReadHalf, cx: &mut Context<'_>) -> Poll<std::io::Result<Bytes>> {
    SCRATCH.with_borrow_mut(|scratch| {
        let mut buf = ReadBuf::new(scratch);
        ready!(Pin::new(tcp).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(Bytes::copy_from_slice(buf.filled())))
    })
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

async fn stream_to_tcp<R: StreamReader>(
    recv: &mut R,
    tcp: &mut OwnedWriteHalf,
    progress: &Progress,
    (write_stall, idle): (Option<std::time::Duration>, &Idle),
) -> std::io::Result<u64> {
    let mut total = 0;
    // Each chunk is about one transport frame; gathering many into one writev keeps the number of
    // system calls per byte close to that of a plain copy loop.
    let mut chunks: [Bytes; WRITE_BATCH] = std::array::from_fn(|_| Bytes::new());
    while let Some(count) = recv.read_chunks(&mut chunks).await? {
        let batch = chunks[..count].iter().map(|c| c.len() as u64).sum::<u64>();
        total += batch;
        progress.add_stream_to_tcp(batch);
        write_all_vectored(tcp, &mut chunks[..count], write_stall, idle).await?;
        // Written chunks still reference quinn's receive buffers; let them go before waiting.
        chunks[..count].fill_with(Bytes::new);
    }
    tcp.shutdown().await?;
    Ok(total)
}

/// Chunks gathered into one TCP write.
const WRITE_BATCH: usize = 32;

/// Writes every chunk; each write may wait `write_stall` for the peer, so a slow reader that
/// keeps taking bytes is never cut off.
async fn write_all_vectored(
    tcp: &mut OwnedWriteHalf,
    mut chunks: &mut [Bytes],
    write_stall: Option<std::time::Duration>,
    idle: &Idle,
) -> std::io::Result<()> {
    while !chunks.is_empty() {
        let slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
        let mut written = write_within(write_stall, tcp.write_vectored(&slices)).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        idle.touch();
        while let Some(first) = chunks.first_mut() {
            if written < first.len() {
                bytes::Buf::advance(first, written);
                break;
            }
            written -= first.len();
            chunks = &mut chunks[1..];
        }
    }
    Ok(())
}

/// Ends both halves of a stream with `code`; the peer sees a reset, not a clean EOF.
pub fn abort_stream(send: &mut impl StreamWriter, recv: &mut impl StreamReader, code: StreamCode) {
    send.abort(code);
    recv.abort(code);
}

/// Drops a TCP connection with an RST, so the peer sees an abort instead of a clean FIN.
pub fn abort_tcp(tcp: TcpStream) {
    if let Err(e) = tcp.set_zero_linger() {
        tracing::debug!("set_zero_linger failed: {e}");
    }
}

fn abort_halves(read: OwnedReadHalf, write: OwnedWriteHalf) {
    // Reuniting stops the write half from sending a FIN when dropped, so the close is a bare RST.
    match read.reunite(write) {
        Ok(tcp) => abort_tcp(tcp),
        Err(e) => tracing::debug!("cannot reunite TCP halves: {e}"),
    }
}
