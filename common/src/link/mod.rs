//! A link: one transport connection between relay and agent, as a session uses it.
//!
//! A session opens and accepts bidirectional streams, sends datagrams, closes with a
//! [`CloseCode`] and learns why its link ended, all through [`Link`]; it never names the
//! transport underneath. Two transports implement it: QUIC ([`QuicLink`]), the default, and
//! TLS over TCP with HTTP/2 as the stream multiplexer ([`TcpLink`]), for networks that block
//! UDP. [`AnyLink`] holds a link of either kind and implements [`Link`] by matching, which
//! costs a branch per call and no allocation.
//!
//! Stream halves are associated types rather than boxed objects, so the splice runs on the
//! transport's own types: for QUIC it keeps quinn's zero-copy chunk reads and writes.

mod any;
mod quic;
mod tcp;

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

pub use self::{
    any::{AnyLink, AnyReader, AnyWriter, Transport},
    quic::QuicLink,
    tcp::{TCP_MAX_DATAGRAM, TcpLink, TcpReader, TcpSettings, TcpWriter},
};
use crate::{CloseCode, StreamCode};

/// One transport connection between relay and agent. Clones share the connection.
pub trait Link: LinkStatus + Clone + Send + Sync + 'static {
    type Writer: StreamWriter;
    type Reader: StreamReader;

    /// Opens a stream to the peer; waits while the peer's stream limit is reached.
    fn open(&self) -> impl Future<Output = Result<(Self::Writer, Self::Reader), LinkError>> + Send;

    /// The next stream the peer opens; an error once the link has ended.
    fn accept(&self) -> impl Future<Output = Result<(Self::Writer, Self::Reader), LinkError>> + Send;

    /// How many streams the peer may hold open at once from now on. A transport without
    /// such a limit ignores it.
    fn allow_streams(&self, count: u32);

    /// How many bytes the peer may have in flight across all streams from now on: a relay
    /// lets a peer send little until it has authenticated. A transport without such a
    /// window ignores it.
    fn allow_receive(&self, bytes: u64);

    /// Sends one unreliable datagram; nothing is fragmented, see [`Link::max_datagram_size`].
    fn send_datagram(&self, datagram: Bytes) -> Result<(), DatagramError>;

    /// The next datagram from the peer.
    fn read_datagram(&self) -> impl Future<Output = Result<Bytes, LinkError>> + Send;

    /// The largest datagram that fits now, `None` when the peer takes none. It can shrink
    /// while the link runs (a smaller path MTU), so read it at each send.
    fn max_datagram_size(&self) -> Option<usize>;

    /// Asks the peer for an answer now, which shows in [`PathStats::received_packets`]:
    /// how the relay tells a live agent from a silent one.
    fn elicit_answer(&self) -> Result<(), DatagramError>;

    /// Ends the link at once; the peer learns `code` and every stream fails.
    fn close(&self, code: CloseCode);

    /// Waits for the link to end and says why.
    fn closed(&self) -> impl Future<Output = LinkError> + Send;
}

/// What can be read of a link without using it: for views (console, admin API) that keep a
/// link of any kind as a trait object.
pub trait LinkStatus: Send + Sync {
    /// Distinct among the links alive in this process.
    fn stable_id(&self) -> usize;
    /// The peer's address as the link reaches it now; it changes when the peer migrates.
    fn peer(&self) -> SocketAddr;
    fn path(&self) -> PathStats;
    /// Why the link ended, or `None` while it runs.
    fn close_reason(&self) -> Option<LinkError>;
}

/// A link's path as the transport measures it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PathStats {
    pub rtt: Duration,
    pub lost_packets: u64,
    pub sent_packets: u64,
    /// Transport packets (UDP datagrams for QUIC) received: it grows whenever the peer is heard.
    pub received_packets: u64,
    pub congestion_window: u64,
    pub mtu: u16,
    /// Bytes on the wire, the transport's own overhead included.
    pub sent_bytes: u64,
    pub received_bytes: u64,
}

/// The sending half of a stream.
pub trait StreamWriter: AsyncWrite + Unpin + Send + 'static {
    /// Queues `chunk` as it is, without copying it where the transport allows.
    fn write_chunk(&mut self, chunk: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    /// Ends the stream cleanly once everything queued is sent: the peer reads an EOF.
    fn finish(&mut self) -> io::Result<()>;
    /// Ends the stream at once with `code`: the peer sees a reset, not a clean EOF. A half the
    /// peer already closed stays closed.
    fn abort(&mut self, code: StreamCode);
    /// Waits until the peer has everything written, or has stopped reading.
    fn delivered(&mut self) -> impl Future<Output = ()> + Send;
}

/// The receiving half of a stream.
pub trait StreamReader: AsyncRead + Unpin + Send + 'static {
    /// Fills `chunks` with what has arrived, as the transport holds it; returns how many were
    /// filled, or `None` at the end of the stream.
    fn read_chunks(&mut self, chunks: &mut [Bytes]) -> impl Future<Output = io::Result<Option<usize>>> + Send;
    /// Tells the peer to stop sending, with `code`.
    fn abort(&mut self, code: StreamCode);
    /// Distinct among the streams of one link, for logs.
    fn stream_id(&self) -> u64;
}

/// Why a link ended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// The peer closed it with one of our codes.
    #[error("{}", .0.describe())]
    Closed(CloseCode),
    #[error("closed by peer with unknown code {0}")]
    UnknownCode(u64),
    /// This end closed it.
    #[error("closed")]
    LocallyClosed,
    #[error("no answer from the peer within the idle timeout")]
    TimedOut,
    /// The peer restarted and no longer knows the link.
    #[error("the peer restarted and no longer knows this session")]
    Reset,
    #[error(transparent)]
    Transport(Arc<dyn std::error::Error + Send + Sync>),
}

impl LinkError {
    /// The [`CloseCode`] the peer closed with, if it closed with one of ours.
    pub fn peer_code(&self) -> Option<CloseCode> {
        match self {
            LinkError::Closed(code) => Some(*code),
            _ => None,
        }
    }
}

impl From<LinkError> for io::Error {
    fn from(e: LinkError) -> Self {
        let kind = match e {
            LinkError::TimedOut => io::ErrorKind::TimedOut,
            LinkError::Reset => io::ErrorKind::ConnectionReset,
            _ => io::ErrorKind::NotConnected,
        };
        io::Error::new(kind, e)
    }
}

/// Why a datagram was not sent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DatagramError {
    #[error("datagram larger than the link takes now")]
    TooLarge,
    #[error("the link carries no datagrams")]
    Unsupported,
    #[error("link lost")]
    Lost(#[from] LinkError),
}
