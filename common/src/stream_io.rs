//! A link stream's two halves as one byte stream, for protocols (HTTP) that run over it
//! rather than being spliced, with the bytes counted as the splice counts them.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{
    link::{StreamReader, StreamWriter},
    splice::Progress,
};

/// Reads from `recv` and writes to `send`. Bytes written count as `tcp_to_stream` and bytes
/// read as `stream_to_tcp`, whichever end of the tunnel uses it.
pub struct StreamIo<W, R> {
    send: W,
    recv: R,
    progress: Arc<Progress>,
}

impl<W: StreamWriter, R: StreamReader> StreamIo<W, R> {
    pub fn new(send: W, recv: R, progress: Arc<Progress>) -> Self {
        Self { send, recv, progress }
    }
}

impl<W: StreamWriter, R: StreamReader> AsyncRead for StreamIo<W, R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = AsyncRead::poll_read(Pin::new(&mut self.recv), cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.progress.add_stream_to_tcp((buf.filled().len() - before) as u64);
        }
        polled
    }
}

impl<W: StreamWriter, R: StreamReader> AsyncWrite for StreamIo<W, R> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            self.progress.add_tcp_to_stream(written as u64);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}
