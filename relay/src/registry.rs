//! Live tunnels: which session serves which public port right now.
//!
//! Claims are decided under one short lock with no await inside, so two agents racing for a
//! port cannot both win. Reservations decide who may take a free port; live holders decide
//! who has it now.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use burrow_common::{CloseCode, PortRange, Refusal};
use rand::Rng;
use tokio::net::{TcpListener, TcpSocket};

use crate::{reservations::Reservations, reservations::TunnelKey, tokens::Grant};

const LISTEN_BACKLOG: u32 = 1024;

/// Identifies one session, so a stale session's cleanup cannot release its successor's port.
pub(crate) type SessionId = u64;

struct Holder {
    key: TunnelKey,
    session: SessionId,
    conn: quinn::Connection,
    listener: Arc<TcpListener>,
}

/// A port granted to a session, with its bound listener.
pub(crate) struct Claim {
    pub(crate) port: u16,
    pub(crate) listener: Arc<TcpListener>,
}

pub(crate) struct Registry {
    live: Mutex<HashMap<u16, Holder>>,
    reservations: Arc<dyn Reservations>,
    range: PortRange,
    bind_ip: IpAddr,
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
    pub(crate) fn new(reservations: Arc<dyn Reservations>, range: PortRange, bind_ip: IpAddr) -> Self {
        Self { live: Mutex::default(), reservations, range, bind_ip }
    }

    pub(crate) fn claim(&self, who: &Claimant<'_>, requested: Option<u16>) -> Result<Claim, ClaimError> {
        let mut live = self.live.lock().map_err(|_| Refusal::NoFreePort { range: self.range.to_string() })?;
        let allowed = |port: u16| self.range.contains(port) && who.grant.allows(port);
        if let Some(port) = requested {
            if !allowed(port) {
                return Err(Refusal::PortNotAllowed { port, allowed: who.grant.describe_ports(self.range) }.into());
            }
            return self.take(&mut live, who, port)?.ok_or(Refusal::PortTaken { port }.into());
        }
        if let Some(port) = self.reservations.port_for(who.key).filter(|p| allowed(*p))
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

    /// Gives `port` to the claimant if it is free and not reserved for someone else, or if
    /// the claimant may replace the session of the same tunnel that holds it.
    fn take(
        &self,
        live: &mut HashMap<u16, Holder>,
        who: &Claimant<'_>,
        port: u16,
    ) -> Result<Option<Claim>, ClaimError> {
        let listener = match live.get(&port) {
            Some(holder) if holder.key == *who.key && who.replacing == Some(holder.session) => {
                tracing::info!(port, "replacing the unresponsive previous session of this tunnel");
                CloseCode::Replaced.close(&holder.conn);
                holder.listener.clone()
            }
            Some(holder) if holder.key == *who.key => {
                return Err(ClaimError::HeldBySameTunnel { conn: holder.conn.clone(), session: holder.session });
            }
            Some(_) => return Ok(None),
            None => {
                if self.reservations.owner_of(port).is_some_and(|owner| owner != *who.key) {
                    return Ok(None);
                }
                match self.bind(port) {
                    Some(listener) => Arc::new(listener),
                    None => return Ok(None),
                }
            }
        };
        if let Err(e) = self.reservations.hold(who.key, port) {
            tracing::warn!(port, "could not record reservation: {e:#}");
        }
        let holder = Holder { key: who.key.clone(), session: who.session, conn: who.conn.clone(), listener };
        let listener = holder.listener.clone();
        live.insert(port, holder);
        Ok(Some(Claim { port, listener }))
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

    /// Frees `port` if `session` still holds it.
    pub(crate) fn release(&self, port: u16, session: SessionId) {
        let Ok(mut live) = self.live.lock() else {
            return;
        };
        if let Some(holder) = live.get(&port).filter(|h| h.session == session) {
            if let Err(e) = self.reservations.release(&holder.key, port) {
                tracing::warn!(port, "could not record reservation release: {e:#}");
            }
            live.remove(&port);
        }
    }
}
