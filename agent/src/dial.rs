//! Dialing the relay: the one place the agent creates a QUIC link, and words why it could not.

use std::{net::SocketAddr, time::Duration};

use burrow_common::{
    codes::refused_peer_certificate,
    link::{LinkError, QuicLink},
    tls, transport,
};
use quinn::{ConnectionError, Endpoint, TransportErrorCode};

use crate::Plan;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a session's end waits for its close to reach the relay.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Dials links to the relay with the plan's trust and transport settings.
pub(crate) struct Dialer {
    client: quinn::ClientConfig,
}

/// A link just dialed, with what must outlive it.
pub(crate) struct Dialed {
    pub(crate) link: QuicLink,
    endpoint: Endpoint,
}

impl Dialer {
    pub(crate) fn new(plan: &Plan) -> anyhow::Result<Self> {
        let client = tls::client_config(&plan.trust, transport::agent(plan.keep_alive, plan.idle_timeout))?;
        Ok(Self { client })
    }

    pub(crate) async fn dial(&self, plan: &Plan) -> Result<Dialed, Failure> {
        let (endpoint, link) = quic(plan, &self.client).await?;
        Ok(Dialed { link, endpoint })
    }
}

impl Dialed {
    /// Waits, briefly, for the link's close to reach the relay, so it frees the tunnels at
    /// once. The link is held meanwhile: dropping its last handle would close it with no code.
    pub(crate) async fn settle(self) {
        let Dialed { link, endpoint } = self;
        tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await.ok();
        drop(link);
    }
}

/// Why no link came up.
pub(crate) enum Failure {
    /// The relay answered but could not be trusted, or speaks another protocol.
    Trust(String),
    Unreachable(String),
}

/// Dials the relay over QUIC. The endpoint comes back with the link: it must outlive it, and
/// waiting on it lets a close reach the relay.
async fn quic(plan: &Plan, client: &quinn::ClientConfig) -> Result<(Endpoint, QuicLink), Failure> {
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
        client_endpoint(local).map_err(|e| Failure::Unreachable(format!("cannot open a UDP socket: {e}")))?;
    endpoint.set_default_client_config(client.clone());
    if matches!(plan.trust, burrow_common::tls::Trust::Insecure) {
        tracing::warn!("--insecure: the relay's certificate is NOT checked; anyone on the path can read this tunnel");
    }
    let connecting = endpoint
        .connect(addr, &relay.host)
        .map_err(|e| Failure::Unreachable(format!("cannot connect to {addr}: {e}")))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => Err(Failure::Unreachable(format!("no answer from the relay at {addr} (UDP {})", relay.port))),
        Ok(Ok(conn)) => Ok((endpoint, QuicLink::from(conn))),
        Ok(Err(e)) => Err(classify_handshake_error(e, addr)),
    }
}

/// A client endpoint on its own socket, with the buffers the relay has too: the agent
/// receives every download at the same packet rate the relay sends it.
fn client_endpoint(local: SocketAddr) -> std::io::Result<Endpoint> {
    let socket = std::net::UdpSocket::bind(local)?;
    transport::size_udp_buffers(&socket)?;
    Endpoint::new(quinn::EndpointConfig::default(), None, socket, std::sync::Arc::new(quinn::TokioRuntime))
}

/// TLS alerts travel as QUIC transport errors 0x100-0x1ff (RFC 9001, section 4.8).
fn tls_alert(code: TransportErrorCode) -> Option<u8> {
    u64::from(code).checked_sub(0x100).and_then(|alert| u8::try_from(alert).ok())
}

fn classify_handshake_error(e: ConnectionError, addr: SocketAddr) -> Failure {
    match e {
        // Raised here: this agent did not accept the relay's certificate.
        ConnectionError::TransportError(ref t) if refused_peer_certificate(&e) => Failure::Trust(format!(
            "the relay at {addr} presented a certificate that does not match --fingerprint / --ca ({})",
            t.reason
        )),
        ConnectionError::ConnectionClosed(c) if tls_alert(c.error_code).is_some() => Failure::Trust(format!(
            "the relay at {addr} rejected the TLS handshake ({}); is it a burrow relay of the same version?",
            c.error_code
        )),
        ConnectionError::TransportError(t) if tls_alert(t.code).is_some() => {
            Failure::Trust(format!("TLS handshake with {addr} failed: {}", t.reason))
        }
        other => Failure::Unreachable(format!("cannot reach the relay at {addr}: {}", LinkError::from(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_alerts_are_told_from_other_transport_errors() {
        let access_denied = TransportErrorCode::crypto(49);
        assert_eq!(tls_alert(access_denied), Some(49));
        assert_eq!(tls_alert(TransportErrorCode::PROTOCOL_VIOLATION), None);
    }
}
