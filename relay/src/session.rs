//! One agent's session: handshake, open its tunnels, serve until it leaves or the relay stops.

use std::{collections::HashSet, sync::Arc, sync::atomic::Ordering};

use anyhow::Context;
use burrow_common::{
    CloseCode, Granted, Hello, Refusal, ServerMsg, TunnelKind,
    codes::{close_code, describe_connection_error},
    protocol::{self, FrameError, MAX_CONTROL_FRAME, PROTOCOL_VERSION, VALID_NAME, is_valid_name},
};
use quinn::{Connection, RecvStream, SendStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    Shared, liveness, parking,
    registry::{Claim, ClaimError, Claimant, SessionId},
    reservations::TunnelKey,
    sessions::Admitted,
    tokens::Grant,
    tunnel::{OpenTunnel, accept_visitors},
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
    let (grant, tunnels) = match admit(shared, &conn, &hello, session).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refuse(&conn, &mut send, refusal).await,
    };
    let (granted, open): (Vec<Granted>, Vec<OpenTunnel>) = tunnels.into_iter().unzip();
    shared.registry.reservations_saved(RESERVATION_SAVE_WAIT).await;
    let welcome = ServerMsg::Welcome { tunnels: granted };
    let sent = protocol::write_msg(&mut send, &welcome).await;
    if let Err(e) = sent {
        release(shared, open.iter().map(|t| t.port), session);
        return Err(e).context("send Welcome");
    }
    for (tunnel, spec) in open.iter().zip(&hello.tunnels) {
        tracing::info!(port = tunnel.port, name = %spec.name, local = %spec.local, "tunnel open");
    }
    let mut registered = shared.live.register(session, Admitted::new(&grant, &hello, &conn, &open));
    let metrics = &shared.metrics;
    let tunnel_count = i64::try_from(open.len()).unwrap_or(i64::MAX);
    metrics.sessions.inc();
    metrics.sessions_total.inc();
    metrics.tunnels.inc_by(tunnel_count);
    // The control stream stays open for the life of the session.
    let control = (send, recv);
    let lost_ports = serve_tunnels(shared, &conn, open, session, cancel).await;
    registered.ended(&lost_ports);
    metrics.tunnels.dec_by(tunnel_count);
    metrics.sessions.dec();
    drop((control, conn));
    parking::park(shared, lost_ports, session, cancel).await;
    Ok(())
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

/// Checks the Hello and claims every tunnel, or none.
async fn admit(
    shared: &Shared,
    conn: &Connection,
    hello: &Hello,
    session: SessionId,
) -> Result<(Grant, Vec<(Granted, OpenTunnel)>), Refusal> {
    if hello.version != PROTOCOL_VERSION {
        return Err(Refusal::Version { agent: hello.version, relay: PROTOCOL_VERSION });
    }
    let grant = authenticate(shared, conn, hello).await?;
    tracing::Span::current().record("agent", grant.name.as_str());
    check_tunnels(hello, shared.config.max_tunnels_per_session)?;
    let mut admitted = Vec::new();
    for (id, spec) in (0u32..).zip(&hello.tunnels) {
        let TunnelKind::Tcp { port } = spec.kind;
        let key = TunnelKey { token: grant.name.clone(), tunnel: spec.name.clone() };
        match claim(shared, &key, &grant, session, conn, port).await {
            Ok(claim) => {
                let granted = Granted { id, name: spec.name.clone(), port: claim.port, host: shared.public_host() };
                let Claim { port, listener, parked } = claim;
                admitted.push((granted, OpenTunnel { id, port, listener, parked }));
            }
            Err(refusal) => {
                release(shared, admitted.iter().map(|(_, t)| t.port), session);
                return Err(refusal);
            }
        }
    }
    Ok((grant, admitted))
}

/// Claims a port for one tunnel. If an older session of the same tunnel holds it, that
/// session is replaced only if it no longer answers: a crashed agent's successor gets the
/// port back, while two live agents never knock each other off in turn.
async fn claim(
    shared: &Shared,
    key: &TunnelKey,
    grant: &Grant,
    session: SessionId,
    conn: &Connection,
    port: Option<u16>,
) -> Result<Claim, Refusal> {
    let mut replacing = None;
    loop {
        let claimant = Claimant { key, grant, session, conn, replacing };
        match shared.registry.claim(&claimant, port) {
            Ok(claim) => return Ok(claim),
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
/// grace period to finish before the agent is told to reconnect. Returns the ports to park
/// when the session was lost rather than ended.
async fn serve_tunnels(
    shared: &Arc<Shared>,
    conn: &Connection,
    open: Vec<OpenTunnel>,
    session: SessionId,
    cancel: &CancellationToken,
) -> Vec<u16> {
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
        Some(err) => ended_by(shared, &err, ports, session),
        None => {
            release(shared, ports, session);
            visitors.close();
            if tokio::time::timeout(shared.config.grace_period, visitors.wait()).await.is_err() {
                tracing::info!("grace period over; closing remaining visitors");
            }
            CloseCode::Shutdown.close(conn);
            tracing::info!("session closed for shutdown");
            Vec::new()
        }
    }
}

/// Frees the ports of a session that ended with `err`, or returns them for parking if the
/// session was lost rather than ended on purpose.
fn ended_by(shared: &Shared, err: &quinn::ConnectionError, ports: Vec<u16>, session: SessionId) -> Vec<u16> {
    let reason = describe_connection_error(err);
    match err {
        // The user chose to stop: visitors are better refused at once than kept waiting.
        _ if close_code(err) == Some(CloseCode::AgentExit) => tracing::info!("agent left; tunnels closed"),
        // While serving, this relay closes a session itself only to replace it, and the newer
        // session has the ports already.
        quinn::ConnectionError::LocallyClosed => tracing::info!("session replaced by a newer one"),
        _ if !shared.config.park_visitors_for.is_zero() => {
            tracing::info!(%reason, "session lost");
            return ports;
        }
        _ => tracing::info!(%reason, "session lost; tunnels closed"),
    }
    release(shared, ports, session);
    Vec::new()
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
