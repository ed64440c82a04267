//! A link of either transport, for code that holds QUIC and TCP links side by side (a
//! relay's sessions, an agent that falls back to TCP).

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{
    DatagramError, Link, LinkError, LinkStatus, PathStats, QuicLink, StreamReader, StreamWriter, TcpLink, TcpReader,
    TcpWriter,
};
use crate::{CloseCode, StreamCode};

/// Which transport carries a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Quic,
    Tcp,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Quic => "QUIC",
            Transport::Tcp => "TCP",
        })
    }
}

#[derive(Clone)]
pub enum AnyLink {
    Quic(QuicLink),
    Tcp(TcpLink),
}

pub enum AnyWriter {
    Quic(quinn::SendStream),
    Tcp(TcpWriter),
}

pub enum AnyReader {
    Quic(quinn::RecvStream),
    Tcp(TcpReader),
}

impl AnyLink {
    pub fn transport(&self) -> Transport {
        match self {
            AnyLink::Quic(_) => Transport::Quic,
            AnyLink::Tcp(_) => Transport::Tcp,
        }
    }
}

impl From<QuicLink> for AnyLink {
    fn from(link: QuicLink) -> Self {
        AnyLink::Quic(link)
    }
}

impl From<TcpLink> for AnyLink {
    fn from(link: TcpLink) -> Self {
        AnyLink::Tcp(link)
    }
}

/// Calls the same method on whichever link or half is inside.
macro_rules! either {
    ($value:expr, $inner:ident => $call:expr) => {
        match $value {
            AnyLink::Quic($inner) => $call,
            AnyLink::Tcp($inner) => $call,
        }
    };
}

macro_rules! either_half {
    ($kind:ident, $value:expr, $inner:ident => $call:expr) => {
        match $value {
            $kind::Quic($inner) => $call,
            $kind::Tcp($inner) => $call,
        }
    };
}

impl Link for AnyLink {
    type Writer = AnyWriter;
    type Reader = AnyReader;

    async fn open(&self) -> Result<(AnyWriter, AnyReader), LinkError> {
        Ok(match self {
            AnyLink::Quic(link) => link.open().await.map(|(w, r)| (AnyWriter::Quic(w), AnyReader::Quic(r)))?,
            AnyLink::Tcp(link) => link.open().await.map(|(w, r)| (AnyWriter::Tcp(w), AnyReader::Tcp(r)))?,
        })
    }

    async fn accept(&self) -> Result<(AnyWriter, AnyReader), LinkError> {
        Ok(match self {
            AnyLink::Quic(link) => link.accept().await.map(|(w, r)| (AnyWriter::Quic(w), AnyReader::Quic(r)))?,
            AnyLink::Tcp(link) => link.accept().await.map(|(w, r)| (AnyWriter::Tcp(w), AnyReader::Tcp(r)))?,
        })
    }

    fn allow_streams(&self, count: u32) {
        either!(self, link => link.allow_streams(count))
    }

    fn allow_receive(&self, bytes: u64) {
        either!(self, link => link.allow_receive(bytes))
    }

    fn send_datagram(&self, datagram: Bytes) -> Result<(), DatagramError> {
        either!(self, link => link.send_datagram(datagram))
    }

    async fn read_datagram(&self) -> Result<Bytes, LinkError> {
        either!(self, link => link.read_datagram().await)
    }

    fn max_datagram_size(&self) -> Option<usize> {
        either!(self, link => link.max_datagram_size())
    }

    fn elicit_answer(&self) -> Result<(), DatagramError> {
        either!(self, link => link.elicit_answer())
    }

    fn close(&self, code: CloseCode) {
        either!(self, link => link.close(code))
    }

    async fn closed(&self) -> LinkError {
        either!(self, link => link.closed().await)
    }
}

impl LinkStatus for AnyLink {
    fn stable_id(&self) -> usize {
        either!(self, link => link.stable_id())
    }

    fn peer(&self) -> SocketAddr {
        either!(self, link => link.peer())
    }

    fn path(&self) -> PathStats {
        either!(self, link => link.path())
    }

    fn close_reason(&self) -> Option<LinkError> {
        either!(self, link => link.close_reason())
    }
}

impl AsyncWrite for AnyWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        either_half!(AnyWriter, self.get_mut(), half => AsyncWrite::poll_write(Pin::new(half), cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        either_half!(AnyWriter, self.get_mut(), half => AsyncWrite::poll_write_vectored(Pin::new(half), cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        either_half!(AnyWriter, self, half => AsyncWrite::is_write_vectored(half))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either_half!(AnyWriter, self.get_mut(), half => AsyncWrite::poll_flush(Pin::new(half), cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either_half!(AnyWriter, self.get_mut(), half => AsyncWrite::poll_shutdown(Pin::new(half), cx))
    }
}

impl StreamWriter for AnyWriter {
    async fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        either_half!(AnyWriter, self, half => StreamWriter::write_chunk(half, chunk).await)
    }

    fn finish(&mut self) -> io::Result<()> {
        either_half!(AnyWriter, self, half => StreamWriter::finish(half))
    }

    fn abort(&mut self, code: StreamCode) {
        either_half!(AnyWriter, self, half => StreamWriter::abort(half, code))
    }

    async fn delivered(&mut self) {
        either_half!(AnyWriter, self, half => StreamWriter::delivered(half).await)
    }
}

impl AsyncRead for AnyReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        either_half!(AnyReader, self.get_mut(), half => AsyncRead::poll_read(Pin::new(half), cx, buf))
    }
}

impl StreamReader for AnyReader {
    async fn read_chunks(&mut self, chunks: &mut [Bytes]) -> io::Result<Option<usize>> {
        either_half!(AnyReader, self, half => StreamReader::read_chunks(half, chunks).await)
    }

    fn abort(&mut self, code: StreamCode) {
        either_half!(AnyReader, self, half => StreamReader::abort(half, code))
    }

    fn stream_id(&self) -> u64 {
        either_half!(AnyReader, self, half => StreamReader::stream_id(half))
    }
}
