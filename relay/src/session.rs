//! One agent's session: handshake, open its tunnels, serve until it leaves or the relay stops.

use std::{collections::HashSet, sync::Arc, sync::atomic::Ordering};

use anyhow::Context;
use burrow_common::{
    CloseCode, Granted, Hello, Refusal, ServerMsg, TunnelKind, TunnelSpec,
    codes::{close_code, describe_connection_error},
    protocol::{self, FrameError, MAX_CONTROL_FRAME, PROTOCOL_VERSION, VALID_NAME, is_valid_name},
};
use quinn::{Connection, RecvStream, SendStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    Shared,
    limits::Places,
    liveness,
    metrics::REFUSED_TUNNEL_LIMIT,
    parking,
    registry::{Claim, ClaimError, Claimant, SessionId},
    reservations::TunnelKey,
    sessions::Admitted,
    tokens::Grant,
    tunnel::{OpenTunnel, accept_visitors},
    vhost::{Access, Route, RouteKind},
};

/// Longest a Welcome waits for the tunnels' reservations to reach the disk.
const RESERVATION_SAVE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves one incoming QUIC connection to its end, logging how it ended exactly once.
pub(crate) async fn serve(incoming: quinn::Incoming, shared: Arc<Shared>, cancel: CancellationToken) {
    let remote = incoming.remote_address();
    let span = tracing::info_span!("session", %remote, agent = tracing::field::Empty);
    async move {
        match run(incoming, &shared, &cancel).await {
            Ok(()) => {}
            Err(e) => tracing::info!("session ended: {e:#}"),
        }
    }
    .instrument(span)
    .await
}

async fn run(incoming: quinn::Incoming, shared: &Arc<Shared>, cancel: &CancellationToken) -> anyhow::Result<()> {
    let handshaking = shared.handshakes.enter();
    let conn = incoming.await.context("QUIC handshake failed")?;
    let handshake = tokio::time::timeout(shared.config.handshake_timeout, receive_hello(&conn));
    let (mut send, recv, hello) = tokio::select! {
        _ = cancel.cancelled() => {
            CloseCode::Shutdown.close(&conn);
            return Ok(());
        }
        received = handshake => match received {
            Err(_) => return Err(close(&conn, CloseCode::HandshakeTimeout)).context("no Hello in time"),
            Ok(Err(e)) => return Err(close(&conn, CloseCode::ProtocolViolation)).context(e),
            Ok(Ok(received)) => received,
        },
    };
    drop(handshaking);
    let session = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let (grant, claimed) = match admit(shared, &conn, &hello, session).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refuse(&conn, &mut send, refusal).await,
    };
    shared.registry.reservations_saved(RESERVATION_SAVE_WAIT).await;
    let welcome = ServerMsg::Welcome { tunnels: claimed.granted.clone() };
    let sent = protocol::write_msg(&mut send, &welcome).await;
    if let Err(e) = sent {
        claimed.release(shared, session);
        return Err(e).context("send Welcome");
    }
    for (granted, spec) in claimed.granted.iter().zip(&hello.tunnels) {
        match granted.urls.first() {
            Some(url) => tracing::info!(%url, name = %spec.name, local = %spec.local, "tunnel open"),
            None => tracing::info!(port = granted.port, name = %spec.name, local = %spec.local, "tunnel open"),
        }
    }
    let mut registered = shared.live.register(session, Admitted::new(&grant, &hello, &conn, &claimed.granted));
    let metrics = &shared.metrics;
    let tunnel_count = i64::try_from(claimed.granted.len()).unwrap_or(i64::MAX);
    metrics.sessions.inc();
    metrics.sessions_total.inc();
    metrics.tunnels.inc_by(tunnel_count);
    // The control stream stays open for the life of the session.
    let control = (send, recv);
    let Claimed { granted, ports, subdomains } = claimed;
    let lost = serve_tunnels(shared, &conn, ports, &subdomains, session, cancel).await;
    let parked: Vec<u32> = if lost.is_some() { granted.iter().map(|g| g.id).collect() } else { Vec::new() };
    registered.ended(&parked);
    metrics.tunnels.dec_by(tunnel_count);
    metrics.sessions.dec();
    drop((control, conn));
    if let Some(lost) = lost {
        tokio::join!(
            parking::park(shared, lost.ports, session, cancel),
            park_subdomains(shared, lost.subdomains, session, cancel)
        );
    }
    Ok(())
}

/// The places of a session that was lost rather than ended, kept for its agent's return.
struct Lost {
    ports: Vec<u16>,
    subdomains: Vec<String>,
}

/// Keeps a lost session's subdomains for its agent to come back: requests wait meanwhile.
/// Past the parking time, the names are freed as if the session had just ended.
async fn park_subdomains(shared: &Shared, subdomains: Vec<String>, session: SessionId, cancel: &CancellationToken) {
    let Some(vhost) = shared.vhost.as_ref() else { return };
    let parked: Vec<String> = subdomains.into_iter().filter(|name| vhost.routes.park(name, session)).collect();
    if parked.is_empty() {
        return;
    }
    tracing::info!(?parked, "session lost; subdomains kept for the agent to return");
    tokio::select! {
        _ = cancel.cancelled() => {}
        () = tokio::time::sleep(shared.config.park_visitors_for) => {}
    }
    release_subdomains(shared, &parked, session);
}

fn release_subdomains(shared: &Shared, subdomains: &[String], session: SessionId) {
    if let Some(vhost) = shared.vhost.as_ref() {
        for name in subdomains {
            vhost.routes.release(name, session);
        }
    }
}

fn close(conn: &Connection, code: CloseCode) -> anyhow::Error {
    code.close(conn);
    anyhow::anyhow!("closed: {}", code.describe())
}

async fn receive_hello(conn: &Connection) -> Result<(SendStream, RecvStream, Hello), FrameError> {
    let (send, mut recv) = conn.accept_bi().await.map_err(|e| FrameError::Io(e.into()))?;
    let hello = protocol::read_msg(&mut recv, MAX_CONTROL_FRAME).await?;
    Ok((send, recv, hello))
}

async fn refuse(conn: &Connection, send: &mut SendStream, refusal: Refusal) -> anyhow::Result<()> {
    let answer = protocol::write_msg(send, &ServerMsg::Refused(refusal.clone())).await;
    if answer.is_ok() {
        send.finish().ok();
        // Let the Refused frame reach the agent before the close discards unsent data.
        tokio::time::timeout(std::time::Duration::from_secs(2), send.stopped()).await.ok();
    }
    CloseCode::Refused.close(conn);
    Err(anyhow::anyhow!("refused: {refusal}"))
}

/// What a session holds once admitted: its tunnels as granted, and where they live.
struct Claimed {
    granted: Vec<Granted>,
    ports: Vec<OpenTunnel>,
    subdomains: Vec<String>,
}

impl Claimed {
    fn release(&self, shared: &Shared, session: SessionId) {
        release(shared, self.ports.iter().map(|t| t.port), session);
        release_subdomains(shared, &self.subdomains, session);
    }
}

/// Checks the Hello and claims every tunnel, or none.
async fn admit(
    shared: &Shared,
    conn: &Connection,
    hello: &Hello,
    session: SessionId,
) -> Result<(Grant, Claimed), Refusal> {
    if hello.version != PROTOCOL_VERSION {
        return Err(Refusal::Version { agent: hello.version, relay: PROTOCOL_VERSION });
    }
    let grant = authenticate(shared, conn, hello).await?;
    tracing::Span::current().record("agent", grant.name.as_str());
    check_tunnels(hello, shared.config.max_tunnels_per_session)?;
    let mut claimed = Claimed { granted: Vec::new(), ports: Vec::new(), subdomains: Vec::new() };
    for (id, spec) in (0u32..).zip(&hello.tunnels) {
        let key = TunnelKey { token: grant.name.clone(), tunnel: spec.name.clone() };
        let who = |replacing| Claimant { key: &key, grant: &grant, session, conn, replacing };
        let outcome = match &spec.kind {
            TunnelKind::Tcp { port } => {
                let held_elsewhere = shared.vhost.as_ref().map_or(0, |v| v.routes.held_by(&key.token, &key.tunnel));
                claim(&key, |replacing| shared.registry.claim(&who(replacing), *port, held_elsewhere)).await.map(
                    |Claim { port, listener, parked }| {
                        claimed.ports.push(OpenTunnel { id, port, listener, parked });
                        Granted { id, name: spec.name.clone(), port, host: shared.public_host(), urls: Vec::new() }
                    },
                )
            }
            TunnelKind::Http { subdomain, .. } | TunnelKind::Tls { subdomain } => {
                claim_subdomain(shared, &key, id, spec, subdomain.as_deref(), who).await.map(|(name, urls)| {
                    claimed.subdomains.push(name);
                    Granted { id, name: spec.name.clone(), port: 0, host: shared.public_host(), urls }
                })
            }
        };
        match outcome {
            Ok(granted) => claimed.granted.push(granted),
            Err(refusal) => {
                claimed.release(shared, session);
                return Err(refusal);
            }
        }
    }
    Ok((grant, claimed))
}

/// Claims the subdomain of an HTTP or TLS tunnel; returns it with the tunnel's public URLs.
async fn claim_subdomain<'a>(
    shared: &Shared,
    key: &TunnelKey,
    id: u32,
    spec: &TunnelSpec,
    subdomain: Option<&str>,
    who: impl Fn(Option<SessionId>) -> Claimant<'a>,
) -> Result<(String, Vec<String>), Refusal> {
    let vhost = shared.vhost.as_ref().ok_or(Refusal::NoDomain)?;
    let held_elsewhere = shared.registry.held_by(&key.token, &key.tunnel);
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
            places: Places::new(shared.config.max_visitors_per_tunnel, REFUSED_TUNNEL_LIMIT),
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

fn check_tunnels(hello: &Hello, max: usize) -> Result<(), Refusal> {
    if hello.tunnels.is_empty() || hello.tunnels.len() > max {
        return Err(Refusal::TooManyTunnels { asked: hello.tunnels.len(), max });
    }
    let mut names = HashSet::new();
    for spec in &hello.tunnels {
        let valid = is_valid_name(&spec.name);
        let why = if !valid {
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

/// Serves visitors until the agent leaves or the relay stops; on a stop, visitors get the
/// grace period to finish before the agent is told to reconnect. Returns the places to park
/// when the session was lost rather than ended; otherwise they are released.
async fn serve_tunnels(
    shared: &Arc<Shared>,
    conn: &Connection,
    open: Vec<OpenTunnel>,
    subdomains: &[String],
    session: SessionId,
    cancel: &CancellationToken,
) -> Option<Lost> {
    let ports = open.iter().map(|t| t.port).collect::<Vec<_>>();
    let stop = cancel.child_token();
    let visitors = TaskTracker::new();
    let accept_loops = TaskTracker::new();
    for tunnel in open {
        let span = tracing::info_span!("tunnel", port = tunnel.port);
        let accepting = accept_visitors(tunnel, conn.clone(), shared.clone(), visitors.clone(), stop.clone());
        accept_loops.spawn(accepting.instrument(span));
    }
    let ended = tokio::select! {
        err = conn.closed() => Some(err),
        _ = cancel.cancelled() => None,
        never = count_migrations(conn, shared) => match never {},
    };
    stop.cancel();
    accept_loops.close();
    accept_loops.wait().await;
    match ended {
        Some(err) if lost(shared, &err) => Some(Lost { ports, subdomains: subdomains.to_vec() }),
        Some(_) => {
            release(shared, ports, session);
            release_subdomains(shared, subdomains, session);
            None
        }
        None => {
            release(shared, ports, session);
            release_subdomains(shared, subdomains, session);
            visitors.close();
            if tokio::time::timeout(shared.config.grace_period, visitors.wait()).await.is_err() {
                tracing::info!("grace period over; closing remaining visitors");
            }
            CloseCode::Shutdown.close(conn);
            tracing::info!("session closed for shutdown");
            None
        }
    }
}

/// Whether a session that ended with `err` was lost rather than ended on purpose, so its
/// places are kept for its agent's return.
fn lost(shared: &Shared, err: &quinn::ConnectionError) -> bool {
    let reason = describe_connection_error(err);
    match err {
        // The user chose to stop: visitors are better refused at once than kept waiting.
        _ if close_code(err) == Some(CloseCode::AgentExit) => tracing::info!("agent left; tunnels closed"),
        // While serving, this relay closes a session itself only to replace it, and the newer
        // session has the ports already.
        quinn::ConnectionError::LocallyClosed => tracing::info!("session replaced by a newer one"),
        _ if !shared.config.park_visitors_for.is_zero() => {
            tracing::info!(%reason, "session lost");
            return true;
        }
        _ => tracing::info!(%reason, "session lost; tunnels closed"),
    }
    false
}

/// How often the session's path is checked; quinn follows a migration by itself and only
/// the address it now uses tells that it happened.
const PATH_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// Logs and counts each change of the agent's address (a NAT rebinding, a new network).
/// Runs until the caller drops it with the session.
async fn count_migrations(conn: &Connection, shared: &Shared) -> std::convert::Infallible {
    let mut path = conn.remote_address();
    let mut check = tokio::time::interval(PATH_CHECK);
    loop {
        check.tick().await;
        let now = conn.remote_address();
        if now != path {
            tracing::info!(from = %path, to = %now, "agent's address changed; session migrated");
            shared.metrics.migrations.inc();
            path = now;
        }
    }
}

fn release(shared: &Shared, ports: impl IntoIterator<Item = u16>, session: SessionId) {
    for port in ports {
        shared.registry.release(port, session);
    }
}
