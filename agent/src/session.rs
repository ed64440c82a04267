//! One session with the relay: connect, say Hello, then serve the relay's streams.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use burrow_common::{
    CloseCode, Hello, ServerMsg, TunnelSpec,
    codes::{close_code, describe_connection_error},
    protocol::{self, MAX_CONTROL_FRAME, PROTOCOL_VERSION},
    transport,
};
use quinn::{Connection, Endpoint};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Plan, PublicTunnel, Status,
    config::Protocol,
    forward::{Target, Targets, handle_stream},
    local_http::LocalHttp,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

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
    let (answer, _control) = match hello(plan, conn).await {
        Ok(answered) => answered,
        Err(e) => {
            return Outcome::Retry { reason: format!("handshake failed: {e:#}"), online_for: None };
        }
    };
    let granted = match answer {
        ServerMsg::Welcome { tunnels } => tunnels,
        ServerMsg::Refused(refusal) if never_online || !refusal.is_transient() => {
            return Outcome::Fatal(anyhow::anyhow!("the relay refused: {refusal}"));
        }
        ServerMsg::Refused(refusal) => {
            return Outcome::Retry { reason: refusal.to_string(), online_for: None };
        }
    };
    let mut online = Vec::new();
    for (granted, tunnel) in granted.iter().zip(&plan.tunnels) {
        let host = granted.host.clone().unwrap_or_else(|| plan.relay.host.clone());
        online.push(PublicTunnel {
            name: granted.name.clone(),
            host,
            port: granted.port,
            local: tunnel.local.clone(),
            urls: granted.urls.clone(),
        });
    }
    plan.stats.publish(status, Status::Online(online));
    let online_since = std::time::Instant::now();
    // The relay names each stream's tunnel by the id it granted.
    let by_id = granted
        .iter()
        .zip(&plan.tunnels)
        .map(|(g, t)| {
            let http = (t.protocol == Protocol::Http).then(|| {
                let local = Arc::new(LocalHttp::new(&g.name, &t.local, &t.rewrite, &plan.stats));
                plan.stats.set_replayer(&g.name, &local);
                local
            });
            let target =
                Target { name: g.name.clone(), local: t.local.clone(), counters: plan.stats.tunnel(&g.name), http };
            (g.id, target)
        })
        .collect();
    let targets = Arc::new(Targets { stats: plan.stats.clone(), by_id });
    let err = serve_streams(conn, targets).await;
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

/// The control stream; it stays open for the whole session, since dropping it would finish it.
type Control = (quinn::SendStream, quinn::RecvStream);

async fn hello(plan: &Plan, conn: &Connection) -> anyhow::Result<(ServerMsg, Control)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let tunnels = plan
        .tunnels
        .iter()
        .map(|t| TunnelSpec { name: t.name.clone(), local: t.local.to_string(), kind: t.kind() })
        .collect();
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
