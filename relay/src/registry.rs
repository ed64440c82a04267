//! Live tunnels: which session serves which public port right now.
//!
//! Claims are decided under one short lock with no await inside, so two agents racing for a
//! port cannot both win. Reservations decide who may take a free port; live holders decide
//! who has it now. A holder whose session was lost may be parked: its port stays bound, and
//! only the next session of the same tunnel can take it, visitors included.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use burrow_common::{CloseCode, PortRange, Refusal};
use rand::Rng;
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::watch,
};

use crate::{
    parking::{Handover, ParkedPort},
    reservations::{Place, Reservations, TunnelKey},
    tokens::Grant,
};

const LISTEN_BACKLOG: u32 = 1024;

/// Identifies one session, so a stale session's cleanup cannot release its successor's port.
pub(crate) type SessionId = u64;

struct Holder {
    key: TunnelKey,
    session: SessionId,
    listener: Arc<TcpListener>,
    state: Held,
}

enum Held {
    Serving(quinn::Connection),
    /// The session was lost; visitors wait on the handover for the tunnel's next session.
    Parked(Handover),
}

/// A port granted to a session, with its bound listener.
pub(crate) struct Claim {
    pub(crate) port: u16,
    pub(crate) listener: Arc<TcpListener>,
    /// Set when the port was parked: the new session must hand its visitors over.
    pub(crate) parked: Option<Handover>,
}

pub(crate) struct Registry {
    live: Mutex<HashMap<u16, Holder>>,
    reservations: Arc<dyn Reservations>,
    range: PortRange,
    bind_ip: IpAddr,
    /// Changed by a config reload.
    max_per_token: AtomicUsize,
}

/// Who is asking for a port.
pub(crate) struct Claimant<'a> {
    pub(crate) key: &'a TunnelKey,
    pub(crate) grant: &'a Grant,
    pub(crate) session: SessionId,
    pub(crate) conn: &'a quinn::Connection,
    /// A session of the same tunnel that the caller found dead and may replace.
    pub(crate) replacing: Option<SessionId>,
}

pub(crate) enum ClaimError {
    Refused(Refusal),
    /// Another session of the same token and tunnel name holds the port; the caller must
    /// find out whether it is still alive before claiming with `replacing` set.
    HeldBySameTunnel {
        conn: quinn::Connection,
        session: SessionId,
    },
}

impl From<Refusal> for ClaimError {
    fn from(refusal: Refusal) -> Self {
        ClaimError::Refused(refusal)
    }
}

impl Registry {
    pub(crate) fn new(
        reservations: Arc<dyn Reservations>,
        range: PortRange,
        bind_ip: IpAddr,
        max_per_token: usize,
    ) -> Self {
        Self { live: Mutex::default(), reservations, range, bind_ip, max_per_token: AtomicUsize::new(max_per_token) }
    }

    pub(crate) fn set_max_per_token(&self, max: usize) {
        self.max_per_token.store(max, Ordering::Relaxed);
    }

    /// Ports that `token` holds, serving or parked.
    pub(crate) fn held_by(&self, token: &str) -> usize {
        let Ok(live) = self.live.lock() else { return 0 };
        live.values().filter(|h| h.key.token == token).count()
    }

    /// Gives the claimant a port; `held_elsewhere` counts the token's tunnels on subdomains.
    pub(crate) fn claim(
        &self,
        who: &Claimant<'_>,
        requested: Option<u16>,
        held_elsewhere: usize,
    ) -> Result<Claim, ClaimError> {
        let mut live = self.live.lock().map_err(|_| Refusal::NoFreePort { range: self.range.to_string() })?;
        // One place of the claimant's own tunnel, held by a session it replaces or parked, is
        // not counted: taking it over adds nothing. Every other place of the token counts,
        // however many sessions ask for the same tunnel name.
        let held_by_token = live.values().filter(|h| h.key.token == who.key.token).count()
            - usize::from(live.values().any(|h| h.key == *who.key));
        let max = self.max_per_token.load(Ordering::Relaxed);
        if held_by_token + held_elsewhere >= max {
            return Err(Refusal::TokenTunnelLimit { max }.into());
        }
        let allowed = |port: u16| self.range.contains(port) && who.grant.allows(port);
        if let Some(port) = requested {
            if !allowed(port) {
                return Err(Refusal::PortNotAllowed { port, allowed: who.grant.describe_ports(self.range) }.into());
            }
            return self.take(&mut live, who, port)?.ok_or(Refusal::PortTaken { port }.into());
        }
        let reserved = match self.reservations.place_for(who.key) {
            Some(Place::Port(port)) => Some(port),
            _ => None,
        };
        if let Some(port) = reserved.filter(|p| allowed(*p))
            && let Some(claim) = self.take(&mut live, who, port)?
        {
            return Ok(claim);
        }
        let offset = rand::rng().random_range(0..self.range.len());
        (0..self.range.len())
            .filter_map(|i| u16::try_from(usize::from(self.range.start) + (offset + i) % self.range.len()).ok())
            .filter(|port| allowed(*port))
            .find_map(|port| self.take(&mut live, who, port).ok().flatten())
            .ok_or_else(|| Refusal::NoFreePort { range: who.grant.describe_ports(self.range) }.into())
    }

    /// Gives `port` to the claimant if it is free and not reserved for someone else, if it is
    /// parked for the claimant's tunnel, or if the claimant may replace the session of the
    /// same tunnel that holds it.
    fn take(
        &self,
        live: &mut HashMap<u16, Holder>,
        who: &Claimant<'_>,
        port: u16,
    ) -> Result<Option<Claim>, ClaimError> {
        let (listener, parked) = match live.get(&port) {
            Some(holder) if holder.key != *who.key => return Ok(None),
            Some(holder) => match &holder.state {
                Held::Serving(conn) if who.replacing != Some(holder.session) => {
                    return Err(ClaimError::HeldBySameTunnel { conn: conn.clone(), session: holder.session });
                }
                Held::Serving(conn) => {
                    tracing::info!(port, "replacing the unresponsive previous session of this tunnel");
                    CloseCode::Replaced.close(conn);
                    (holder.listener.clone(), None)
                }
                Held::Parked(handover) => {
                    tracing::info!(port, "the tunnel's agent is back; its parked visitors go to the new session");
                    (holder.listener.clone(), Some(handover.clone()))
                }
            },
            None => {
                if self.reservations.owner_of(&Place::Port(port)).is_some_and(|owner| owner != *who.key) {
                    return Ok(None);
                }
                match self.bind(port) {
                    Some(listener) => (Arc::new(listener), None),
                    None => return Ok(None),
                }
            }
        };
        if let Err(e) = self.reservations.hold(who.key, &Place::Port(port)) {
            tracing::warn!(port, "could not record reservation: {e:#}");
        }
        let state = Held::Serving(who.conn.clone());
        let holder = Holder { key: who.key.clone(), session: who.session, listener: listener.clone(), state };
        live.insert(port, holder);
        Ok(Some(Claim { port, listener, parked }))
    }

    /// Waits until the reservations made so far are stored, so a relay killed right after
    /// welcoming an agent still gives it the same port when it comes back. Bounded: a slow
    /// disk delays a Welcome by at most `within`, never blocks it.
    pub(crate) async fn reservations_saved(&self, within: std::time::Duration) {
        let Some((target, mut saved)) = self.reservations.save_point() else {
            return;
        };
        if tokio::time::timeout(within, saved.wait_for(|stored| *stored >= target)).await.is_err() {
            tracing::warn!("port reservations not yet on disk; welcoming the agent anyway");
        }
    }

    fn bind(&self, port: u16) -> Option<TcpListener> {
        let addr = SocketAddr::new(self.bind_ip, port);
        let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
        let bound = socket.and_then(|s| {
            // Lets a restarted relay rebind ports that still have connections in TIME_WAIT.
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            s.listen(LISTEN_BACKLOG)
        });
        bound.inspect_err(|e| tracing::debug!(port, "cannot bind public port: {e}")).ok()
    }

    /// Frees `port` if `session` still holds it, serving or parked; says whether it did.
    pub(crate) fn release(&self, port: u16, session: SessionId) -> bool {
        let Ok(mut live) = self.live.lock() else {
            return false;
        };
        let Some(holder) = live.get(&port).filter(|h| h.session == session) else {
            return false;
        };
        if let Err(e) = self.reservations.release(&holder.key, &Place::Port(port)) {
            tracing::warn!(port, "could not record reservation release: {e:#}");
        }
        live.remove(&port);
        true
    }

    /// Keeps `port` bound for the next session of its tunnel, if the lost `session` still
    /// serves it; only that tunnel can take it now, or `release` free it.
    pub(crate) fn park(&self, port: u16, session: SessionId) -> Option<ParkedPort> {
        let mut live = self.live.lock().ok()?;
        let holder = live.get_mut(&port).filter(|h| h.session == session)?;
        let (handover, successor) = watch::channel(None);
        holder.state = Held::Parked(handover);
        Some(ParkedPort { listener: holder.listener.clone(), successor })
    }
}
