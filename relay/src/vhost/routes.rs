//! Which session serves each subdomain right now. The HTTP and HTTPS listeners look every
//! request's hostname up here; sessions claim, park and release names as they do ports.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use burrow_common::{CloseCode, Refusal};
use tokio::sync::watch;

use super::{access::Access, names};
use crate::{
    limits::Places,
    registry::{ClaimError, Claimant, SessionId},
    reservations::{Place, Reservations, TunnelKey},
};

/// How many random names are tried before giving up; with tens of thousands of names and a
/// few hundred tunnels, one collision is already rare.
const RANDOM_NAME_ATTEMPTS: usize = 32;

/// Where a subdomain's visitors go.
pub(crate) struct Route {
    pub(crate) conn: quinn::Connection,
    /// The tunnel id the session granted, carried in each stream header.
    pub(crate) tunnel: u32,
    pub(crate) kind: RouteKind,
    /// The tunnel's cap on visitor connections open at once.
    pub(crate) places: Places,
    /// The session's visitor work: what crosses the tunnel runs here, so the session's drain
    /// on shutdown waits for it.
    pub(crate) visitors: tokio_util::task::TaskTracker,
}

pub(crate) enum RouteKind {
    /// Requests are read here and forwarded one visitor connection per stream.
    Http(Access),
    /// TLS bytes are passed through; the agent's local server ends the TLS.
    Tls,
}

/// A route that a lost session's successor will hand over, or that never comes.
pub(crate) type Successor = watch::Receiver<Option<Arc<Route>>>;

pub(crate) enum Lookup {
    Serving(Arc<Route>),
    /// The serving session was lost; its agent may be back within the parking time. The
    /// permit is the request's place among those waiting; none when they are too many.
    Parked(Successor, Option<tokio::sync::OwnedSemaphorePermit>),
    /// Reserved for a tunnel whose agent is gone.
    Offline,
    Unknown,
}

struct Holder {
    key: TunnelKey,
    session: SessionId,
    state: State,
}

enum State {
    Serving(Arc<Route>),
    /// The handover, and the places of requests waiting for it.
    Parked(watch::Sender<Option<Arc<Route>>>, Arc<tokio::sync::Semaphore>),
}

pub(crate) struct Routes {
    live: Mutex<HashMap<String, Holder>>,
    reservations: Arc<dyn Reservations>,
    /// Changed by a config reload.
    rules: Mutex<Rules>,
}

/// The reserved names and the per-token cap, as configured now.
struct Rules {
    reserved_names: Vec<String>,
    max_per_token: usize,
}

impl Routes {
    pub(crate) fn new(reservations: Arc<dyn Reservations>, reserved_names: Vec<String>, max_per_token: usize) -> Self {
        Self { live: Mutex::default(), reservations, rules: Mutex::new(Rules { reserved_names, max_per_token }) }
    }

    pub(crate) fn set_rules(&self, reserved_names: Vec<String>, max_per_token: usize) {
        *self.rules.lock().unwrap_or_else(PoisonError::into_inner) = Rules { reserved_names, max_per_token };
    }

    fn live(&self) -> MutexGuard<'_, HashMap<String, Holder>> {
        // Every change is one insert or remove, so a panic elsewhere leaves the map usable.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Names that `token` holds, serving or parked.
    pub(crate) fn held_by(&self, token: &str) -> usize {
        self.live().values().filter(|h| h.key.token == token).count()
    }

    /// Gives the claimant the subdomain it asked for, the one reserved for its tunnel, or a
    /// fresh random one. `held_elsewhere` counts the token's tunnels on ports.
    pub(crate) fn claim(
        &self,
        who: &Claimant<'_>,
        requested: Option<&str>,
        route: Route,
        held_elsewhere: usize,
    ) -> Result<String, ClaimError> {
        let (reserved, max) = {
            let rules = self.rules.lock().unwrap_or_else(PoisonError::into_inner);
            (rules.reserved_names.clone(), rules.max_per_token)
        };
        let mut live = self.live();
        // As for ports: one name of the claimant's own tunnel may be taken over for free.
        let held = live.values().filter(|h| h.key.token == who.key.token).count()
            - usize::from(live.values().any(|h| h.key == *who.key));
        if held + held_elsewhere >= max {
            return Err(Refusal::TokenTunnelLimit { max }.into());
        }
        let name = match requested {
            Some(asked) => names::check_subdomain(asked, &reserved)
                .map_err(|e| Refusal::BadTunnel { name: who.key.tunnel.clone(), why: e.to_string() })?,
            None => match self.reservations.place_for(who.key) {
                Some(Place::Subdomain(name)) => name,
                _ => self.unused_random_name(&live, &reserved, &who.key.tunnel)?,
            },
        };
        let parked = match live.get(&name).map(|h| (h.key == *who.key, &h.state, h.session)) {
            Some((false, ..)) => return Err(Refusal::SubdomainTaken { name }.into()),
            Some((true, State::Serving(route), session)) if who.replacing != Some(session) => {
                return Err(ClaimError::HeldBySameTunnel { conn: route.conn.clone(), session });
            }
            Some((true, State::Serving(route), _)) => {
                tracing::info!(%name, "replacing the unresponsive previous session of this tunnel");
                CloseCode::Replaced.close(&route.conn);
                None
            }
            Some((true, State::Parked(handover, _), _)) => Some(handover.clone()),
            None => {
                let place = Place::Subdomain(name.clone());
                if self.reservations.owner_of(&place).is_some_and(|owner| owner != *who.key) {
                    return Err(Refusal::SubdomainTaken { name }.into());
                }
                None
            }
        };
        if let Err(e) = self.reservations.hold(who.key, &Place::Subdomain(name.clone())) {
            tracing::warn!(%name, "could not record reservation: {e:#}");
        }
        let route = Arc::new(route);
        let holder = Holder { key: who.key.clone(), session: who.session, state: State::Serving(route.clone()) };
        live.insert(name.clone(), holder);
        if let Some(handover) = parked {
            tracing::info!(%name, "the tunnel's agent is back; waiting requests go to the new session");
            handover.send_replace(Some(route));
        }
        Ok(name)
    }

    fn unused_random_name(
        &self,
        live: &HashMap<String, Holder>,
        reserved: &[String],
        tunnel: &str,
    ) -> Result<String, Refusal> {
        (0..RANDOM_NAME_ATTEMPTS)
            .map(|_| names::random_subdomain())
            .find(|name| {
                !live.contains_key(name)
                    && !reserved.contains(name)
                    && self.reservations.owner_of(&Place::Subdomain(name.clone())).is_none()
            })
            .ok_or_else(|| Refusal::BadTunnel {
                name: tunnel.to_string(),
                why: "no unused random subdomain was found; ask for a name of your own".into(),
            })
    }

    pub(crate) fn lookup(&self, name: &str) -> Lookup {
        match self.live().get(name).map(|h| &h.state) {
            Some(State::Serving(route)) => Lookup::Serving(route.clone()),
            Some(State::Parked(handover, waiting)) => {
                Lookup::Parked(handover.subscribe(), waiting.clone().try_acquire_owned().ok())
            }
            None if self.reservations.owner_of(&Place::Subdomain(name.to_string())).is_some() => Lookup::Offline,
            None => Lookup::Unknown,
        }
    }

    /// Frees `name` if `session` still holds it, serving or parked.
    pub(crate) fn release(&self, name: &str, session: SessionId) {
        let mut live = self.live();
        let Some(holder) = live.get(name).filter(|h| h.session == session) else {
            return;
        };
        if let Err(e) = self.reservations.release(&holder.key, &Place::Subdomain(name.to_string())) {
            tracing::warn!(%name, "could not record reservation release: {e:#}");
        }
        // Dropping a parked holder's handover tells its waiting requests that no one comes.
        live.remove(name);
    }

    /// Keeps `name` for the next session of its tunnel if the lost `session` still serves
    /// it; up to `max_waiting` requests wait for that session meanwhile. Says whether it did.
    pub(crate) fn park(&self, name: &str, session: SessionId, max_waiting: usize) -> bool {
        let mut live = self.live();
        let Some(holder) = live.get_mut(name).filter(|h| h.session == session) else {
            return false;
        };
        let waiting = Arc::new(tokio::sync::Semaphore::new(max_waiting));
        holder.state = State::Parked(watch::channel(None).0, waiting);
        true
    }
}
