//! Live agent sessions: what the admin endpoint shows of each, and their tokens, so revoking
//! a token ends its sessions at once rather than at their next reconnect.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use burrow_common::{CloseCode, Hello, Refusal, link::Transport, sync};
use serde::Serialize;

use crate::{
    Shared,
    claims::{SessionId, TunnelKey},
    session::{LinkView, SessionLink},
    tokens::{self, Grant, hash, now},
    traffic::{CountedTunnel, SessionTunnels, Traffic},
};

pub(crate) struct LiveSessions {
    table: Mutex<Table>,
    traffic: Arc<Traffic>,
}

/// The sessions, and the places reserved for sessions being admitted, under one lock so a
/// token's count is never read half-updated.
#[derive(Default)]
struct Table {
    by_id: BTreeMap<SessionId, Live>,
    /// Sessions being admitted, by token hash: counted before they are registered, so
    /// many Hellos at once cannot pass the cap together.
    reserved: HashMap<[u8; 32], usize>,
}

impl Table {
    /// The token's sessions that count against its cap: those serving, and those being
    /// admitted. An ended session, its places parked, is no agent any more.
    fn sessions_of(&self, token: &[u8; 32]) -> usize {
        let serving = self.by_id.values().filter(|live| !live.ended && live.token == *token).count();
        serving + self.reserved.get(token).copied().unwrap_or(0)
    }

    fn unreserve(&mut self, token: &[u8; 32]) {
        if let Some(count) = self.reserved.get_mut(token) {
            *count -= 1;
            if *count == 0 {
                self.reserved.remove(token);
            }
        }
    }
}

/// A session's place under its token's cap while it is admitted; [`LiveSessions::register`]
/// takes it over, and dropping it (a refused session) frees it.
pub(crate) struct SessionSlot {
    token: [u8; 32],
    sessions: Arc<LiveSessions>,
    /// False once the registered session counts instead.
    reserved: bool,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        if self.reserved {
            self.sessions.table().unreserve(&self.token);
        }
    }
}

struct Live {
    /// The SHA-256 of the session's token: enough to check it again, useless to a thief.
    token: [u8; 32],
    token_name: String,
    /// The SHA-256 of the session's join ticket, by which its further links find it.
    ticket: [u8; 32],
    link: SessionLink,
    connected_since: u64,
    tunnels: Vec<AgentTunnel>,
    /// An ended session stays registered while its ports are parked, but is no agent any more.
    ended: bool,
}

/// A session the relay has just welcomed.
pub(crate) struct Admitted {
    pub(crate) token: [u8; 32],
    pub(crate) token_name: String,
    pub(crate) ticket: [u8; 32],
    pub(crate) link: SessionLink,
    pub(crate) tunnels: Vec<CountedTunnel>,
}

/// A session's entry; dropping it removes the entry.
pub(crate) struct Registered {
    id: SessionId,
    sessions: Arc<LiveSessions>,
    tunnels: SessionTunnels,
}

#[derive(Serialize)]
pub(crate) struct AgentView {
    pub(crate) session: SessionId,
    pub(crate) token: String,
    pub(crate) remote: SocketAddr,
    /// The primary link's transport: `quic`, or `tcp` where the agent's network blocks UDP.
    pub(crate) transport: Transport,
    pub(crate) connected_since: u64,
    pub(crate) rtt_ms: f64,
    #[serde(skip)]
    pub(crate) rtt: Duration,
    pub(crate) lost_packets: u64,
    pub(crate) sent_packets: u64,
    /// Congestion window, in bytes.
    pub(crate) cwnd: u64,
    /// UDP payload bytes on the session's path, QUIC overhead included.
    pub(crate) quic_bytes_sent: u64,
    pub(crate) quic_bytes_received: u64,
    pub(crate) tunnels: Vec<AgentTunnel>,
    /// The links carrying the session, the primary first; the figures above are its.
    pub(crate) links: Vec<LinkView>,
}

#[derive(Clone, Serialize)]
pub(crate) struct AgentTunnel {
    pub(crate) name: String,
    pub(crate) port: u16,
    /// An HTTP or TLS tunnel's public address; its port is 0.
    pub(crate) url: Option<String>,
}

/// A granted tunnel as the traffic counts know it.
fn counted(grant: &Grant, tunnel: &burrow_common::Granted) -> CountedTunnel {
    CountedTunnel {
        id: tunnel.id,
        key: TunnelKey::new(grant, &tunnel.name),
        port: tunnel.port,
        url: tunnel.urls.first().cloned(),
    }
}

fn listed(tunnel: &CountedTunnel) -> AgentTunnel {
    AgentTunnel { name: tunnel.key.tunnel.clone(), port: tunnel.port, url: tunnel.url.clone() }
}

impl Admitted {
    pub(crate) fn new(
        grant: &Grant,
        hello: &Hello,
        link: &SessionLink,
        granted: &[burrow_common::Granted],
        ticket: [u8; 32],
    ) -> Self {
        let tunnels = granted.iter().map(|tunnel| counted(grant, tunnel));
        Self {
            token: hash(&hello.token),
            token_name: grant.name.clone(),
            ticket,
            link: link.clone(),
            tunnels: tunnels.collect(),
        }
    }
}

impl LiveSessions {
    pub(crate) fn new(traffic: Arc<Traffic>) -> Self {
        Self { table: Mutex::default(), traffic }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent at every step, so a panic elsewhere leaves it usable.
        sync::lock(&self.table)
    }

    /// A place for one more session of the token whose hash is `token`, unless it has `max`
    /// already.
    pub(crate) fn reserve(self: &Arc<Self>, token: [u8; 32], max: usize) -> Result<SessionSlot, Refusal> {
        let mut table = self.table();
        if table.sessions_of(&token) >= max {
            return Err(Refusal::TokenSessionLimit { max });
        }
        *table.reserved.entry(token).or_default() += 1;
        Ok(SessionSlot { token, sessions: self.clone(), reserved: true })
    }

    /// Registers a welcomed session in the place `slot` reserved for it.
    pub(crate) fn register(self: &Arc<Self>, id: SessionId, mut slot: SessionSlot, admitted: Admitted) -> Registered {
        let tunnels = self.traffic.open_session(admitted.link.stable_id(), admitted.tunnels);
        let live = Live {
            token: admitted.token,
            token_name: admitted.token_name,
            ticket: admitted.ticket,
            link: admitted.link,
            connected_since: now(),
            tunnels: tunnels.granted().map(listed).collect(),
            ended: false,
        };
        let mut table = self.table();
        table.by_id.insert(id, live);
        // Counted as serving from now on, in the same step.
        table.unreserve(&slot.token);
        slot.reserved = false;
        drop(table);
        Registered { id, sessions: self.clone(), tunnels }
    }

    /// Closes every session whose token is no longer valid; returns how many.
    /// An unreadable store closes nothing: a bad edit must not cut off every agent.
    pub(crate) async fn close_revoked(&self, shared: &Shared) -> usize {
        // Each token is checked once, however many sessions it has: a check reads the store.
        let mut by_token: HashMap<[u8; 32], Vec<SessionLink>> = HashMap::new();
        for live in self.table().by_id.values().filter(|live| !live.ended) {
            by_token.entry(live.token).or_default().push(live.link.clone());
        }
        let mut closed = 0;
        for (token, links) in by_token {
            match tokens::verify(shared, token).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    links.iter().for_each(|link| link.close(CloseCode::Revoked));
                    closed += links.len();
                }
                Err(e) => {
                    tracing::warn!("token store unreadable; sessions kept: {e:#}");
                    return closed;
                }
            }
        }
        closed
    }

    /// Closes every session with `code`; returns how many.
    pub(crate) fn close_all(&self, code: CloseCode) -> usize {
        let links: Vec<SessionLink> =
            self.table().by_id.values().filter(|live| !live.ended).map(|live| live.link.clone()).collect();
        links.iter().for_each(|link| link.close(code));
        links.len()
    }

    /// The serving session whose join ticket has the SHA-256 `ticket`. The digests are
    /// compared, never the ticket, so the time taken tells nothing of it.
    pub(crate) fn joinable(&self, ticket: &[u8; 32]) -> Option<SessionLink> {
        let table = self.table();
        let mut serving = table.by_id.values().filter(|live| !live.ended);
        serving.find(|live| live.ticket == *ticket).map(|live| live.link.clone())
    }

    /// The sessions serving now, with their QUIC path as it is at this moment.
    pub(crate) fn agents(&self) -> Vec<AgentView> {
        let table = self.table();
        let agents = table.by_id.iter().filter(|(_, live)| !live.ended);
        agents.map(|(id, live)| view(*id, live)).collect()
    }
}

fn view(session: SessionId, live: &Live) -> AgentView {
    let path = live.link.path();
    let rtt = path.rtt;
    AgentView {
        session,
        token: live.token_name.clone(),
        remote: live.link.remote_address(),
        transport: live.link.transport(),
        connected_since: live.connected_since,
        // Microseconds, so the figure reads as a short decimal.
        rtt_ms: rtt.as_micros() as f64 / 1000.0,
        rtt,
        lost_packets: path.lost_packets,
        sent_packets: path.sent_packets,
        cwnd: path.congestion_window,
        quic_bytes_sent: path.sent_bytes,
        quic_bytes_received: path.received_bytes,
        tunnels: live.tunnels.clone(),
        links: live.link.views(),
    }
}

impl Registered {
    /// The session opened another tunnel.
    pub(crate) fn add(&mut self, grant: &Grant, tunnel: &burrow_common::Granted) {
        let counted = counted(grant, tunnel);
        if let Some(live) = self.sessions.table().by_id.get_mut(&self.id) {
            live.tunnels.push(listed(&counted));
        }
        self.tunnels.add(counted);
    }

    /// The session closed one of its tunnels.
    pub(crate) fn remove(&mut self, id: u32, name: &str) {
        if let Some(live) = self.sessions.table().by_id.get_mut(&self.id) {
            live.tunnels.retain(|t| t.name != name);
        }
        self.tunnels.remove(id);
    }

    /// The session has ended; its claims may stay parked for its agent to return.
    pub(crate) fn ended(&mut self) {
        if let Some(live) = self.sessions.table().by_id.get_mut(&self.id) {
            live.ended = true;
        }
        self.tunnels.ended();
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.sessions.table().by_id.remove(&self.id);
    }
}
