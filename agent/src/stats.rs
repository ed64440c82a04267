//! What the agent has carried, kept cheap enough to update on every stream: per-tunnel
//! counters, the last connections, and the session's state and QUIC connection. The console
//! and the inspector read it through [`Stats::snapshot`].

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::watch;

use crate::{PublicTunnel, Status};

/// Closed connections kept for display; open ones are always kept.
pub const RECENT: usize = 50;

/// A cheap handle; clones share the same counters.
#[derive(Clone)]
pub struct Stats(pub(crate) Arc<Shared>);

pub(crate) struct Shared {
    pub(crate) session: Mutex<Session>,
    pub(crate) tunnels: Mutex<HashMap<String, Arc<TunnelStats>>>,
    pub(crate) connections: Mutex<Connections>,
    next_id: AtomicU64,
    /// Bumped on every change, so watchers wake without polling.
    changes: watch::Sender<u64>,
}

pub(crate) struct Session {
    pub(crate) relay: String,
    pub(crate) state: State,
    pub(crate) since: Instant,
    pub(crate) conn: Option<quinn::Connection>,
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

/// One visitor's connection through a tunnel.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) id: u64,
    pub(crate) tunnel: String,
    pub(crate) visitor: SocketAddr,
    pub(crate) opened_at: SystemTime,
    pub(crate) opened: Instant,
    pub(crate) ended: Option<(Duration, Outcome)>,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Both directions finished; bytes carried to the local server and back to the visitor.
    Closed {
        to_local: u64,
        to_visitor: u64,
    },
    Failed {
        reason: String,
    },
}

/// Counters of one tunnel, by name, so they carry over reconnects.
#[derive(Default)]
pub(crate) struct TunnelStats {
    pub(crate) open: AtomicU64,
    pub(crate) total: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) to_local: AtomicU64,
    pub(crate) to_visitor: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self(Arc::new(Shared {
            session: Mutex::new(Session {
                relay: String::new(),
                state: State::Connecting { retry: None },
                since: Instant::now(),
                conn: None,
                tunnels: Vec::new(),
            }),
            tunnels: Mutex::default(),
            connections: Mutex::default(),
            next_id: AtomicU64::new(1),
            changes: watch::Sender::new(0),
        }))
    }
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stats").finish_non_exhaustive()
    }
}

/// A poisoned lock only means another thread panicked mid-update of a display counter;
/// the data is still good enough to show.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Stats {
    /// Wakes on every change: a connection opened or closed, a new session state.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.changes.subscribe()
    }

    fn changed(&self) {
        self.0.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn set_relay(&self, relay: String) {
        lock(&self.0.session).relay = relay;
    }

    /// Publishes `status` to the caller's channel and records it here with the time.
    pub(crate) fn publish(&self, channel: &watch::Sender<Status>, status: Status) {
        {
            let mut session = lock(&self.0.session);
            session.state = match (&status, &session.state) {
                // A retry keeps saying why the last attempt failed while it waits for an answer.
                (Status::Connecting, State::Retrying { attempt, reason, .. }) => {
                    State::Connecting { retry: Some((*attempt, reason.clone())) }
                }
                (Status::Connecting, _) => State::Connecting { retry: None },
                (Status::Online(tunnels), _) => {
                    session.tunnels = tunnels.clone();
                    State::Online
                }
                (Status::Retrying { attempt, delay, reason }, _) => {
                    State::Retrying { attempt: *attempt, delay: *delay, reason: reason.clone() }
                }
            };
            session.since = Instant::now();
        }
        channel.send_replace(status);
        self.changed();
    }

    pub(crate) fn stopped(&self, error: Option<String>) {
        {
            let mut session = lock(&self.0.session);
            session.state = State::Stopped { error };
            session.since = Instant::now();
            session.conn = None;
        }
        self.changed();
    }

    /// The QUIC connection whose path statistics are shown, or none between sessions.
    pub(crate) fn set_connection(&self, conn: Option<quinn::Connection>) {
        lock(&self.0.session).conn = conn;
        self.changed();
    }

    /// The counters of tunnel `name`, created at its first use.
    pub(crate) fn tunnel(&self, name: &str) -> Arc<TunnelStats> {
        lock(&self.0.tunnels).entry(name.to_string()).or_default().clone()
    }

    /// Records a visitor's connection as open; the returned guard records how it ended.
    pub(crate) fn open(&self, tunnel: &str, counters: Arc<TunnelStats>, visitor: SocketAddr) -> Visit {
        let id = self.0.next_id.fetch_add(1, Relaxed);
        counters.open.fetch_add(1, Relaxed);
        counters.total.fetch_add(1, Relaxed);
        let record = Record {
            id,
            tunnel: tunnel.to_string(),
            visitor,
            opened_at: SystemTime::now(),
            opened: Instant::now(),
            ended: None,
        };
        lock(&self.0.connections).open.insert(id, record);
        self.changed();
        Visit { stats: self.clone(), counters, id, outcome: None }
    }

    fn close(&self, counters: &TunnelStats, id: u64, outcome: Outcome) {
        match &outcome {
            Outcome::Closed { to_local, to_visitor } => {
                counters.to_local.fetch_add(*to_local, Relaxed);
                counters.to_visitor.fetch_add(*to_visitor, Relaxed);
            }
            Outcome::Failed { .. } => {
                counters.failed.fetch_add(1, Relaxed);
            }
        }
        {
            let mut connections = lock(&self.0.connections);
            if let Some(mut record) = connections.open.remove(&id) {
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
    outcome: Option<Outcome>,
}

impl Visit {
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }
}

impl Drop for Visit {
    fn drop(&mut self) {
        let outcome = self.outcome.take().unwrap_or(Outcome::Failed { reason: "interrupted".into() });
        self.stats.close(&self.counters, self.id, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_open_connections_and_the_last_closed_ones() {
        let stats = Stats::default();
        let web = stats.tunnel("web");
        let visitor = SocketAddr::from(([192, 0, 2, 1], 5000));
        let _held = stats.open("web", web.clone(), visitor);
        for i in 0..60 {
            stats.open("web", web.clone(), visitor).finish(Outcome::Closed { to_local: i, to_visitor: 2 * i });
        }
        drop(stats.open("web", web.clone(), visitor));

        let now = stats.snapshot();
        assert_eq!(now.connections.len(), RECENT);
        assert_eq!(now.connections[0].state, "open", "open connections come first");
        assert_eq!(now.connections[1].reason.as_deref(), Some("interrupted"), "a dropped visit is not lost");
        assert_eq!(now.connections[2].to_local, Some(59), "then the newest closed");
        assert_eq!(web.total.load(Relaxed), 62);
        assert_eq!(web.open.load(Relaxed), 1);
        assert_eq!(web.failed.load(Relaxed), 1);
        assert_eq!(web.to_local.load(Relaxed), (0..60).sum::<u64>());
        assert_eq!(web.to_visitor.load(Relaxed), 2 * (0..60).sum::<u64>());
    }
}
