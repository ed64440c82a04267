//! The relay's handle on a session's link to its agent. Everything past the handshake (the
//! claims table, the accept loops, the HTTP proxy, the admin views) holds this, never the
//! QUIC connection itself, so the transport underneath can change in this one place. When a
//! session carries several links, this becomes their set and `open_stream` picks one per
//! visitor.

use std::net::SocketAddr;

use anyhow::Context;
use burrow_common::CloseCode;

/// How long a visitor waits for a stream slot before it is reset; past this the agent is
/// overloaded or gone, and a hanging connection helps no one.
const OPEN_STREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Clone)]
pub(crate) struct SessionLink {
    conn: quinn::Connection,
}

/// The link's path as it is at this moment.
pub(crate) struct PathStats {
    pub(crate) rtt: std::time::Duration,
    pub(crate) lost_packets: u64,
    pub(crate) sent_packets: u64,
    /// Congestion window, in bytes.
    pub(crate) cwnd: u64,
    /// UDP payload bytes each way, transport overhead included.
    pub(crate) bytes_sent: u64,
    pub(crate) bytes_received: u64,
}

impl SessionLink {
    pub(crate) fn new(conn: quinn::Connection) -> Self {
        Self { conn }
    }

    /// Stable for the life of the link; the traffic counts find a visitor's tunnel by it.
    pub(crate) fn stable_id(&self) -> usize {
        self.conn.stable_id()
    }

    pub(crate) fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Opens the stream that carries one visitor.
    pub(crate) async fn open_stream(&self) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
        tokio::time::timeout(OPEN_STREAM_TIMEOUT, self.conn.open_bi())
            .await
            .context("no stream slot at the agent in time")?
            .context("open stream to agent")
    }

    pub(crate) fn close(&self, code: CloseCode) {
        code.close(&self.conn);
    }

    /// Whether the agent still answers; see [`crate::liveness`].
    pub(crate) async fn answers(&self) -> bool {
        crate::liveness::answers(&self.conn).await
    }

    /// Completes when the link has ended, with why.
    pub(crate) async fn closed(&self) -> quinn::ConnectionError {
        self.conn.closed().await
    }

    pub(crate) fn path(&self) -> PathStats {
        let stats = self.conn.stats();
        PathStats {
            rtt: stats.path.rtt,
            lost_packets: stats.path.lost_packets,
            sent_packets: stats.path.sent_packets,
            cwnd: stats.path.cwnd,
            bytes_sent: stats.udp_tx.bytes,
            bytes_received: stats.udp_rx.bytes,
        }
    }
}
