//! The claims table: who holds each public place (TCP or UDP port, subdomain, custom
//! hostname) on this relay now.
//!
//! One entry per place, one state machine for every kind of place:
//! - free → *claiming*: decided under the table's lock (per-token limit, takeover rule);
//! - claiming → *serving*: the store's compare-and-set agreed; otherwise the entry goes;
//! - serving → *parked*: the session was lost; visitors wait on the claim's handover;
//! - parked → claiming → serving: the tunnel's next session took the claim over (so does a
//!   serving claim whose session no longer answers);
//! - serving or parked → free: the session ended, or the parking deadline passed. The store
//!   keeps the place *reserved* for the same tunnel for `reservation_ttl`.
//!
//! A claim is decided under the table's short lock (one per-token limit, one takeover
//! rule), marked as being claimed, confirmed by the [`Store`](crate::store::Store)'s
//! compare-and-set outside the lock, then finished or undone. A serving claim holds the
//! value that serves its visitors (a [`Route`] in the relay, anything [`Holder`] in tests);
//! a parked one holds the handover its waiting visitors watch. A port claim also owns its
//! bound socket (a TCP listener or a UDP socket), kept bound while parked. Views (metrics,
//! the HTTP listeners' lookups) read the table; nothing else keeps a copy of it.

mod claiming;
mod kinds;
mod names;
mod parking;
mod place;
mod route;
#[cfg(test)]
mod tests;

use burrow_common::sync;
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use burrow_common::CloseCode;
use tokio::{
    net::{TcpListener, UdpSocket},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
};

pub(crate) use self::place::{Place, PortSpace, TunnelKey};
pub(crate) use self::{
    claiming::{Bound, ClaimError, Claimant, Claimed, with_takeover},
    kinds::{claim_port, release},
    names::claim_name,
    parking::{Parked, until_taken_over},
    route::{Route, RouteKind},
};
use crate::store::StoreFuture;

/// Identifies one session, so a stale session's cleanup cannot release its successor's place.
pub(crate) type SessionId = u64;

/// What the table needs of whatever serves a claim.
pub(crate) trait Holder: Send + Sync + 'static {
    /// The session that serves through it.
    fn session(&self) -> SessionId;
    /// Ends that session, telling its agent why.
    fn close(&self, code: CloseCode);
    /// Whether the session still answers; asked before a newer session of the same tunnel
    /// may replace it.
    fn answers(&self) -> StoreFuture<'_, bool>;
}

/// What a port claim holds bound for its visitors.
#[derive(Clone)]
pub(crate) enum PublicSocket {
    Tcp(Arc<TcpListener>),
    Udp(Arc<UdpSocket>),
}

/// Sending the next session's serving value on it resumes every visitor waiting on a parked
/// claim; dropping it tells them that no one comes.
pub(crate) type Handover<R> = watch::Sender<Option<Arc<R>>>;

/// What a visitor of a parked claim waits on.
pub(crate) type Successor<R> = watch::Receiver<Option<Arc<R>>>;

pub(crate) struct Claims<R> {
    entries: Mutex<HashMap<Place, Entry<R>>>,
    /// Changed by a config reload.
    max_per_token: AtomicUsize,
    /// Claims granted so far: whoever remembers what the store said of a vacant place knows
    /// by this whether a claim may have changed it since.
    granted: AtomicU64,
}

struct Entry<R> {
    key: TunnelKey,
    session: SessionId,
    /// A port's bound socket, from the claim until the place is released.
    socket: Option<PublicSocket>,
    state: State<R>,
}

enum State<R> {
    /// Decided here, waiting for the store; a takeover of a parked claim keeps its waiting
    /// visitors meanwhile.
    Claiming(Option<Parking<R>>),
    Serving(Arc<R>),
    Parked(Parking<R>),
}

struct Parking<R> {
    handover: Handover<R>,
    /// The places of visitors waiting, `capacity` at most.
    waiting: Arc<Semaphore>,
    capacity: usize,
}

/// What a visitor finds at a place.
pub(crate) enum Lookup<R> {
    Serving(Arc<R>),
    /// The serving session was lost; its agent may be back within the parking time. The
    /// permit is the visitor's place among those waiting; none when they are too many.
    Parked(Successor<R>, Option<OwnedSemaphorePermit>),
    /// No session holds the place; the store may still reserve it.
    Vacant,
}

/// Where a held claim stands, as the views show it; a serving claim outranks a parked one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ClaimState {
    Parked,
    Serving,
}

impl ClaimState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ClaimState::Parked => "parked",
            ClaimState::Serving => "serving",
        }
    }
}

/// The table's figures for the metrics page.
pub(crate) struct Counts {
    pub(crate) serving: usize,
    pub(crate) parked: usize,
    pub(crate) parked_visitors: usize,
}

impl<R: Holder> Claims<R> {
    pub(crate) fn new(max_per_token: usize) -> Self {
        Self { entries: Mutex::default(), max_per_token: AtomicUsize::new(max_per_token), granted: AtomicU64::new(0) }
    }

    /// How many claims were granted so far.
    pub(crate) fn granted(&self) -> u64 {
        self.granted.load(Ordering::Acquire)
    }

    pub(crate) fn set_max_per_token(&self, max: usize) {
        self.max_per_token.store(max, Ordering::Relaxed);
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<Place, Entry<R>>> {
        // Every change is one insert, remove or state swap, so a panic elsewhere leaves the
        // table usable.
        sync::lock(&self.entries)
    }

    pub(crate) fn lookup(&self, place: &Place) -> Lookup<R> {
        match self.entries().get(place).map(|e| &e.state) {
            Some(State::Serving(route)) => Lookup::Serving(route.clone()),
            Some(State::Parked(parking) | State::Claiming(Some(parking))) => {
                Lookup::Parked(parking.handover.subscribe(), parking.waiting.clone().try_acquire_owned().ok())
            }
            Some(State::Claiming(None)) | None => Lookup::Vacant,
        }
    }

    /// Whether anyone holds or is claiming `place`.
    pub(crate) fn is_held(&self, place: &Place) -> bool {
        self.entries().contains_key(place)
    }

    /// Frees `place` if `session` still holds it, in whatever state; returns whose it was,
    /// for the caller to release it in the store. A parked claim's waiting visitors hear
    /// that no one comes.
    pub(crate) fn release(&self, place: &Place, session: SessionId) -> Option<TunnelKey> {
        let mut entries = self.entries();
        entries.get(place).filter(|e| e.session == session)?;
        entries.remove(place).map(|e| e.key)
    }

    /// Every tunnel holding a claim now, and how; claims still being decided are left out.
    pub(crate) fn held(&self) -> Vec<(TunnelKey, ClaimState)> {
        let entries = self.entries();
        let state = |entry: &Entry<R>| match entry.state {
            State::Serving(_) => Some(ClaimState::Serving),
            State::Parked(_) => Some(ClaimState::Parked),
            State::Claiming(_) => None,
        };
        entries.values().filter_map(|entry| Some((entry.key.clone(), state(entry)?))).collect()
    }

    pub(crate) fn counts(&self) -> Counts {
        let entries = self.entries();
        let mut counts = Counts { serving: 0, parked: 0, parked_visitors: 0 };
        for entry in entries.values() {
            match &entry.state {
                State::Serving(_) => counts.serving += 1,
                State::Parked(parking) => {
                    counts.parked += 1;
                    counts.parked_visitors += parking.capacity.saturating_sub(parking.waiting.available_permits());
                }
                State::Claiming(_) => {}
            }
        }
        counts
    }
}
