//! What the agent has carried, kept cheap enough to update on every stream and datagram:
//! per-tunnel counters, the last connections and UDP flows, and the session's state and its
//! link to the relay. The console
//! and the inspector read it through [`Stats::snapshot`].
//!
//! An open connection's bytes live in its own [`Progress`], which its splice bumps as bytes
//! move; a snapshot adds them to the tunnel's counters, and a close moves them there.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime},
};

use burrow_common::{link::AnyLink, splice::Progress};
use tokio::sync::watch;

pub use self::datagrams::DatagramsView;
pub(crate) use self::datagrams::{Datagrams, Dropped};
use crate::{PublicTunnel, Status, local_http::LocalHttp, requests::RequestLog};

mod datagrams;

/// Closed connections kept for display; open ones are always kept.
pub const RECENT: usize = 50;

/// A cheap handle; clones share the same counters. A handle for a session with another
/// relay of the fleet ([`Stats::for_member`]) counts its visitors with the rest but keeps its
/// session's state apart, under the relay's address.
#[derive(Clone)]
pub struct Stats(pub(crate) Arc<Shared>, Option<Arc<str>>);

pub(crate) struct Shared {
    pub(crate) session: Mutex<Session>,
    pub(crate) tunnels: Mutex<HashMap<String, Arc<TunnelStats>>>,
    pub(crate) connections: Mutex<Connections>,
    /// HTTP tunnels' requests, and where to replay them, by tunnel name.
    pub(crate) requests: RequestLog,
    pub(crate) replayers: Mutex<HashMap<String, Weak<LocalHttp>>>,
    next_id: AtomicU64,
    /// Bumped on every change, so watchers wake without polling.
    changes: watch::Sender<u64>,
    /// The sessions with the fleet's other relays, by address.
    pub(crate) members: Mutex<BTreeMap<Arc<str>, MemberSession>>,
    /// Links of the session up now, and how many it aims for: watched on its own by the
    /// ready file, which should not wake for every visitor.
    pub(crate) links: watch::Sender<LinkCount>,
    /// Datagrams from the relay that no flow took: their flow's stream did not come within
    /// the pending time, or the flow had ended. Counted per session, as such a datagram
    /// names no tunnel.
    pub(crate) unknown_flow: AtomicU64,
}

/// The session's links: how many are up of those it aims for, and their transport with why
/// it was chosen ("QUIC", "TCP: no QUIC answer in 300 ms"); empty between sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LinkCount {
    pub(crate) up: usize,
    pub(crate) wanted: usize,
    pub(crate) transport: String,
}

/// A session with another relay of the fleet, as the console and inspector show it.
pub(crate) struct MemberSession {
    pub(crate) state: State,
    pub(crate) since: Instant,
    pub(crate) links: LinkCount,
}

pub(crate) struct Session {
    pub(crate) relay: String,
    pub(crate) state: State,
    pub(crate) since: Instant,
    /// The link whose path the console shows, while a session is up.
    pub(crate) link: Option<AnyLink>,
    /// The tunnels of the last Welcome, kept while reconnecting so they stay on screen.
    pub(crate) tunnels: Vec<PublicTunnel>,
}

/// The session's state as shown to a person; `since` in [`Session`] says when it began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    /// `retry` is the failed attempt's number and why it failed, after the first.
    Connecting {
        retry: Option<(u32, String)>,
    },
    Online,
    Retrying {
        attempt: u32,
        delay: Duration,
        reason: String,
    },
    Stopped {
        error: Option<String>,
    },
}

#[derive(Default)]
pub(crate) struct Connections {
    pub(crate) open: BTreeMap<u64, Record>,
    pub(crate) closed: VecDeque<Record>,
}

/// The state `status` moves a session to from `was`.
fn next_state(status: &Status, was: &State) -> State {
    match (status, was) {
        // A retry keeps saying why the last attempt failed while it waits for an answer.
        (Status::Connecting, State::Retrying { attempt, reason, .. }) => {
            State::Connecting { retry: Some((*attempt, reason.clone())) }
        }
        (Status::Connecting, _) => State::Connecting { retry: None },
        (Status::Online(_), _) => State::Online,
        (Status::Retrying { attempt, delay, reason }, _) => {
            State::Retrying { attempt: *attempt, delay: *delay, reason: reason.clone() }
        }
    }
}

/// One visitor's connection through a tunnel, or one UDP flow.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) id: u64,
    pub(crate) tunnel: String,
    pub(crate) visitor: SocketAddr,
    pub(crate) opened_at: SystemTime,
    pub(crate) opened: Instant,
    /// Local server to visitor, then visitor to local server: the splice's TCP side is the
    /// local server.
    pub(crate) progress: Arc<Progress>,
    /// A UDP flow's packets.
    pub(crate) datagrams: Option<Arc<Datagrams>>,
    pub(crate) ended: Option<(Duration, VisitEnd)>,
}

/// How a visitor's connection ended; its bytes are in its record's progress either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VisitEnd {
    /// Both directions finished.
    Closed,
    Failed {
        reason: String,
    },
}

/// Counters of one tunnel, by name, so they carry over reconnects. The byte and packet
/// counters hold ended connections and flows only; a snapshot adds the open ones.
#[derive(Default)]
pub(crate) struct TunnelStats {
    pub(crate) open: AtomicU64,
    pub(crate) total: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) to_local: AtomicU64,
    pub(crate) to_visitor: AtomicU64,
    pub(crate) datagrams: Datagrams,
}

impl Default for Stats {
    fn default() -> Self {
        Self(
            Arc::new(Shared {
                session: Mutex::new(Session {
                    relay: String::new(),
                    state: State::Connecting { retry: None },
                    since: Instant::now(),
                    link: None,
                    tunnels: Vec::new(),
                }),
                tunnels: Mutex::default(),
                connections: Mutex::default(),
                requests: RequestLog::default(),
                replayers: Mutex::default(),
                next_id: AtomicU64::new(1),
                changes: watch::Sender::new(0),
                links: watch::Sender::new(LinkCount::default()),
                unknown_flow: AtomicU64::new(0),
                members: Mutex::default(),
            }),
            None,
        )
    }
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stats").finish_non_exhaustive()
    }
}

pub(crate) use burrow_common::sync::lock;

impl Stats {
    /// Wakes on every change: a connection opened or closed, a new session state.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.changes.subscribe()
    }

    pub(crate) fn changed(&self) {
        self.0.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn requests(&self) -> &RequestLog {
        &self.0.requests
    }

    /// Where the inspector replays the requests of HTTP tunnel `name`.
    pub(crate) fn set_replayer(&self, name: &str, local: &Arc<LocalHttp>) {
        let mut replayers = lock(&self.0.replayers);
        // Every relay's session serves the tunnel: the first one up keeps replaying.
        if self.1.is_some() && replayers.get(name).is_some_and(|live| live.strong_count() > 0) {
            return;
        }
        replayers.insert(name.to_string(), Arc::downgrade(local));
    }

    pub(crate) fn replayer(&self, name: &str) -> Option<Arc<LocalHttp>> {
        lock(&self.0.replayers).get(name).and_then(Weak::upgrade)
    }

    pub(crate) fn set_relay(&self, relay: String) {
        lock(&self.0.session).relay = relay;
    }

    /// Publishes `status` to the caller's channel and records it here with the time.
    pub(crate) fn publish(&self, channel: &watch::Sender<Status>, status: Status) {
        if self.1.is_some() {
            self.member(|member| {
                member.state = next_state(&status, &member.state);
                member.since = Instant::now();
            });
            channel.send_replace(status);
            return;
        }
        {
            let mut session = lock(&self.0.session);
            if let Status::Online(tunnels) = &status {
                session.tunnels = tunnels.clone();
            }
            session.state = next_state(&status, &session.state);
            session.since = Instant::now();
        }
        channel.send_replace(status);
        self.changed();
    }

    /// A handle for the session with `relay`, another relay of the fleet.
    pub(crate) fn for_member(&self, relay: &str) -> Self {
        Self(self.0.clone(), Some(relay.into()))
    }

    /// Changes this member session's entry, made at its first change; a no-op on the
    /// dialed relay's handle.
    fn member(&self, change: impl FnOnce(&mut MemberSession)) {
        let Some(relay) = &self.1 else { return };
        {
            let mut members = lock(&self.0.members);
            let entry = members.entry(relay.clone()).or_insert_with(|| MemberSession {
                state: State::Connecting { retry: None },
                since: Instant::now(),
                links: LinkCount::default(),
            });
            change(entry);
        }
        self.changed();
    }

    pub(crate) fn stopped(&self, error: Option<String>) {
        if let Some(relay) = &self.1 {
            lock(&self.0.members).remove(relay);
            self.changed();
            return;
        }
        {
            let mut session = lock(&self.0.session);
            session.state = State::Stopped { error };
            session.since = Instant::now();
            session.link = None;
        }
        self.changed();
    }

    /// The link whose path statistics are shown, with its transport and why that one; none
    /// between sessions.
    pub(crate) fn set_link(&self, link: Option<(AnyLink, String)>) {
        let (link, transport) = link.unzip();
        if self.1.is_none() {
            lock(&self.0.session).link = link;
        }
        self.change_links(|links| links.transport = transport.unwrap_or_default());
    }

    /// The session's links moved to another transport: `why` says which and why.
    pub(crate) fn set_transport(&self, why: &str) {
        self.change_links(|links| links.transport = why.to_string());
    }

    /// How many of the session's links are up, of the `wanted`.
    pub(crate) fn set_links(&self, up: usize, wanted: usize) {
        self.change_links(|links| (links.up, links.wanted) = (up, wanted));
    }

    /// Changes this handle's session's link count: the dialed relay's, watched by the ready
    /// file, or a member session's entry.
    fn change_links(&self, change: impl FnOnce(&mut LinkCount)) {
        if self.1.is_some() {
            return self.member(|member| change(&mut member.links));
        }
        self.0.links.send_modify(change);
        self.changed();
    }

    /// Links of the session up now and wanted, and every change of them.
    pub(crate) fn links(&self) -> watch::Receiver<LinkCount> {
        self.0.links.subscribe()
    }

    /// The counters of tunnel `name`, created at its first use.
    pub(crate) fn tunnel(&self, name: &str) -> Arc<TunnelStats> {
        lock(&self.0.tunnels).entry(name.to_string()).or_default().clone()
    }

    /// Records a visitor's connection as open; the returned guard records how it ended.
    pub(crate) fn open(&self, tunnel: &str, counters: Arc<TunnelStats>, visitor: SocketAddr) -> Visit {
        self.open_record(tunnel, counters, visitor, None)
    }

    /// Records a UDP flow as open, its packets counted in `datagrams`; the returned guard
    /// records how it ended.
    pub(crate) fn open_flow(
        &self,
        tunnel: &str,
        counters: Arc<TunnelStats>,
        visitor: SocketAddr,
        datagrams: Arc<Datagrams>,
    ) -> Visit {
        self.open_record(tunnel, counters, visitor, Some(datagrams))
    }

    /// `n` datagrams from the relay found no flow.
    pub(crate) fn unknown_flow(&self, n: usize) {
        if n > 0 {
            self.0.unknown_flow.fetch_add(n as u64, Relaxed);
        }
    }

    fn open_record(
        &self,
        tunnel: &str,
        counters: Arc<TunnelStats>,
        visitor: SocketAddr,
        datagrams: Option<Arc<Datagrams>>,
    ) -> Visit {
        let id = self.0.next_id.fetch_add(1, Relaxed);
        counters.open.fetch_add(1, Relaxed);
        counters.total.fetch_add(1, Relaxed);
        let progress = Arc::new(Progress::default());
        let record = Record {
            id,
            tunnel: tunnel.to_string(),
            visitor,
            opened_at: SystemTime::now(),
            opened: Instant::now(),
            progress: progress.clone(),
            datagrams: datagrams.clone(),
            ended: None,
        };
        lock(&self.0.connections).open.insert(id, record);
        self.changed();
        Visit { stats: self.clone(), counters, id, progress, datagrams, outcome: None }
    }

    fn close(&self, visit: &Visit, outcome: VisitEnd) {
        let Visit { counters, id, progress, datagrams, .. } = visit;
        if let VisitEnd::Failed { .. } = outcome {
            counters.failed.fetch_add(1, Relaxed);
        }
        {
            let mut connections = lock(&self.0.connections);
            // Under the lock a snapshot reads with, so it sees these bytes once: in the open
            // connection or in the tunnel's counters. A failed connection's bytes stay
            // counted too, as they were shown while it was open.
            let (to_visitor, to_local) = progress.moved();
            counters.to_local.fetch_add(to_local, Relaxed);
            counters.to_visitor.fetch_add(to_visitor, Relaxed);
            if let Some(datagrams) = datagrams {
                datagrams.add_to(&counters.datagrams);
            }
            if let Some(mut record) = connections.open.remove(id) {
                record.ended = Some((record.opened.elapsed(), outcome));
                connections.closed.push_front(record);
                connections.closed.truncate(RECENT);
            }
        }
        // Last, so a reader that sees the connection no longer open also finds it closed.
        counters.open.fetch_sub(1, Relaxed);
        self.changed();
    }
}

/// One open connection; dropping it without [`Visit::finish`] records it as interrupted.
pub(crate) struct Visit {
    stats: Stats,
    counters: Arc<TunnelStats>,
    id: u64,
    progress: Arc<Progress>,
    datagrams: Option<Arc<Datagrams>>,
    outcome: Option<VisitEnd>,
}

impl Visit {
    /// Where the splice counts the connection's bytes; its TCP side is the local server.
    pub(crate) fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The same counts, for I/O that outlives a borrow (an HTTP connection over the stream).
    pub(crate) fn shared_progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    pub(crate) fn finish(mut self, outcome: VisitEnd) {
        self.outcome = Some(outcome);
    }
}

impl Drop for Visit {
    fn drop(&mut self) {
        let outcome = self.outcome.take().unwrap_or(VisitEnd::Failed { reason: "interrupted".into() });
        self.stats.close(self, outcome);
    }
}

#[cfg(test)]
mod tests;
