//! Which places a tunnel of each kind may claim, in which order, and what it is told when
//! none is free: the relay's side of the claims table.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use burrow_common::Refusal;
use rand::Rng;
use tokio::net::{TcpSocket, UdpSocket};

use super::{Bound, ClaimError, Claimant, Claimed, Place, PortSpace, PublicSocket, Route, SessionId};
use crate::{Shared, tokens::Grant, vhost};

const LISTEN_BACKLOG: u32 = 1024;

/// How many random names are tried before giving up; with tens of thousands of names and a
/// few hundred tunnels, one collision is already rare.
const RANDOM_NAME_ATTEMPTS: usize = 32;

type Claim = Result<Claimed<Route>, ClaimError<Route>>;

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

/// Claims the subdomain asked for, the one reserved for the tunnel, or a fresh random one,
/// among the names the token may use.
pub(crate) async fn claim_subdomain(
    shared: &Shared,
    who: &Claimant<'_>,
    grant: &Grant,
    requested: Option<&str>,
    route: &Arc<Route>,
) -> Claim {
    if grant.subdomains.as_ref().is_some_and(Vec::is_empty) {
        return Err(closed_kind(who, "HTTP or TLS", "subdomains").into());
    }
    let reserved_names = shared.config().reserved_names.clone();
    shared.claims.within_limit(who.key)?;
    let name = match requested {
        Some(asked) => {
            let name = vhost::check_subdomain(asked, &reserved_names)
                .map_err(|e| Refusal::BadTunnel { name: who.key.tunnel.clone(), why: e.to_string() })?;
            if !grant.allows_subdomain(&name) {
                return Err(Refusal::SubdomainNotAllowed { name, allowed: grant.describe_subdomains() }.into());
            }
            name
        }
        None => match shared.store.reserved_for(who.key).await {
            Ok(Some(Place::Subdomain(name))) if grant.allows_subdomain(&name) => name,
            _ => return claim_random_subdomain(shared, who, grant, &reserved_names, route).await,
        },
    };
    let place = Place::Subdomain(name.clone());
    let claimed = shared.claims.try_place(shared.store.as_ref(), who, &place, route, |_| Bound::NotNeeded).await?;
    claimed.ok_or(Refusal::SubdomainTaken { name }.into())
}

async fn claim_random_subdomain(
    shared: &Shared,
    who: &Claimant<'_>,
    grant: &Grant,
    reserved_names: &[String],
    route: &Arc<Route>,
) -> Claim {
    let refused = |why: String| Refusal::BadTunnel { name: who.key.tunnel.clone(), why };
    for _ in 0..RANDOM_NAME_ATTEMPTS {
        let name = match random_name_for(grant) {
            RandomName::Drawn(name) => name,
            RandomName::Unfit => continue,
            RandomName::NotAllowed => {
                let allowed = grant.describe_subdomains();
                return Err(refused(format!("this token may use only the subdomains {allowed}: ask for one")).into());
            }
        };
        let place = Place::Subdomain(name.clone());
        if reserved_names.contains(&name) || shared.claims.is_held(&place) || owned(shared, &place).await {
            continue;
        }
        let store = shared.store.as_ref();
        if let Some(claimed) = shared.claims.try_place(store, who, &place, route, |_| Bound::NotNeeded).await? {
            return Ok(claimed);
        }
    }
    Err(refused("no unused random subdomain was found; ask for a name of your own".into()).into())
}

enum RandomName {
    Drawn(String),
    /// The draw does not fit its pattern (too long a label): draw again.
    Unfit,
    /// The token's patterns have no `*`: no name can be drawn for it.
    NotAllowed,
}

/// A random name the token may use: any, or one of its patterns with a random `*`.
fn random_name_for(grant: &Grant) -> RandomName {
    let Some(patterns) = &grant.subdomains else { return RandomName::Drawn(vhost::random_subdomain()) };
    let wildcards: Vec<_> = patterns.iter().filter(|p| p.is_wildcard()).collect();
    if wildcards.is_empty() {
        return RandomName::NotAllowed;
    }
    let pattern = wildcards[rand::rng().random_range(0..wildcards.len())];
    pattern.fill(&vhost::random_subdomain()).map_or(RandomName::Unfit, RandomName::Drawn)
}

/// The refusal for a kind of tunnel the token's limits close with `none`.
fn closed_kind(who: &Claimant<'_>, kind: &str, limit: &str) -> Refusal {
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

async fn owned(shared: &Shared, place: &Place) -> bool {
    matches!(shared.store.owner_of(place).await, Ok(Some(_)))
}

async fn owned_by_another(shared: &Shared, who: &Claimant<'_>, place: &Place) -> bool {
    matches!(shared.store.owner_of(place).await, Ok(Some(owner)) if owner != *who.key)
}

fn bind_port(bind_ip: IpAddr, place: &Place) -> Bound {
    let port = match *place {
        Place::Port(port) => port,
        Place::UdpPort(port) => return bind_udp_port(SocketAddr::new(bind_ip, port)),
        Place::Subdomain(_) => return Bound::NotNeeded,
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
