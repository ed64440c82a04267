//! The relay's handle on a session's links to its agent. Everything past the handshake (the
//! claims table, the accept loops, the HTTP proxy, the admin views) holds this, never a link
//! or a QUIC connection itself: when a session carries several links, this becomes their set
//! and [`SessionLink::pick`] chooses one per visitor, with no change to its holders.

use std::net::SocketAddr;

use burrow_common::{
    CloseCode,
    link::{Link, LinkError, LinkStatus, PathStats, QuicLink},
};

#[derive(Clone)]
pub(crate) struct SessionLink {
    link: QuicLink,
}

impl SessionLink {
    pub(crate) fn new(link: QuicLink) -> Self {
        Self { link }
    }

    /// The link that carries the next visitor.
    pub(crate) fn pick(&self) -> QuicLink {
        self.link.clone()
    }

    /// Stable for the life of the session; the traffic counts find a visitor's tunnel by it.
    pub(crate) fn stable_id(&self) -> usize {
        self.link.stable_id()
    }

    pub(crate) fn remote_address(&self) -> SocketAddr {
        self.link.peer()
    }

    pub(crate) fn close(&self, code: CloseCode) {
        self.link.close(code);
    }

    /// Whether the agent still answers; see [`crate::liveness`].
    pub(crate) async fn answers(&self) -> bool {
        crate::liveness::answers(&self.link).await
    }

    /// Completes when the session's link has ended, with why.
    pub(crate) async fn closed(&self) -> LinkError {
        self.link.closed().await
    }

    /// The path as it is at this moment.
    pub(crate) fn path(&self) -> PathStats {
        self.link.path()
    }
}
