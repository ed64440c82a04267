//! Which ports a TCP or UDP tunnel may claim, in which order, and what it is told when none
//! is free: the relay's side of the claims table (names are in [`super::names`]).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use burrow_common::Refusal;
use rand::Rng;
use tokio::net::{TcpSocket, UdpSocket};

use super::{Bound, ClaimError, Claimant, Claimed, Place, PortSpace, PublicSocket, Route, SessionId};
use crate::{Shared, tokens::Grant};

const LISTEN_BACKLOG: u32 = 1024;

pub(super) type Claim = Result<Claimed<Route>, ClaimError<Route>>;

/// Claims the port asked for, the one reserved for the tunnel, or a free one of the range
/// that the token may use, in `space`: TCP and UDP ports share the range and the token's
/// port limits, not their numbers.
pub(crate) async fn claim_port(
    shared: &Shared,
    who: &Claimant<'_>,
    grant: &Grant,
    (space, requested): (PortSpace, Option<u16>),
    route: &Arc<Route>,
) -> Claim {
    if grant.ports.as_ref().is_some_and(Vec::is_empty) {
        return Err(closed_kind(who, "TCP or UDP", "ports").into());
    }
    let config = shared.config();
    shared.claims.within_limit(who.key)?;
    let range = config.ports;
    let allowed = |port: u16| range.contains(port) && grant.allows(port);
    let bind = |place: &Place| bind_port(config.public_bind, place);
    let place = |port| space.place(port);
    let (claims, store) = (&shared.claims, shared.store.as_ref());
    if let Some(port) = requested {
        if !allowed(port) {
            return Err(Refusal::PortNotAllowed { port, allowed: grant.describe_ports(range) }.into());
        }
        let claimed = claims.try_place(store, who, &place(port), route, bind).await?;
        return claimed.ok_or(Refusal::PortTaken { port }.into());
    }
    if let Ok(Some(reserved)) = store.reserved_for(who.key).await
        && let Some(port) = space.port_of(&reserved)
        && allowed(port)
        && let Some(claimed) = claims.try_place(store, who, &place(port), route, bind).await?
    {
        return Ok(claimed);
    }
    let offset = rand::rng().random_range(0..range.len());
    let ports = (0..range.len())
        .filter_map(|i| u16::try_from(usize::from(range.start) + (offset + i) % range.len()).ok())
        .filter(|port| allowed(*port));
    for port in ports {
        let place = place(port);
        // Cheap checks first, so a scan does not bind every port reserved for someone else.
        if claims.is_held(&place) || owned_by_another(shared, who, &place).await {
            continue;
        }
        match claims.try_place(store, who, &place, route, bind).await {
            Ok(Some(claimed)) => return Ok(claimed),
            Ok(None) | Err(ClaimError::HeldBySameTunnel(_)) => {}
            Err(refused) => return Err(refused),
        }
    }
    Err(Refusal::NoFreePort { range: grant.describe_ports(range) }.into())
}

/// The refusal for a kind of tunnel the token's limits close with `none`.
pub(super) fn closed_kind(who: &Claimant<'_>, kind: &str, limit: &str) -> Refusal {
    let why = format!("this token may open no {kind} tunnels (its {limit} are `none`)");
    Refusal::BadTunnel { name: who.key.tunnel.clone(), why }
}

/// Frees `place` if `session` still holds it, here and in the store.
pub(crate) async fn release(shared: &Shared, place: &Place, session: SessionId) {
    let Some(key) = shared.claims.release(place, session) else { return };
    if let Err(e) = shared.store.release(&key, place).await {
        tracing::warn!(%place, "the store could not record a release: {e:#}");
    }
}

async fn owned_by_another(shared: &Shared, who: &Claimant<'_>, place: &Place) -> bool {
    matches!(shared.store.owner_of(place).await, Ok(Some(owner)) if owner != *who.key)
}

fn bind_port(bind_ip: IpAddr, place: &Place) -> Bound {
    let port = match *place {
        Place::Port(port) => port,
        Place::UdpPort(port) => return bind_udp_port(SocketAddr::new(bind_ip, port)),
        Place::Subdomain(_) | Place::Hostname(_) => return Bound::NotNeeded,
    };
    let addr = SocketAddr::new(bind_ip, port);
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
    let bound = socket.and_then(|s| {
        // Lets a restarted relay rebind ports that still have connections in TIME_WAIT.
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        s.listen(LISTEN_BACKLOG)
    });
    match bound {
        Ok(listener) => Bound::Socket(PublicSocket::Tcp(Arc::new(listener))),
        Err(e) => {
            tracing::debug!(port, "cannot bind public port: {e}");
            Bound::Failed
        }
    }
}

/// A UDP tunnel's public socket, with the buffers of the relay's QUIC socket: a burst of
/// visitor packets waits in the kernel rather than being dropped before the loop reads it.
/// Not quinn's socket set-up, which would turn on GRO and hand a plain `recv_from` several
/// packets at once; and without SO_REUSEADDR, which for UDP would let a second socket share
/// the port.
fn bind_udp_port(addr: SocketAddr) -> Bound {
    let bound = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None).and_then(|s| {
        s.set_recv_buffer_size(UDP_TUNNEL_BUFFER).ok();
        s.set_send_buffer_size(UDP_TUNNEL_BUFFER).ok();
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        UdpSocket::from_std(s.into())
    });
    match bound {
        Ok(socket) => Bound::Socket(PublicSocket::Udp(Arc::new(socket))),
        Err(e) => {
            tracing::debug!(%addr, "cannot bind public UDP port: {e}");
            Bound::Failed
        }
    }
}

/// Kernel buffer of each UDP tunnel's socket, each way: some 20 ms at 200 Mbit/s.
const UDP_TUNNEL_BUFFER: usize = 512 * 1024;
