//! Who may open which tunnels: the Hello is checked and every tunnel claimed, or none; a
//! later update claims each added tunnel on its own.

use std::{collections::HashSet, sync::Arc};

use burrow_common::{
    Granted, Hello, Refusal, TunnelKind, TunnelSpec,
    protocol::{MIN_BASIC_AUTH_PASSWORD, PROTOCOL_VERSION, VALID_NAME, is_valid_name},
};

use super::SessionLink;
use crate::{
    Shared,
    claims::{self, Claimant, Claimed, Place, PortSpace, Route, RouteKind, SessionId, TunnelKey, with_takeover},
    limits::Places,
    metrics::{CHECKED_TOKEN, REFUSED_TUNNEL_LIMIT},
    sessions::SessionSlot,
    tokens::{self, Grant},
    vhost::Access,
};

/// One tunnel a session holds: as granted to the agent, what serves its visitors, and its
/// claim until the session starts serving it.
pub(super) struct Opened {
    pub(super) granted: Granted,
    pub(super) route: Arc<Route>,
    pub(super) claimed: Claimed<Route>,
}

impl Opened {
    pub(super) async fn release(&self, shared: &Shared, session: SessionId) {
        claims::release(shared, &self.claimed.place, session).await;
    }
}

/// Checks the Hello and claims every tunnel, or none.
pub(super) async fn admit(
    shared: &Shared,
    link: &SessionLink,
    hello: &Hello,
    session: SessionId,
) -> Result<(Grant, SessionSlot, Vec<Opened>), Refusal> {
    if hello.version != PROTOCOL_VERSION {
        return Err(Refusal::Version { agent: hello.version, relay: PROTOCOL_VERSION });
    }
    let digest = tokens::hash(&hello.token);
    let grant = authenticate(shared, link, digest).await?;
    let slot = shared.live.reserve(digest, shared.config().max_sessions_per_token)?;
    tracing::Span::current().record("agent", grant.name.as_str());
    let count = hello.tunnels.len();
    if count == 0 || count > shared.config().max_tunnels_per_session {
        return Err(Refusal::TooManyTunnels { asked: count, max: shared.config().max_tunnels_per_session });
    }
    check_names(&hello.tunnels, &[])?;
    let mut opened = Vec::new();
    for (id, spec) in (0u32..).zip(&hello.tunnels) {
        match open(shared, &grant, link, session, id, spec).await {
            Ok(tunnel) => opened.push(tunnel),
            Err(refusal) => {
                for tunnel in &opened {
                    tunnel.release(shared, session).await;
                }
                return Err(refusal);
            }
        }
    }
    Ok((grant, slot, opened))
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

/// Claims the place of one tunnel, granted with `id`.
pub(super) async fn open(
    shared: &Shared,
    grant: &Grant,
    link: &SessionLink,
    session: SessionId,
    id: u32,
    spec: &TunnelSpec,
) -> Result<Opened, Refusal> {
    check_basic_auth(spec)?;
    check_flow_idle(spec)?;
    let key = TunnelKey::new(grant, &spec.name);
    let route = Arc::new(Route {
        link: link.clone(),
        session,
        tunnel: id,
        key: key.clone(),
        kind: route_kind(&spec.kind, shared.config().udp_flow_idle),
        places: Places::new(shared.config().max_visitors_per_tunnel, REFUSED_TUNNEL_LIMIT),
        visitors: shared.visitors.clone(),
    });
    let who = |replacing| Claimant { key: &key, session, replacing };
    let granted = |port, urls| Granted { id, name: spec.name.clone(), port, host: shared.public_host(), urls };
    let serving = &route;
    let claimed = match &spec.kind {
        TunnelKind::Tcp { port } | TunnelKind::Udp { port, .. } => {
            let space = if matches!(spec.kind, TunnelKind::Udp { .. }) { PortSpace::Udp } else { PortSpace::Tcp };
            with_takeover(&key.tunnel, |replacing| {
                let who = who(replacing);
                async move { claims::claim_port(shared, &who, grant, (space, *port), serving).await }
            })
            .await?
        }
        TunnelKind::Http { name, .. } | TunnelKind::Tls { name } => {
            shared.vhost.as_ref().ok_or(Refusal::NoDomain)?;
            with_takeover(&key.tunnel, |replacing| {
                let who = who(replacing);
                async move { claims::claim_name(shared, &who, grant, name.as_ref(), serving).await }
            })
            .await?
        }
    };
    let granted = match (&claimed.place, shared.vhost.as_ref()) {
        (Place::Port(port), _) => granted(*port, Vec::new()),
        // A UDP port's number alone would read as a TCP port's, in the admin API too.
        (Place::UdpPort(port), _) => {
            granted(*port, shared.public_host().map(|host| udp_url(&host, *port)).into_iter().collect())
        }
        (place @ (Place::Subdomain(_) | Place::Hostname(_)), Some(vhost)) => granted(0, vhost.urls(place, &route.kind)),
        (Place::Subdomain(_) | Place::Hostname(_), None) => granted(0, Vec::new()),
    };
    Ok(Opened { granted, route, claimed })
}

/// The relay is the one that answers visitors, so it holds every tunnel's password to the
/// minimum length, whatever the agent checked.
fn check_basic_auth(spec: &TunnelSpec) -> Result<(), Refusal> {
    let TunnelKind::Http { access, .. } = &spec.kind else { return Ok(()) };
    let Some(credentials) = &access.basic_auth else { return Ok(()) };
    let password = credentials.expose().split_once(':').map(|(_, password)| password).unwrap_or_default();
    if password.chars().count() >= MIN_BASIC_AUTH_PASSWORD {
        return Ok(());
    }
    let why = format!("its basic-auth password must be at least {MIN_BASIC_AUTH_PASSWORD} characters long");
    Err(Refusal::BadTunnel { name: spec.name.clone(), why })
}

fn udp_url(host: &str, port: u16) -> String {
    if host.contains(':') { format!("udp://[{host}]:{port}") } else { format!("udp://{host}:{port}") }
}

/// A UDP tunnel's idle time, which the relay enforces whatever the agent checked: under a
/// second flows would end between a game's packets, over an hour they would hold the
/// visitor caps for nothing.
fn check_flow_idle(spec: &TunnelSpec) -> Result<(), Refusal> {
    let TunnelKind::Udp { flow_idle: Some(idle), .. } = &spec.kind else { return Ok(()) };
    if (MIN_FLOW_IDLE..=MAX_FLOW_IDLE).contains(idle) {
        return Ok(());
    }
    let why = format!("its flow_idle {idle:?} is out of range: give 1s to 1h");
    Err(Refusal::BadTunnel { name: spec.name.clone(), why })
}

const MIN_FLOW_IDLE: std::time::Duration = std::time::Duration::from_secs(1);
const MAX_FLOW_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

fn route_kind(kind: &TunnelKind, default_flow_idle: std::time::Duration) -> RouteKind {
    match kind {
        TunnelKind::Tcp { .. } => RouteKind::Tcp,
        TunnelKind::Http { access, .. } => RouteKind::Http(Access::new(access)),
        TunnelKind::Tls { .. } => RouteKind::Tls,
        TunnelKind::Udp { flow_idle, .. } => RouteKind::Udp { flow_idle: flow_idle.unwrap_or(default_flow_idle) },
    }
}

/// Checks the Hello's token (its SHA-256 `digest`), unless its address is over its guessing quota: then the agent
/// is asked to try later and nothing is checked, so a correct guess gains nothing from haste.
async fn authenticate(shared: &Shared, link: &SessionLink, digest: [u8; 32]) -> Result<Grant, Refusal> {
    let Ok(attempt) = shared.limiter.attempt(link.remote_address().ip()) else {
        return Err(Refusal::TryLater { why: "too many failed attempts from this address".into() });
    };
    shared.metrics.guessing.credential_checks.get_or_create(&CHECKED_TOKEN).inc();
    match tokens::verify(shared, digest).await {
        Ok(Some(grant)) => {
            attempt.succeeded();
            Ok(grant)
        }
        Ok(None) => {
            shared.metrics.auth_failures.inc();
            attempt.failed().await;
            Err(Refusal::BadToken)
        }
        Err(e) => {
            // Not the agent's fault (EMFILE under a flood, a file being replaced): its unit
            // goes back, and it retries.
            attempt.succeeded();
            tracing::error!("token store unreadable: {e:#}");
            shared.metrics.guessing.token_store_errors.inc();
            Err(Refusal::TryLater { why: "the relay cannot read its tokens now".into() })
        }
    }
}
