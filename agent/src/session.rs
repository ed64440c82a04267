//! One session with the relay: connect, say Hello, then serve the relay's streams.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use burrow_common::{
    CloseCode, Granted, Hello, ServerMsg,
    codes::{close_code, describe_connection_error},
    protocol::{self, MAX_CONTROL_FRAME, PROTOCOL_VERSION},
    transport,
};
use quinn::{Connection, Endpoint};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Plan, PublicTunnel, Status, TunnelPlan,
    config::Protocol,
    forward::{Target, Targets, handle_stream},
    local_http::LocalHttp,
    reload,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// How a session ended.
pub(crate) enum Outcome {
    /// The user stopped the agent; the relay has been told.
    Stopped,
    /// Try again after a backoff; `online_for` is how long the session served, if it did.
    Retry { reason: String, online_for: Option<Duration> },
    /// Retrying cannot help; the user must change something.
    Fatal(anyhow::Error),
}

/// Runs one session to its end. While the agent has `never_online`, a refusal or a
/// certificate mismatch is a configuration error rather than a passing condition.
pub(crate) async fn run(
    plan: &Plan,
    client: &quinn::ClientConfig,
    status: &watch::Sender<Status>,
    never_online: bool,
    cancel: &CancellationToken,
) -> Outcome {
    // Ctrl-C must not wait out a connect attempt to an unreachable relay.
    let connected = tokio::select! {
        _ = cancel.cancelled() => return Outcome::Stopped,
        connected = connect(plan, client) => connected,
    };
    let (endpoint, conn) = match connected {
        Ok(connected) => connected,
        Err(Failure::Trust(reason)) if never_online => {
            return Outcome::Fatal(anyhow::anyhow!(reason));
        }
        Err(Failure::Trust(reason) | Failure::Unreachable(reason)) => {
            return Outcome::Retry { reason, online_for: None };
        }
    };
    plan.stats.set_connection(Some(conn.clone()));
    let outcome = tokio::select! {
        _ = cancel.cancelled() => Outcome::Stopped,
        outcome = register_and_serve(plan, &conn, status, never_online) => outcome,
    };
    plan.stats.set_connection(None);
    if matches!(outcome, Outcome::Stopped) {
        CloseCode::AgentExit.close(&conn);
    }
    // Lets the close reach the relay, so it frees the tunnels at once.
    tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await.ok();
    outcome
}

enum Failure {
    /// The relay answered but could not be trusted, or speaks another protocol.
    Trust(String),
    Unreachable(String),
}

async fn connect(plan: &Plan, client: &quinn::ClientConfig) -> Result<(Endpoint, Connection), Failure> {
    let relay = &plan.relay;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((relay.host.as_str(), relay.port))
        .await
        .map_err(|e| Failure::Unreachable(format!("cannot resolve {}: {e}", relay.host)))?
        .collect();
    // IPv4 first: a relay on a VPS is reachable over it far more often than over IPv6.
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| Failure::Unreachable(format!("{} has no address", relay.host)))?;
    let local = if addr.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    };
    let mut endpoint =
        Endpoint::client(local).map_err(|e| Failure::Unreachable(format!("cannot open a UDP socket: {e}")))?;
    endpoint.set_default_client_config(client.clone());
    if matches!(plan.trust, burrow_common::tls::Trust::Insecure) {
        tracing::warn!("--insecure: the relay's certificate is NOT checked; anyone on the path can read this tunnel");
    }
    let connecting = endpoint
        .connect(addr, &relay.host)
        .map_err(|e| Failure::Unreachable(format!("cannot connect to {addr}: {e}")))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => Err(Failure::Unreachable(format!("no answer from the relay at {addr} (UDP {})", relay.port))),
        Ok(Ok(conn)) => Ok((endpoint, conn)),
        Ok(Err(e)) => Err(classify_handshake_error(&e, addr)),
    }
}

fn classify_handshake_error(e: &quinn::ConnectionError, addr: SocketAddr) -> Failure {
    use quinn::ConnectionError as E;
    // TLS alerts travel as QUIC transport errors 0x100-0x1ff (RFC 9001, section 4.8).
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        E::TransportError(t) if t.reason.contains("invalid peer certificate") => Failure::Trust(format!(
            "the relay at {addr} presented a certificate that does not match --fingerprint / --ca ({})",
            t.reason
        )),
        E::ConnectionClosed(c) if crypto(c.error_code) => Failure::Trust(format!(
            "the relay at {addr} rejected the TLS handshake ({}); is it a burrow relay of the same version?",
            c.error_code
        )),
        E::TransportError(t) if crypto(t.code) => {
            Failure::Trust(format!("TLS handshake with {addr} failed: {}", t.reason))
        }
        other => {
            Failure::Unreachable(format!("cannot reach the relay at {addr}: {}", describe_connection_error(other)))
        }
    }
}

async fn register_and_serve(
    plan: &Plan,
    conn: &Connection,
    status: &watch::Sender<Status>,
    never_online: bool,
) -> Outcome {
    let asked = plan.current_tunnels();
    let (answer, mut control) = match hello(plan, &asked, conn).await {
        Ok(answered) => answered,
        Err(e) => {
            return Outcome::Retry { reason: format!("handshake failed: {e:#}"), online_for: None };
        }
    };
    let granted = match answer {
        ServerMsg::Welcome { tunnels } => tunnels,
        ServerMsg::Refused(refusal) if never_online || !refusal.is_transient() => {
            // Kept as a value in the chain, so callers can tell refusals apart by type.
            return Outcome::Fatal(anyhow::Error::new(refusal).context("the relay refused"));
        }
        ServerMsg::Refused(refusal) => {
            return Outcome::Retry { reason: refusal.to_string(), online_for: None };
        }
        ServerMsg::Updated { .. } => {
            return Outcome::Retry { reason: "the relay answered the Hello out of turn".into(), online_for: None };
        }
    };
    let mut live: Vec<(TunnelPlan, Granted)> = asked.into_iter().zip(granted).collect();
    // The relay names each stream's tunnel by the id it granted.
    let targets = Arc::new(Targets { stats: plan.stats.clone(), by_id: Default::default() });
    for (tunnel, granted) in &live {
        targets.insert(granted.id, target(plan, tunnel, granted));
    }
    plan.stats.publish(status, Status::Online(public(plan, &live)));
    let online_since = std::time::Instant::now();
    let err = tokio::select! {
        err = serve_streams(conn, targets.clone()) => err,
        failed = reload::follow(plan, &mut control, &targets, &mut live, status) => {
            // The relay may hold tunnels this agent no longer serves, or the reverse: start
            // over from a Hello with the current list, which the relay answers in full.
            CloseCode::AgentExit.close(conn);
            return Outcome::Retry {
                reason: format!("a tunnel update failed ({failed:#}); reconnecting with the new list"),
                online_for: Some(online_since.elapsed()),
            };
        }
    };
    match close_code(&err) {
        Some(CloseCode::Replaced) => {
            Outcome::Fatal(anyhow::anyhow!("another agent with the same token and tunnel name took over these tunnels"))
        }
        Some(CloseCode::Revoked) => Outcome::Fatal(anyhow::anyhow!(
            "the relay's operator revoked this agent's token; ask them for a new one (relay invite NAME)"
        )),
        _ => Outcome::Retry {
            reason: format!("lost the relay: {}", describe_connection_error(&err)),
            online_for: Some(online_since.elapsed()),
        },
    }
}

/// The session's tunnels as shown to the user.
pub(crate) fn public(plan: &Plan, live: &[(TunnelPlan, Granted)]) -> Vec<PublicTunnel> {
    live.iter()
        .map(|(tunnel, granted)| PublicTunnel {
            name: granted.name.clone(),
            host: granted.host.clone().unwrap_or_else(|| plan.relay.host.clone()),
            port: granted.port,
            local: tunnel.local.clone(),
            urls: granted.urls.clone(),
        })
        .collect()
}

/// Where the streams of a granted tunnel go.
pub(crate) fn target(plan: &Plan, tunnel: &TunnelPlan, granted: &Granted) -> Target {
    let closed = CancellationToken::new();
    let http = (tunnel.protocol == Protocol::Http).then(|| {
        let local =
            Arc::new(LocalHttp::new(&granted.name, &tunnel.local, &tunnel.rewrite, &plan.stats, closed.clone()));
        plan.stats.set_replayer(&granted.name, &local);
        local
    });
    Target {
        name: granted.name.clone(),
        local: tunnel.local.clone(),
        counters: plan.stats.tunnel(&granted.name),
        http,
        closed,
    }
}

/// The control stream; it stays open for the whole session, since dropping it would finish it.
pub(crate) type Control = (quinn::SendStream, quinn::RecvStream);

async fn hello(plan: &Plan, tunnels: &[TunnelPlan], conn: &Connection) -> anyhow::Result<(ServerMsg, Control)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let tunnels = tunnels.iter().map(TunnelPlan::spec).collect();
    let hello = Hello { version: PROTOCOL_VERSION, token: plan.token.clone(), tunnels };
    protocol::write_msg(&mut send, &hello).await?;
    let answer = tokio::time::timeout(WELCOME_TIMEOUT, protocol::read_msg(&mut recv, MAX_CONTROL_FRAME)).await??;
    Ok((answer, (send, recv)))
}

/// Accepts the relay's streams until the session ends; returns why it ended.
async fn serve_streams(conn: &Connection, targets: Arc<Targets>) -> quinn::ConnectionError {
    let streams = TaskTracker::new();
    let mut limit = transport::AGENT_INITIAL_STREAMS;
    let ended = loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let targets = targets.clone();
                streams.spawn(async move { handle_stream(send, recv, &targets).await });
                if let Some(raised) = transport::next_stream_limit(streams.len(), limit) {
                    limit = raised;
                    conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(limit));
                }
            }
            Err(e) => break e,
        }
    };
    // With the session gone every stream fails at its next read or write; wait for that so
    // no stream task outlives its session.
    streams.close();
    streams.wait().await;
    ended
}
