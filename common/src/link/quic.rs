//! The QUIC link: a quinn connection, its streams used as they are.

use std::{io, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use quinn::{ConnectionError, RecvStream, SendDatagramError, SendStream, VarInt};

use super::{DatagramError, Link, LinkError, LinkStatus, PathStats, StreamReader, StreamWriter};
use crate::{CloseCode, StreamCode};

/// A QUIC connection as a [`Link`]. Cheap to clone, like the connection itself.
#[derive(Debug, Clone)]
pub struct QuicLink(quinn::Connection);

impl From<quinn::Connection> for QuicLink {
    fn from(conn: quinn::Connection) -> Self {
        Self(conn)
    }
}

impl QuicLink {
    /// The connection underneath, for what only QUIC has (such as handing it to code that
    /// still takes a `quinn::Connection`).
    pub fn connection(&self) -> &quinn::Connection {
        &self.0
    }
}

impl Link for QuicLink {
    type Writer = SendStream;
    type Reader = RecvStream;

    async fn open(&self) -> Result<(SendStream, RecvStream), LinkError> {
        Ok(self.0.open_bi().await?)
    }

    async fn accept(&self) -> Result<(SendStream, RecvStream), LinkError> {
        Ok(self.0.accept_bi().await?)
    }

    fn allow_streams(&self, count: u32) {
        self.0.set_max_concurrent_bi_streams(VarInt::from_u32(count));
    }

    fn allow_receive(&self, bytes: u64) {
        self.0.set_receive_window(VarInt::from_u64(bytes).unwrap_or(VarInt::MAX));
    }

    fn send_datagram(&self, datagram: Bytes) -> Result<(), DatagramError> {
        self.0.send_datagram(datagram).map_err(|e| match e {
            SendDatagramError::TooLarge => DatagramError::TooLarge,
            SendDatagramError::UnsupportedByPeer | SendDatagramError::Disabled => DatagramError::Unsupported,
            SendDatagramError::ConnectionLost(lost) => DatagramError::Lost(lost.into()),
        })
    }

    async fn read_datagram(&self) -> Result<Bytes, LinkError> {
        Ok(self.0.read_datagram().await?)
    }

    fn max_datagram_size(&self) -> Option<usize> {
        self.0.max_datagram_size()
    }

    fn elicit_answer(&self) -> Result<(), DatagramError> {
        // Any ack-eliciting packet gets an ACK within the peer's ACK delay.
        self.send_datagram(Bytes::from_static(&[0]))
    }

    fn close(&self, code: CloseCode) {
        // The reason bytes repeat the description, for packet dumps.
        self.0.close(code.code(), code.describe().as_bytes());
    }

    async fn closed(&self) -> LinkError {
        self.0.closed().await.into()
    }
}

impl LinkStatus for QuicLink {
    fn stable_id(&self) -> usize {
        self.0.stable_id()
    }

    fn peer(&self) -> SocketAddr {
        self.0.remote_address()
    }

    fn path(&self) -> PathStats {
        let stats = self.0.stats();
        PathStats {
            rtt: stats.path.rtt,
            lost_packets: stats.path.lost_packets,
            sent_packets: stats.path.sent_packets,
            received_packets: stats.udp_rx.datagrams,
            congestion_window: stats.path.cwnd,
            mtu: stats.path.current_mtu,
            sent_bytes: stats.udp_tx.bytes,
            received_bytes: stats.udp_rx.bytes,
        }
    }

    fn close_reason(&self) -> Option<LinkError> {
        self.0.close_reason().map(LinkError::from)
    }
}

impl From<ConnectionError> for LinkError {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::ApplicationClosed(close) => match CloseCode::from_code(close.error_code) {
                Some(code) => LinkError::Closed(code),
                None => LinkError::UnknownCode(close.error_code.into_inner()),
            },
            ConnectionError::LocallyClosed => LinkError::LocallyClosed,
            ConnectionError::TimedOut => LinkError::TimedOut,
            ConnectionError::Reset => LinkError::Reset,
            other => LinkError::Transport(Arc::new(other)),
        }
    }
}

impl StreamWriter for SendStream {
    async fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        Ok(SendStream::write_chunk(self, chunk).await?)
    }

    fn finish(&mut self) -> io::Result<()> {
        Ok(SendStream::finish(self)?)
    }

    fn abort(&mut self, code: StreamCode) {
        // The peer may have closed this half already; that is the outcome wanted anyway.
        self.reset(code.code()).ok();
    }

    async fn delivered(&mut self) {
        self.stopped().await.ok();
    }
}

impl StreamReader for RecvStream {
    async fn read_chunks(&mut self, chunks: &mut [Bytes]) -> io::Result<Option<usize>> {
        Ok(RecvStream::read_chunks(self, chunks).await?)
    }

    fn abort(&mut self, code: StreamCode) {
        self.stop(code.code()).ok();
    }

    fn stream_id(&self) -> u64 {
        VarInt::from(self.id()).into_inner()
    }
}
