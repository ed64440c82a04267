//! The relay's handle on a session's links to its agent. Everything past the handshake (the
//! claims table, the accept loops, the HTTP proxy, the admin views) holds this, never a link
//! or a QUIC connection itself. A session has its primary link, the one its Hello came on,
//! and the links its agent joined to it since; [`SessionLink::pick`] chooses one per visitor.
//! The session is its primary's: liveness, address and its end are the primary's. Each link
//! migrates on its own, since each has its own socket at the agent.

use std::{
    net::SocketAddr,
    ops::Deref,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
};

use burrow_common::{
    CloseCode, Refusal,
    link::{AnyLink, Link, LinkError, LinkStatus, PathStats, Transport},
    protocol::datagram,
    sync,
};
use serde::Serialize;

#[derive(Clone)]
pub(crate) struct SessionLink {
    links: Arc<Links>,
}

struct Links {
    primary: Member,
    /// The open flows of the session's UDP tunnels, whichever link carries each.
    flows: crate::udp::Flows,
    joined: Mutex<Vec<Member>>,
    /// Where the search for the least loaded link starts, so ties take turns.
    turn: AtomicUsize,
}

/// One link of the session, with its visitors.
#[derive(Clone)]
struct Member {
    link: AnyLink,
    /// Visitors carried now.
    open: Arc<AtomicUsize>,
    /// Visitors carried since the link came up.
    carried: Arc<AtomicU64>,
}

impl Member {
    fn new(link: AnyLink) -> Self {
        Self { link, open: Arc::default(), carried: Arc::default() }
    }

    fn view(&self, primary: bool) -> LinkView {
        let path = self.link.path();
        LinkView {
            primary,
            transport: self.link.transport(),
            remote: self.link.peer(),
            rtt_ms: path.rtt.as_micros() as f64 / 1000.0,
            quic_bytes_sent: path.sent_bytes,
            quic_bytes_received: path.received_bytes,
            udp_max_payload: self.link.max_datagram_size().map(datagram::typical_max_payload),
            open_visitors: self.open.load(Relaxed),
            visitors: self.carried.load(Relaxed),
        }
    }
}

/// One link of a session as the admin API shows it.
#[derive(Clone, Serialize)]
pub(crate) struct LinkView {
    /// The link the session's Hello came on: its end is the session's.
    pub(crate) primary: bool,
    /// `quic`, or `tcp` for an agent whose network blocks UDP.
    pub(crate) transport: Transport,
    pub(crate) remote: SocketAddr,
    pub(crate) rtt_ms: f64,
    pub(crate) quic_bytes_sent: u64,
    pub(crate) quic_bytes_received: u64,
    /// The largest UDP tunnel packet the link carries now, `None` if it takes no datagrams.
    pub(crate) udp_max_payload: Option<usize>,
    pub(crate) open_visitors: usize,
    /// Visitors the link carried, open ones included.
    pub(crate) visitors: u64,
}

/// The link chosen for one visitor, counted among that link's open visitors until dropped:
/// hold it for the visitor's life.
pub(crate) struct Picked {
    link: AnyLink,
    open: Arc<AtomicUsize>,
    session: usize,
}

impl Picked {
    /// The session's id, whichever of its links this is: the traffic counts know the
    /// session by it.
    pub(crate) fn session_id(&self) -> usize {
        self.session
    }
}

impl Deref for Picked {
    type Target = AnyLink;

    fn deref(&self) -> &AnyLink {
        &self.link
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Relaxed);
    }
}

/// A joined link's place in its session; dropping it takes the link out of the set.
pub(crate) struct JoinedLink {
    links: Arc<Links>,
    id: usize,
}

impl Drop for JoinedLink {
    fn drop(&mut self) {
        sync::lock(&self.links.joined).retain(|member| member.link.stable_id() != self.id);
    }
}

impl SessionLink {
    pub(crate) fn new(link: AnyLink) -> Self {
        let links = Links {
            primary: Member::new(link),
            flows: crate::udp::Flows::default(),
            joined: Mutex::default(),
            turn: AtomicUsize::new(0),
        };
        Self { links: Arc::new(links) }
    }

    /// The link the session's Hello came on.
    pub(crate) fn primary(&self) -> &AnyLink {
        &self.links.primary.link
    }

    /// The session's UDP flows; each link's datagram reader delivers through it.
    pub(crate) fn flows(&self) -> &crate::udp::Flows {
        &self.links.flows
    }

    /// Adds `link` to the session, unless it has `max` links of that transport already (the
    /// primary included): an agent moving from TCP to QUIC holds both sets for a while.
    pub(crate) fn join(&self, link: AnyLink, max: usize) -> Result<JoinedLink, Refusal> {
        let mut joined = sync::lock(&self.links.joined);
        let transport = link.transport();
        let same = joined.iter().map(|m| &m.link).chain([self.primary()]).filter(|l| l.transport() == transport);
        if same.count() >= max {
            return Err(Refusal::LinkLimit { max });
        }
        let id = link.stable_id();
        joined.push(Member::new(link));
        Ok(JoinedLink { links: self.links.clone(), id })
    }

    /// The link that carries the next visitor: of the links still up, a QUIC one if there is
    /// one (TCP links of an agent moving back to QUIC only finish their visitors), the one
    /// with the fewest open visitors, ties taking turns.
    pub(crate) fn pick(&self) -> Picked {
        let joined = sync::lock(&self.links.joined);
        let count = joined.len() + 1;
        let start = self.links.turn.fetch_add(1, Relaxed) % count;
        let member = |i: usize| if i == 0 { &self.links.primary } else { &joined[i - 1] };
        let up = (0..count).map(|step| member((start + step) % count)).filter(|m| m.link.close_reason().is_none());
        // With every link down the primary's failure is the one the visitor meets.
        let load = |m: &&Member| (m.link.transport() != Transport::Quic, m.open.load(Relaxed));
        let chosen = up.min_by_key(load).unwrap_or(&self.links.primary);
        chosen.open.fetch_add(1, Relaxed);
        chosen.carried.fetch_add(1, Relaxed);
        Picked { link: chosen.link.clone(), open: chosen.open.clone(), session: self.stable_id() }
    }

    /// The session's links as they are now, the primary first.
    pub(crate) fn views(&self) -> Vec<LinkView> {
        let joined = sync::lock(&self.links.joined).clone();
        let mut views = vec![self.links.primary.view(true)];
        views.extend(joined.iter().filter(|m| m.link.close_reason().is_none()).map(|m| m.view(false)));
        views
    }

    /// Stable for the life of the session; the traffic counts find a visitor's tunnel by it.
    pub(crate) fn stable_id(&self) -> usize {
        self.primary().stable_id()
    }

    pub(crate) fn transport(&self) -> Transport {
        self.primary().transport()
    }

    pub(crate) fn remote_address(&self) -> SocketAddr {
        self.primary().peer()
    }

    /// Where each link of the session comes from now, by link id.
    pub(crate) fn link_addresses(&self) -> Vec<(usize, SocketAddr)> {
        let joined = sync::lock(&self.links.joined);
        [&self.links.primary].into_iter().chain(joined.iter()).map(|m| (m.link.stable_id(), m.link.peer())).collect()
    }

    /// Closes every link of the session.
    pub(crate) fn close(&self, code: CloseCode) {
        self.primary().close(code);
        for member in sync::lock(&self.links.joined).iter() {
            member.link.close(code);
        }
    }

    /// Whether the agent still answers; see [`crate::liveness`].
    pub(crate) async fn answers(&self) -> bool {
        crate::liveness::answers(self.primary()).await
    }

    /// Completes when the session's primary link has ended, with why.
    pub(crate) async fn closed(&self) -> LinkError {
        self.primary().closed().await
    }

    /// The primary's path as it is at this moment.
    pub(crate) fn path(&self) -> PathStats {
        self.primary().path()
    }
}
