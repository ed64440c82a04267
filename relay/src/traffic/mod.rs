//! What each tunnel carries: visitors open now, and visitors and bytes since the relay
//! started, kept by token and tunnel name so that a tunnel's counts carry on across its
//! agent's reconnects. Whether a tunnel is serving or parked is the claims table's to say
//! (see [`crate::claims`]); the views here join it with the counts. A tunnel the table has
//! not held for `reservation_ttl` is forgotten, as its reservation is, so a token that
//! churns through names cannot grow the label set forever.
//!
//! A visitor finds its tunnel by its session's link and the tunnel id the session granted,
//! as a claim's route carries them.
//!
//! Bytes are counted live without the splice touching any shared counter: each visitor's
//! splice bumps only its own [`Progress`], and whoever reads the counters (a scrape, the
//! API) first adds what open visitors carried since the last read, under the lock that
//! also guards a visitor's close. So the per-tunnel and relay-wide counters move during a
//! long transfer, never go down, and count every byte exactly once.

use burrow_common::sync;
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use burrow_common::splice::{Moved, Progress};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

#[cfg(test)]
mod tests;
mod udp;
mod views;

pub(crate) use self::udp::{Dropped, UdpCounts, UdpSeries};

use crate::{
    claims::{ClaimState, TunnelKey},
    metrics::{Direction, LOCAL_TO_VISITOR, VISITOR_TO_LOCAL},
    tokens::now,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TunnelBytes {
    token: String,
    tunnel: String,
    direction: &'static str,
}

impl TunnelBytes {
    fn of(key: &TunnelKey, direction: &'static str) -> Self {
        Self { token: key.token.clone(), tunnel: key.tunnel.clone(), direction }
    }
}

/// Tunnels of one token that no session serves whose counts are kept; see
/// [`Traffic::forget_oldest_idle_of`].
const IDLE_KEPT_PER_TOKEN: usize = 256;

pub(crate) struct Traffic {
    state: Mutex<State>,
    pub(crate) bytes: Family<TunnelBytes, Counter>,
    /// Every tunnel's bytes together, by direction.
    pub(crate) all_bytes: Family<Direction, Counter>,
    all: Bytes,
    /// Sessions admitted for a tunnel this relay had carried before.
    pub(crate) reconnects: Counter,
    /// UDP tunnels' datagrams and drops.
    pub(crate) udp: UdpSeries,
    next_visitor: AtomicU64,
}

#[derive(Default)]
struct State {
    tunnels: HashMap<TunnelKey, Held>,
    routes: HashMap<Route, (Arc<Tunnel>, u16)>,
    open: HashMap<u64, OpenVisitor>,
}

/// A session's connection (its stable id) and a tunnel id it granted.
type Route = (usize, u32);

/// One tunnel's counters, shared by every session that serves it.
pub(crate) struct Tunnel {
    key: TunnelKey,
    bytes: Bytes,
    visitors: AtomicU64,
}

/// Handles to a pair of byte counters, one per direction.
struct Bytes {
    to_local: Counter,
    to_visitor: Counter,
}

/// A tunnel as last granted, and when a claim of it was last seen.
struct Held {
    tunnel: Arc<Tunnel>,
    port: u16,
    /// An HTTP or TLS tunnel's public address; its port is 0.
    url: Option<String>,
    last_held: Instant,
}

struct OpenVisitor {
    tunnel: Arc<Tunnel>,
    port: u16,
    peer: SocketAddr,
    opened_at: u64,
    /// Visitor to local, then local to visitor, as the splice counts them.
    progress: Arc<Progress>,
    /// How much of `progress` the counters hold already.
    counted: Moved,
}

/// A tunnel of one session, as the session registers it.
pub(crate) struct CountedTunnel {
    pub(crate) id: u32,
    pub(crate) key: TunnelKey,
    pub(crate) port: u16,
    /// An HTTP or TLS tunnel's public address.
    pub(crate) url: Option<String>,
}

/// A session's tunnels: while the session serves, its visitors are counted to them.
pub(crate) struct SessionTunnels {
    traffic: Arc<Traffic>,
    conn: usize,
    tunnels: Vec<CountedTunnel>,
}

/// One visitor being carried; dropping it takes the visitor off the open list and counts
/// the last of its bytes.
pub(crate) struct Visit {
    traffic: Arc<Traffic>,
    id: u64,
    progress: Arc<Progress>,
}

impl Default for Traffic {
    fn default() -> Self {
        let all_bytes = Family::<Direction, Counter>::default();
        // Handles taken once, so counting does not look them up. One statement each:
        // `get_or_create` returns a guard on the family's lock, and a second call while the
        // first guard lives would wait for it forever.
        let to_local = all_bytes.get_or_create(&VISITOR_TO_LOCAL).clone();
        let to_visitor = all_bytes.get_or_create(&LOCAL_TO_VISITOR).clone();
        Self {
            state: Mutex::default(),
            bytes: Family::default(),
            all_bytes,
            all: Bytes { to_local, to_visitor },
            reconnects: Counter::default(),
            udp: UdpSeries::default(),
            next_visitor: AtomicU64::new(0),
        }
    }
}

impl Traffic {
    fn state(&self) -> MutexGuard<'_, State> {
        // Counters stay usable after a panic elsewhere; a count is never worth a crash.
        sync::lock(&self.state)
    }

    /// Holds a new session's tunnels in the counts, and counts the session as a reconnect
    /// if the relay carried any of its tunnels before. `conn` is the session connection's
    /// `stable_id`.
    pub(crate) fn open_session(self: &Arc<Self>, conn: usize, granted: Vec<CountedTunnel>) -> SessionTunnels {
        let mut state = self.state();
        let mut returning = false;
        for tunnel in &granted {
            returning |= self.serve_in(&mut state, conn, tunnel);
        }
        if returning {
            self.reconnects.inc();
        }
        SessionTunnels { traffic: self.clone(), conn, tunnels: granted }
    }

    /// Counts `tunnel` as served by the session `conn`; says whether it was known before.
    fn serve_in(&self, state: &mut State, conn: usize, tunnel: &CountedTunnel) -> bool {
        let known = state.tunnels.contains_key(&tunnel.key);
        let held = state.tunnels.entry(tunnel.key.clone()).or_insert_with(|| self.new_tunnel(&tunnel.key));
        held.last_held = Instant::now();
        held.port = tunnel.port;
        held.url.clone_from(&tunnel.url);
        let route = (held.tunnel.clone(), tunnel.port);
        state.routes.insert((conn, tunnel.id), route);
        if !known {
            self.forget_oldest_idle_of(state, &tunnel.key.token);
        }
        known
    }

    /// Keeps at most [`IDLE_KEPT_PER_TOKEN`] tunnels of `token` that nothing serves,
    /// forgetting the one held longest ago: a token opening fresh names one after another
    /// would otherwise grow the counts and the metrics page for the whole reservation TTL.
    fn forget_oldest_idle_of(&self, state: &mut State, token: &str) {
        // Only the table holds an idle tunnel's counters; routes and open visitors hold the rest.
        let idle =
            || state.tunnels.iter().filter(|(key, held)| key.token == token && Arc::strong_count(&held.tunnel) == 1);
        if idle().count() <= IDLE_KEPT_PER_TOKEN {
            return;
        }
        let Some(oldest) = idle().min_by_key(|(_, held)| held.last_held).map(|(key, _)| key.clone()) else { return };
        state.tunnels.remove(&oldest);
        self.forget_series(&oldest);
    }

    fn forget_series(&self, key: &TunnelKey) {
        for direction in [VISITOR_TO_LOCAL.direction, LOCAL_TO_VISITOR.direction] {
            self.bytes.remove(&TunnelBytes::of(key, direction));
        }
        self.forget_udp_series(key);
    }

    fn new_tunnel(&self, key: &TunnelKey) -> Held {
        // One statement each: `get_or_create` returns a guard on the family's lock.
        let to_local = self.bytes.get_or_create(&TunnelBytes::of(key, VISITOR_TO_LOCAL.direction)).clone();
        let to_visitor = self.bytes.get_or_create(&TunnelBytes::of(key, LOCAL_TO_VISITOR.direction)).clone();
        let bytes = Bytes { to_local, to_visitor };
        let tunnel = Arc::new(Tunnel { key: key.clone(), bytes, visitors: AtomicU64::new(0) });
        Held { tunnel, port: 0, url: None, last_held: Instant::now() }
    }

    /// Puts a visitor on the open list of the tunnel `tunnel` of the session whose
    /// connection's `stable_id` is `conn`.
    pub(crate) fn visit(self: &Arc<Self>, conn: usize, tunnel: u32, peer: SocketAddr) -> Visit {
        let id = self.next_visitor.fetch_add(1, Ordering::Relaxed);
        let progress = Arc::new(Progress::default());
        let mut state = self.state();
        // None only for a visitor that raced its session's end; only the relay's totals
        // count it, at its close.
        if let Some((tunnel, port)) = state.routes.get(&(conn, tunnel)).cloned() {
            tunnel.visitors.fetch_add(1, Ordering::Relaxed);
            let open =
                OpenVisitor { tunnel, port, peer, opened_at: now(), progress: progress.clone(), counted: (0, 0) };
            state.open.insert(id, open);
        }
        Visit { traffic: self.clone(), id, progress }
    }

    /// Brings the byte counters up to what open visitors have carried so far; called before
    /// the counters are read.
    pub(crate) fn catch_up(&self) {
        self.catch_up_in(&mut self.state());
    }

    fn catch_up_in(&self, state: &mut State) {
        for visitor in state.open.values_mut() {
            visitor.count(&self.all);
        }
    }

    /// Forgets tunnels no claim has held for `ttl`, with their series; `claimed` are the
    /// tunnels the claims table holds now.
    pub(crate) fn forget_idle(&self, ttl: Duration, claimed: &[(TunnelKey, ClaimState)]) {
        let claimed: HashSet<&TunnelKey> = claimed.iter().map(|(key, _)| key).collect();
        let mut state = self.state();
        let now = Instant::now();
        state.tunnels.retain(|key, held| {
            if claimed.contains(key) {
                held.last_held = now;
                return true;
            }
            let keep = now.duration_since(held.last_held) < ttl;
            if !keep {
                self.forget_series(key);
            }
            keep
        });
    }
}

impl SessionTunnels {
    /// The session has ended: no new visitor can reach its connection any more.
    pub(crate) fn ended(&mut self) {
        let mut state = self.traffic.state();
        for granted in &self.tunnels {
            state.routes.remove(&(self.conn, granted.id));
        }
    }

    /// A tunnel the session opened after its start (its agent's config changed).
    pub(crate) fn add(&mut self, tunnel: CountedTunnel) {
        self.traffic.serve_in(&mut self.traffic.state(), self.conn, &tunnel);
        self.tunnels.push(tunnel);
    }

    /// A tunnel the session closed while it goes on serving the others.
    pub(crate) fn remove(&mut self, id: u32) {
        let Some(index) = self.tunnels.iter().position(|g| g.id == id) else { return };
        let granted = self.tunnels.swap_remove(index);
        self.traffic.state().routes.remove(&(self.conn, granted.id));
    }

    /// Names and ports of the session's tunnels.
    pub(crate) fn granted(&self) -> impl Iterator<Item = &CountedTunnel> {
        self.tunnels.iter()
    }
}

impl Drop for SessionTunnels {
    fn drop(&mut self) {
        self.ended();
    }
}

impl Bytes {
    fn add(&self, (to_local, to_visitor): Moved) {
        self.to_local.inc_by(to_local);
        self.to_visitor.inc_by(to_visitor);
    }
}

impl OpenVisitor {
    /// Adds what the visitor carried since the counters last saw it.
    fn count(&mut self, all: &Bytes) {
        let now = self.progress.moved();
        // Most open visitors are idle at any read; they cost two loads, not four shared adds.
        if now == self.counted {
            return;
        }
        let new = (now.0.saturating_sub(self.counted.0), now.1.saturating_sub(self.counted.1));
        self.counted = now;
        self.tunnel.bytes.add(new);
        all.add(new);
    }
}

impl Visit {
    /// Where the splice counts the visitor's bytes: visitor to local, then local to visitor.
    pub(crate) fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The same counts, for I/O that outlives a borrow (an HTTP connection over the stream).
    pub(crate) fn shared_progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }
}

impl Drop for Visit {
    fn drop(&mut self) {
        let mut state = self.traffic.state();
        // Counted and taken off the list under one lock, so no reader sees its bytes twice.
        match state.open.remove(&self.id) {
            Some(mut open) => open.count(&self.traffic.all),
            None => self.traffic.all.add(self.progress.moved()),
        }
    }
}
