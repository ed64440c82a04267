//! A point-in-time view of [`Stats`], as the console draws it and the inspector sends it
//! (JSON at `/api/status` and in each `/api/events` event).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::atomic::Ordering::Relaxed,
    time::{Instant, UNIX_EPOCH},
};

use burrow_common::{
    link::{Link, LinkStatus},
    protocol::datagram,
};
use serde::{Deserialize, Serialize};

use crate::{
    config::Protocol,
    requests::RequestSummary,
    stats::{Connections, DatagramsView, LinkCount, Record, State, Stats, VisitEnd, lock},
};

/// Requests in each snapshot; the inspector fetches one's details when it is opened.
const RECENT_REQUESTS: usize = 50;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: String,
    /// The relay as configured, `HOST:PORT`.
    pub relay: String,
    pub state: SessionState,
    /// The path to the relay while a session is up.
    pub path: Option<PathView>,
    pub tunnels: Vec<TunnelView>,
    /// Open connections, then recently closed ones, newest first.
    pub connections: Vec<ConnectionView>,
    /// HTTP tunnels' latest requests, newest first.
    #[serde(default)]
    pub requests: Vec<RequestSummary>,
    /// Datagrams from the relay that found no flow: their flow's stream did not arrive
    /// within 2 s, or the flow had ended.
    #[serde(default)]
    pub udp_unknown_flow: u64,
    /// The sessions with the fleet's other relays, which serve the same tunnels; empty for
    /// a relay on its own.
    #[serde(default)]
    pub fleet: Vec<FleetSessionView>,
}

/// A session with another relay of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetSessionView {
    /// The relay's address, as its fleet lists it.
    pub relay: String,
    pub state: SessionState,
    pub links_up: usize,
    pub links_wanted: usize,
    pub transport: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SessionState {
    /// `retry` counts failed attempts so far; `last_error` says why the last one failed.
    Connecting {
        for_ms: u64,
        retry: u32,
        last_error: Option<String>,
    },
    Online {
        for_ms: u64,
    },
    Reconnecting {
        in_ms: u64,
        attempt: u32,
        reason: String,
    },
    Stopped {
        error: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathView {
    /// The relay's address as this session reaches it.
    pub remote: SocketAddr,
    pub rtt_ms: f64,
    pub lost_packets: u64,
    pub sent_packets: u64,
    pub congestion_window: u64,
    pub mtu: u16,
    /// UDP payload bytes of the whole session, QUIC overhead included.
    pub sent_bytes: u64,
    pub received_bytes: u64,
    /// QUIC links of the session up now, and how many it aims for; the figures above are
    /// its first link's.
    #[serde(default)]
    pub links_up: usize,
    #[serde(default)]
    pub links_wanted: usize,
    /// The links' transport and why it was chosen: `QUIC`, or `TCP: ...` where UDP is blocked.
    #[serde(default)]
    pub transport: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelView {
    pub name: String,
    pub url: String,
    /// More addresses of an HTTP tunnel (plain HTTP besides HTTPS); empty for TCP.
    #[serde(default)]
    pub also: Vec<String>,
    pub local: String,
    pub open: u64,
    pub total: u64,
    pub failed: u64,
    /// Bytes from visitors to the local server, those of open connections so far included.
    pub to_local: u64,
    pub to_visitor: u64,
    /// A UDP tunnel's packets, open flows' included; `open`, `total` and `failed` count its
    /// flows.
    #[serde(default)]
    pub udp: Option<UdpView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpView {
    #[serde(flatten)]
    pub packets: DatagramsView,
    /// The largest visitor or local packet that crosses now, from the primary link's
    /// datagram size less a two-byte flow id; none between sessions.
    pub max_payload: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionView {
    pub id: u64,
    pub tunnel: String,
    /// The visitor's address as the relay saw it.
    pub visitor: SocketAddr,
    /// Milliseconds since the Unix epoch.
    pub opened_at_ms: u64,
    pub duration_ms: u64,
    /// `open`, `closed` or `failed`.
    pub state: String,
    /// Bytes so far; final once the connection has ended, failed ones included.
    pub to_local: u64,
    pub to_visitor: u64,
    /// Why a failed connection failed.
    pub reason: Option<String>,
    /// Set for a UDP flow: its packets each way and those dropped.
    #[serde(default)]
    pub flow: Option<DatagramsView>,
}

impl Stats {
    pub fn snapshot(&self) -> Snapshot {
        let now = Instant::now();
        let (relay, state, path, public, max_payload) = {
            let session = lock(&self.0.session);
            let path = session.link.as_ref().map(|link| path_view(link, &self.0.links.borrow()));
            let max_payload = session.link.as_ref().and_then(Link::max_datagram_size);
            let max_payload = max_payload.map(datagram::typical_max_payload);
            let state = session_state(&session.state, session.since, now);
            (session.relay.clone(), state, path, session.tunnels.clone(), max_payload)
        };
        let counters: Vec<_> = public.iter().map(|t| (t, self.tunnel(&t.name))).collect();
        let (tunnels, connections) = {
            // A close moves a connection's bytes into its tunnel's counters under this lock,
            // so the two are read together.
            let connections = lock(&self.0.connections);
            let open = open_bytes(&connections);
            let tunnels = counters
                .iter()
                .map(|(t, counters)| {
                    let (to_local, to_visitor, packets) = open.get(t.name.as_str()).copied().unwrap_or_default();
                    let udp = (t.protocol == Protocol::Udp)
                        .then(|| UdpView { packets: counters.datagrams.view().plus(packets), max_payload });
                    TunnelView {
                        name: t.name.clone(),
                        url: t.url(),
                        also: t.urls.iter().skip(1).cloned().collect(),
                        local: t.local.to_string(),
                        open: counters.open.load(Relaxed),
                        total: counters.total.load(Relaxed),
                        failed: counters.failed.load(Relaxed),
                        to_local: counters.to_local.load(Relaxed) + to_local,
                        to_visitor: counters.to_visitor.load(Relaxed) + to_visitor,
                        udp,
                    }
                })
                .collect();
            let listed = connections.open.values().rev().chain(&connections.closed).take(crate::stats::RECENT);
            (tunnels, listed.map(|r| connection_view(r, now)).collect())
        };
        let requests = self.requests().recent(RECENT_REQUESTS);
        let udp_unknown_flow = self.0.unknown_flow.load(Relaxed);
        let version = env!("CARGO_PKG_VERSION").into();
        let fleet = self.fleet_sessions(now);
        Snapshot { version, relay, state, path, tunnels, connections, requests, udp_unknown_flow, fleet }
    }

    fn fleet_sessions(&self, now: Instant) -> Vec<FleetSessionView> {
        lock(&self.0.members)
            .iter()
            .map(|(relay, member)| FleetSessionView {
                relay: relay.to_string(),
                state: session_state(&member.state, member.since, now),
                links_up: member.links.up,
                links_wanted: member.links.wanted,
                transport: member.links.transport.clone(),
            })
            .collect()
    }
}

/// Bytes so far of each tunnel's open connections, to the local server and to visitors,
/// and its open flows' packets.
fn open_bytes(connections: &Connections) -> HashMap<&str, (u64, u64, DatagramsView)> {
    let mut sums = HashMap::<&str, (u64, u64, DatagramsView)>::new();
    for record in connections.open.values() {
        let (to_visitor, to_local) = record.progress.moved();
        let packets = record.datagrams.as_ref().map(|d| d.view()).unwrap_or_default();
        let sum = sums.entry(record.tunnel.as_str()).or_default();
        *sum = (sum.0 + to_local, sum.1 + to_visitor, sum.2.plus(packets));
    }
    sums
}

fn session_state(state: &State, since: Instant, now: Instant) -> SessionState {
    let elapsed = millis(now.saturating_duration_since(since));
    match state {
        State::Connecting { retry } => SessionState::Connecting {
            for_ms: elapsed,
            retry: retry.as_ref().map_or(0, |(attempt, _)| *attempt),
            last_error: retry.as_ref().map(|(_, why)| why.clone()),
        },
        State::Online => SessionState::Online { for_ms: elapsed },
        State::Retrying { attempt, delay, reason } => SessionState::Reconnecting {
            in_ms: millis(*delay).saturating_sub(elapsed),
            attempt: *attempt,
            reason: reason.clone(),
        },
        State::Stopped { error } => SessionState::Stopped { error: error.clone() },
    }
}

fn path_view(link: &dyn LinkStatus, links: &LinkCount) -> PathView {
    let path = link.path();
    PathView {
        remote: link.peer(),
        rtt_ms: path.rtt.as_secs_f64() * 1000.0,
        lost_packets: path.lost_packets,
        sent_packets: path.sent_packets,
        congestion_window: path.congestion_window,
        mtu: path.mtu,
        sent_bytes: path.sent_bytes,
        received_bytes: path.received_bytes,
        links_up: links.up,
        links_wanted: links.wanted,
        transport: links.transport.clone(),
    }
}

fn connection_view(record: &Record, now: Instant) -> ConnectionView {
    let opened_at_ms = record.opened_at.duration_since(UNIX_EPOCH).map(millis).unwrap_or_default();
    let (duration, state, reason) = match &record.ended {
        None => (now.saturating_duration_since(record.opened), "open", None),
        Some((took, VisitEnd::Closed)) => (*took, "closed", None),
        Some((took, VisitEnd::Failed { reason })) => (*took, "failed", Some(reason.clone())),
    };
    let (to_visitor, to_local) = record.progress.moved();
    ConnectionView {
        id: record.id,
        tunnel: record.tunnel.clone(),
        visitor: record.visitor,
        opened_at_ms,
        duration_ms: millis(duration),
        state: state.into(),
        to_local,
        to_visitor,
        reason,
        flow: record.datagrams.as_ref().map(|d| d.view()),
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
