//! Who may open which tunnels: the Hello is checked and every tunnel claimed, or none; a
//! later update claims each added tunnel on its own.

use std::collections::HashSet;

use burrow_common::{
    Granted, Hello, Refusal, TunnelKind, TunnelSpec,
    protocol::{PROTOCOL_VERSION, VALID_NAME, is_valid_name},
};
use quinn::Connection;
use tokio_util::task::TaskTracker;

use crate::{
    Shared,
    limits::Places,
    liveness,
    metrics::REFUSED_TUNNEL_LIMIT,
    registry::{Claim, ClaimError, Claimant, SessionId},
    reservations::TunnelKey,
    tokens::Grant,
    tunnel::OpenTunnel,
    vhost::{Access, Route, RouteKind},
};

/// Where one tunnel of a session lives.
pub(super) enum Place {
    /// A public port, and its listener until the tunnel's accept loop takes it.
    Port(u16, Option<OpenTunnel>),
    Subdomain(String),
}

/// One tunnel a session holds: as granted to the agent, and where it lives.
pub(super) struct Opened {
    pub(super) granted: Granted,
    pub(super) place: Place,
}

impl Opened {
    pub(super) fn release(&self, shared: &Shared, session: SessionId) {
        match &self.place {
            Place::Port(port, _) => {
                shared.registry.release(*port, session);
            }
            Place::Subdomain(name) => {
                if let Some(vhost) = shared.vhost.as_ref() {
                    vhost.routes.release(name, session);
                }
            }
        }
    }
}

/// Checks the Hello and claims every tunnel, or none.
pub(super) async fn admit(
    shared: &Shared,
    conn: &Connection,
    hello: &Hello,
    session: SessionId,
    visitors: &TaskTracker,
) -> Result<(Grant, Vec<Opened>), Refusal> {
    if hello.version != PROTOCOL_VERSION {
        return Err(Refusal::Version { agent: hello.version, relay: PROTOCOL_VERSION });
    }
    let grant = authenticate(shared, conn, hello).await?;
    tracing::Span::current().record("agent", grant.name.as_str());
    let count = hello.tunnels.len();
    if count == 0 || count > shared.config().max_tunnels_per_session {
        return Err(Refusal::TooManyTunnels { asked: count, max: shared.config().max_tunnels_per_session });
    }
    check_names(&hello.tunnels, &[])?;
    let mut opened = Vec::new();
    for (id, spec) in (0u32..).zip(&hello.tunnels) {
        match open(shared, &grant, conn, session, id, spec, visitors).await {
            Ok(tunnel) => opened.push(tunnel),
            Err(refusal) => {
                for tunnel in &opened {
                    tunnel.release(shared, session);
                }
                return Err(refusal);
            }
        }
    }
    Ok((grant, opened))
}

/// Refuses names that are invalid, or used twice among `added` and the `kept` ones.
pub(super) fn check_names(added: &[TunnelSpec], kept: &[&str]) -> Result<(), Refusal> {
    let mut names: HashSet<&str> = kept.iter().copied().collect();
    for spec in added {
        let why = if !is_valid_name(&spec.name) {
            VALID_NAME
        } else if !names.insert(spec.name.as_str()) {
            "the name is used twice in this session"
        } else {
            continue;
        };
        return Err(Refusal::BadTunnel { name: spec.name.clone(), why: why.into() });
    }
    Ok(())
}

/// Claims the place of one tunnel, granted with `id`. Its visitors' work runs on
/// `visitors`, so the session's drain waits for it.
pub(super) async fn open(
    shared: &Shared,
    grant: &Grant,
    conn: &Connection,
    session: SessionId,
    id: u32,
    spec: &TunnelSpec,
    visitors: &TaskTracker,
) -> Result<Opened, Refusal> {
    let key = TunnelKey { token: grant.name.clone(), tunnel: spec.name.clone() };
    let who = |replacing| Claimant { key: &key, grant, session, conn, replacing };
    let granted = |port, urls| Granted { id, name: spec.name.clone(), port, host: shared.public_host(), urls };
    match &spec.kind {
        TunnelKind::Tcp { port } => {
            let held_elsewhere = shared.vhost.as_ref().map_or(0, |v| v.routes.held_by(&key.token));
            let Claim { port, listener, parked } =
                claim(&key, |replacing| shared.registry.claim(&who(replacing), *port, held_elsewhere)).await?;
            let accept = OpenTunnel { id, listener, parked };
            Ok(Opened { granted: granted(port, Vec::new()), place: Place::Port(port, Some(accept)) })
        }
        TunnelKind::Http { subdomain, .. } | TunnelKind::Tls { subdomain } => {
            let (name, urls) = claim_subdomain(shared, &key, (id, spec), subdomain.as_deref(), who, visitors).await?;
            Ok(Opened { granted: granted(0, urls), place: Place::Subdomain(name) })
        }
    }
}

/// Claims the subdomain of an HTTP or TLS tunnel; returns it with the tunnel's public URLs.
async fn claim_subdomain<'a>(
    shared: &Shared,
    key: &TunnelKey,
    (id, spec): (u32, &TunnelSpec),
    subdomain: Option<&str>,
    who: impl Fn(Option<SessionId>) -> Claimant<'a>,
    visitors: &TaskTracker,
) -> Result<(String, Vec<String>), Refusal> {
    let vhost = shared.vhost.as_ref().ok_or(Refusal::NoDomain)?;
    let held_elsewhere = shared.registry.held_by(&key.token);
    let route_kind = || match &spec.kind {
        TunnelKind::Http { access, .. } => RouteKind::Http(Access::new(access)),
        _ => RouteKind::Tls,
    };
    let name = claim(key, |replacing| {
        let claimant = who(replacing);
        let route = Route {
            conn: claimant.conn.clone(),
            tunnel: id,
            kind: route_kind(),
            places: Places::new(shared.config().max_visitors_per_tunnel, REFUSED_TUNNEL_LIMIT),
            visitors: visitors.clone(),
        };
        vhost.routes.claim(&claimant, subdomain, route, held_elsewhere)
    })
    .await?;
    Ok((name.clone(), vhost.urls(&name, &route_kind())))
}

/// Claims a tunnel's place with `attempt`. If an older session of the same tunnel holds it,
/// that session is replaced only if it no longer answers: a crashed agent's successor gets
/// the place back, while two live agents never knock each other off in turn.
async fn claim<T>(
    key: &TunnelKey,
    mut attempt: impl FnMut(Option<SessionId>) -> Result<T, ClaimError>,
) -> Result<T, Refusal> {
    let mut replacing = None;
    loop {
        match attempt(replacing) {
            Ok(claimed) => return Ok(claimed),
            Err(ClaimError::Refused(refusal)) => return Err(refusal),
            Err(ClaimError::HeldBySameTunnel { conn: holder, session: held_by }) => {
                if replacing == Some(held_by) || liveness::answers(&holder).await {
                    return Err(Refusal::TunnelActive { name: key.tunnel.clone() });
                }
                replacing = Some(held_by);
            }
        }
    }
}

async fn authenticate(shared: &Shared, conn: &Connection, hello: &Hello) -> Result<Grant, Refusal> {
    match shared.tokens.verify(&hello.token) {
        Ok(Some(grant)) => Ok(grant),
        Ok(None) => {
            shared.metrics.auth_failures.inc();
            shared.limiter.before_refusal(conn.remote_address().ip()).await;
            Err(Refusal::BadToken)
        }
        Err(e) => {
            tracing::error!("token store unreadable: {e:#}");
            Err(Refusal::BadToken)
        }
    }
}
