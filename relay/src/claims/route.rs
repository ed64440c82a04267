//! What a serving claim holds: where its visitors go. One shape for every kind of place, so
//! the port accept loops, the HTTP listeners and the parking handover all carry the same.

use burrow_common::CloseCode;
use tokio_util::task::TaskTracker;

use super::{Holder, SessionId, TunnelKey};
use crate::{limits::Places, session::SessionLink, store::StoreFuture, vhost::Access};

pub(crate) struct Route {
    /// The session's link to its agent; each visitor gets its own stream on it.
    pub(crate) link: SessionLink,
    pub(crate) session: SessionId,
    /// The token and tunnel name, which the tunnel's counters are kept by.
    pub(crate) key: TunnelKey,
    /// The tunnel id the session granted, carried in each stream header.
    pub(crate) tunnel: u32,
    pub(crate) kind: RouteKind,
    /// The tunnel's cap on visitor connections open at once.
    pub(crate) places: Places,
    /// Where visitor work runs: the relay's one drain waits for it on shutdown.
    pub(crate) visitors: TaskTracker,
}

pub(crate) enum RouteKind {
    /// A public port: each visitor connection is carried on its own stream.
    Tcp,
    /// Requests are read here and forwarded one visitor connection per stream.
    Http(Access),
    /// TLS bytes are passed through; the agent's local server ends the TLS.
    Tls,
    /// A public UDP port: each visitor address is a flow, its packets datagrams; a flow
    /// quiet both ways for `flow_idle` ends.
    Udp { flow_idle: std::time::Duration },
}

impl Holder for Route {
    fn session(&self) -> SessionId {
        self.session
    }

    fn close(&self, code: CloseCode) {
        self.link.close(code);
    }

    fn answers(&self) -> StoreFuture<'_, bool> {
        Box::pin(self.link.answers())
    }
}
