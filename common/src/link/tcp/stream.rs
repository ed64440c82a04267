//! A stream of the TCP link: an HTTP/2 stream's two halves as [`StreamWriter`] and
//! [`StreamReader`]. Data moves as `Bytes` both ways, so chunks cross without a copy, and
//! the reader gives flow-control credit back as the caller takes each chunk: a visitor that
//! stops reading stops its stream's sender, never the link.

use std::{
    future::{Future, poll_fn},
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream, client::ResponseFuture};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{
    StreamCode,
    link::{StreamReader, StreamWriter},
    sync,
};

/// Most bytes asked of the multiplexer for one write; a larger chunk goes in pieces.
const MAX_WRITE: usize = 256 * 1024;

/// Datagram bytes the link stream may have queued unsent: past this, datagrams are dropped
/// rather than wait behind a backed-up link.
const DATAGRAM_ROOM: usize = 64 * 1024;

/// Both halves reset through the stream's sending side: HTTP/2 has one reset for both
/// directions, where QUIC has one per direction.
type Shared = Arc<Mutex<SendStream<Bytes>>>;

pub struct TcpWriter {
    send: Shared,
    finished: bool,
}

pub struct TcpReader {
    state: Receiving,
    /// What the last chunk left unread by a small `poll_read`.
    rest: Bytes,
    send: Shared,
    id: u64,
}

enum Receiving {
    /// A stream this end opened: its data comes once the peer has accepted it.
    Accepting(ResponseFuture),
    Open(RecvStream),
}

/// The halves of a stream this end opened.
pub(super) fn opened(send: SendStream<Bytes>, response: ResponseFuture) -> (TcpWriter, TcpReader) {
    halves(send, Receiving::Accepting(response))
}

/// The halves of a stream the peer opened.
pub(super) fn accepted(send: SendStream<Bytes>, recv: RecvStream) -> (TcpWriter, TcpReader) {
    halves(send, Receiving::Open(recv))
}

fn halves(send: SendStream<Bytes>, state: Receiving) -> (TcpWriter, TcpReader) {
    let id = u64::from(u32::from(send.stream_id()));
    let send = Arc::new(Mutex::new(send));
    (TcpWriter { send: send.clone(), finished: false }, TcpReader { state, rest: Bytes::new(), send, id })
}

/// Waits until the multiplexer takes at least one of `want` bytes, and says how many.
fn poll_room(send: &mut SendStream<Bytes>, want: usize, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    let want = want.min(MAX_WRITE);
    send.reserve_capacity(want);
    loop {
        let room = send.capacity();
        if room > 0 {
            return Poll::Ready(Ok(room.min(want)));
        }
        match ready!(send.poll_capacity(cx)) {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            // The stream can no longer send: the peer reset it, or the link ended.
            None => {
                return Poll::Ready(Err(match send.poll_reset(cx) {
                    Poll::Ready(Ok(reason)) => reset_error(reason),
                    Poll::Ready(Err(e)) => io_error(e),
                    Poll::Pending => io::Error::new(io::ErrorKind::BrokenPipe, "stream closed"),
                }));
            }
        }
    }
}

impl TcpWriter {
    /// Queues `frame` whole if the link has room for it now; drops it otherwise. Room is
    /// asked for ahead ([`DATAGRAM_ROOM`]), since the multiplexer grants it in its own task.
    pub(super) fn offer(&mut self, frame: Bytes) -> bool {
        let mut send = sync::lock(&self.send);
        let sent = send.capacity() >= frame.len() && send.send_data(frame, false).is_ok();
        send.reserve_capacity(DATAGRAM_ROOM);
        sent
    }

    /// Asks for room for datagrams before the first is sent.
    pub(super) fn expect_datagrams(&mut self) {
        sync::lock(&self.send).reserve_capacity(DATAGRAM_ROOM);
    }

    /// Queues `frame` whatever the room, as the stream's last.
    pub(super) fn send_last(&mut self, frame: Bytes) {
        if !std::mem::replace(&mut self.finished, true) {
            sync::lock(&self.send).send_data(frame, true).ok();
        }
    }

    fn end(&mut self) -> io::Result<()> {
        if !std::mem::replace(&mut self.finished, true) {
            sync::lock(&self.send).send_data(Bytes::new(), true).map_err(io_error)?;
        }
        Ok(())
    }
}

impl AsyncWrite for TcpWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut send = sync::lock(&self.send);
        let room = ready!(poll_room(&mut send, buf.len(), cx))?;
        send.send_data(Bytes::copy_from_slice(&buf[..room]), false).map_err(io_error)?;
        Poll::Ready(Ok(room))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The multiplexer's connection task writes whatever is queued as soon as it can.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().end())
    }
}

impl StreamWriter for TcpWriter {
    async fn write_chunk(&mut self, mut chunk: Bytes) -> io::Result<()> {
        while !chunk.is_empty() {
            let room = poll_fn(|cx| poll_room(&mut sync::lock(&self.send), chunk.len(), cx)).await?;
            sync::lock(&self.send).send_data(chunk.split_to(room), false).map_err(io_error)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        self.end()
    }

    fn abort(&mut self, code: StreamCode) {
        sync::lock(&self.send).send_reset(reason(code));
    }

    async fn delivered(&mut self) {
        // What is written goes out on one TCP connection in order, ahead of anything sent
        // later (a close included), and the link lingers on close until the peer has read.
    }
}

impl TcpReader {
    /// The next chunk that arrived, `None` at the end of the stream.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !self.rest.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.rest))));
        }
        loop {
            match &mut self.state {
                Receiving::Accepting(response) => {
                    let response = ready!(Pin::new(response).poll(cx)).map_err(io_error)?;
                    self.state = Receiving::Open(response.into_body());
                }
                Receiving::Open(recv) => {
                    return match ready!(recv.poll_data(cx)) {
                        None => Poll::Ready(Ok(None)),
                        Some(Err(e)) => Poll::Ready(Err(io_error(e))),
                        Some(Ok(chunk)) if chunk.is_empty() => continue,
                        Some(Ok(chunk)) => {
                            // Credit goes back as the caller takes data, so the window paces
                            // the sender to the reader.
                            recv.flow_control().release_capacity(chunk.len()).map_err(io_error)?;
                            Poll::Ready(Ok(Some(chunk)))
                        }
                    };
                }
            }
        }
    }
}

impl AsyncRead for TcpReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(mut chunk) = ready!(this.poll_chunk(cx))? else {
            return Poll::Ready(Ok(()));
        };
        let take = chunk.len().min(buf.remaining());
        buf.put_slice(&chunk.split_to(take));
        this.rest = chunk;
        Poll::Ready(Ok(()))
    }
}

impl StreamReader for TcpReader {
    async fn read_chunks(&mut self, chunks: &mut [Bytes]) -> io::Result<Option<usize>> {
        if chunks.is_empty() {
            return Ok(Some(0));
        }
        match poll_fn(|cx| self.poll_chunk(cx)).await? {
            Some(chunk) => {
                chunks[0] = chunk;
                Ok(Some(1))
            }
            None => Ok(None),
        }
    }

    fn abort(&mut self, code: StreamCode) {
        sync::lock(&self.send).send_reset(reason(code));
    }

    fn stream_id(&self) -> u64 {
        self.id
    }
}

fn reason(code: StreamCode) -> Reason {
    // Our codes are small varints; HTTP/2 carries 32 bits.
    Reason::from(u32::try_from(code.code().into_inner()).unwrap_or(u32::MAX))
}

fn reset_error(reason: Reason) -> io::Error {
    let code = u64::from(u32::from(reason));
    let why = match StreamCode::from_code(quinn::VarInt::from_u32(u32::from(reason))) {
        Some(code) => code.describe().to_string(),
        None => format!("code {code}"),
    };
    io::Error::new(io::ErrorKind::ConnectionReset, format!("stream reset by peer: {why}"))
}

/// An HTTP/2 error as the error a QUIC stream would give in its place.
pub(super) fn io_error(e: h2::Error) -> io::Error {
    if e.is_reset() && e.is_remote() {
        return reset_error(e.reason().unwrap_or(Reason::CANCEL));
    }
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::Error::other("link lost"));
    }
    io::Error::new(io::ErrorKind::NotConnected, e)
}
