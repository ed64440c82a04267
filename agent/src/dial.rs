//! Dialing the relay: the one place the agent creates a link, over QUIC, over TLS on TCP, or
//! both raced (happy eyeballs: QUIC gets a head start, TCP takes over where UDP is blocked),
//! and words why it could not.

use std::{net::SocketAddr, pin::pin, sync::Arc, time::Duration};

use burrow_common::{
    codes::refused_peer_certificate,
    link::{AnyLink, LinkError, QuicLink, TcpLink, TcpSettings, Transport},
    tls, transport,
};
use quinn::{ConnectionError, Endpoint, TransportErrorCode};
use rustls::pki_types::ServerName;

use crate::{Plan, config::TransportChoice, proxy, udp_memory};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long QUIC has to answer before TLS over TCP is tried beside it: what hyper-util's
/// connector waits between addresses (RFC 8305 says 250 ms).
const QUIC_HEAD_START: Duration = Duration::from_millis(300);

/// How long a session's end waits for its close to reach the relay.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Dials links to the relay with the plan's trust and transport settings.
pub(crate) struct Dialer {
    client: quinn::ClientConfig,
    tls: Arc<rustls::ClientConfig>,
}

/// A link just dialed, with what must outlive it.
pub(crate) struct Dialed {
    pub(crate) link: AnyLink,
    /// The QUIC link's endpoint; none for TCP.
    endpoint: Option<Endpoint>,
    /// Which transport, and why that one: for the console, the inspector and the ready file.
    pub(crate) why: String,
}

impl Dialer {
    pub(crate) fn new(plan: &Plan) -> anyhow::Result<Self> {
        let client = tls::client_config(&plan.trust, transport::agent(plan.keep_alive, plan.idle_timeout))?;
        let tls = Arc::new(tls::client_tls(&plan.trust)?);
        if matches!(plan.trust, burrow_common::tls::Trust::Insecure) {
            tracing::warn!(
                "--insecure: the relay's certificate is NOT checked; anyone on the path can read this tunnel"
            );
        }
        Ok(Self { client, tls })
    }

    /// A session's first link, over the transport the plan asks for.
    pub(crate) async fn dial(&self, plan: &Plan) -> Result<Dialed, Failure> {
        match plan.transport {
            TransportChoice::Quic => self.dial_on(plan, Transport::Quic).await,
            TransportChoice::Tcp => {
                let dialed = self.dial_on(plan, Transport::Tcp).await?;
                Ok(Dialed { why: "TCP (--transport tcp)".into(), ..dialed })
            }
            TransportChoice::Auto => self.race(plan).await,
        }
    }

    /// A link over `transport`: a session's further links take its first link's.
    pub(crate) async fn dial_on(&self, plan: &Plan, transport: Transport) -> Result<Dialed, Failure> {
        match transport {
            Transport::Quic => {
                let (endpoint, link) = quic(plan, &self.client).await?;
                Ok(Dialed { link: link.into(), endpoint: Some(endpoint), why: "QUIC".into() })
            }
            Transport::Tcp => {
                let link = tcp(plan, &self.tls).await?;
                Ok(Dialed { link: link.into(), endpoint: None, why: "TCP".into() })
            }
        }
    }

    /// QUIC first; TLS over TCP beside it once QUIC has had its head start or failed at
    /// once; the first link up wins. A relay whose UDP was blocked last time gets both at once.
    async fn race(&self, plan: &Plan) -> Result<Dialed, Failure> {
        let remembered = udp_memory::blocked(&plan.relay);
        let mut quic = pin!(self.dial_on(plan, Transport::Quic));
        let head_start = if remembered { Duration::ZERO } else { QUIC_HEAD_START };
        let quic_failed = tokio::select! {
            dialed = &mut quic => match dialed {
                Ok(dialed) => return Ok(self.won(plan, dialed)),
                // The relay answered: over TCP it would say the same.
                Err(Failure::Trust(why)) => return Err(Failure::Trust(why)),
                Err(Failure::Unreachable(why)) => Some(why),
            },
            () = tokio::time::sleep(head_start) => None,
        };
        let why_tcp = match (&quic_failed, remembered) {
            (Some(why), _) => format!("TCP: QUIC failed ({why})"),
            (None, true) => "TCP: UDP was blocked last time".to_string(),
            (None, false) => format!("TCP: no QUIC answer in {} ms", QUIC_HEAD_START.as_millis()),
        };
        let mut tcp = pin!(self.dial_on(plan, Transport::Tcp));
        if let Some(quic_failed) = quic_failed {
            return match tcp.await {
                Ok(dialed) => Ok(self.won(plan, Dialed { why: why_tcp, ..dialed })),
                Err(failure) => Err(failure.after(&quic_failed)),
            };
        }
        tokio::select! {
            dialed = &mut quic => match dialed {
                Ok(dialed) => Ok(self.won(plan, dialed)),
                Err(quic_failed) => match tcp.await {
                    Ok(dialed) => Ok(self.won(plan, Dialed { why: why_tcp, ..dialed })),
                    Err(failure) => Err(failure.after(quic_failed.reason())),
                },
            },
            dialed = &mut tcp => match dialed {
                Ok(dialed) => Ok(self.won(plan, Dialed { why: why_tcp, ..dialed })),
                Err(tcp_failed) => match quic.await {
                    Ok(dialed) => Ok(self.won(plan, dialed)),
                    Err(failure) => Err(tcp_failed.after(failure.reason())),
                },
            },
        }
    }

    /// Remembers which transport won the race, for the next start.
    fn won(&self, plan: &Plan, dialed: Dialed) -> Dialed {
        udp_memory::remember(&plan.relay, dialed.link.transport() == Transport::Tcp);
        dialed
    }
}

impl Dialed {
    /// Waits, briefly, for the link's close to reach the relay, so it frees the tunnels at
    /// once. The link is held meanwhile: dropping its last handle would close it with no code.
    pub(crate) async fn settle(self) {
        let Dialed { link, endpoint, .. } = self;
        match (&link, endpoint) {
            (_, Some(endpoint)) => {
                tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await.ok();
            }
            (AnyLink::Tcp(tcp), None) => {
                tokio::time::timeout(CLOSE_WAIT, tcp.gone()).await.ok();
            }
            (AnyLink::Quic(_), None) => {}
        }
        drop(link);
    }
}

/// Why no link came up.
pub(crate) enum Failure {
    /// The relay answered but could not be trusted, or speaks another protocol.
    Trust(String),
    Unreachable(String),
}

impl Failure {
    fn reason(&self) -> &str {
        match self {
            Failure::Trust(why) | Failure::Unreachable(why) => why,
        }
    }

    /// This failure, after the other transport's.
    fn after(self, first: &str) -> Self {
        match self {
            Failure::Trust(why) => Failure::Trust(why),
            Failure::Unreachable(why) => Failure::Unreachable(format!("{first}; over TCP: {why}")),
        }
    }
}

/// Dials the relay over TLS on TCP, through the plan's proxy if it has one.
async fn tcp(plan: &Plan, tls: &Arc<rustls::ClientConfig>) -> Result<TcpLink, Failure> {
    let relay = &plan.relay;
    let tcp = proxy::connect_tcp(plan.proxy.as_ref(), &relay.host, relay.port)
        .await
        .map_err(|e| Failure::Unreachable(format!("{e:#}")))?;
    let peer = tcp.peer_addr().map_err(|e| Failure::Unreachable(format!("TCP connection to {relay}: {e}")))?;
    let name = ServerName::try_from(relay.host.clone())
        .map_err(|_| Failure::Unreachable(format!("{} is not a valid host name", relay.host)))?;
    let connecting = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp);
    let tls = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => return Err(Failure::Unreachable(format!("no TLS answer from the relay at {relay} (TCP)"))),
        Ok(Err(e)) => return Err(classify_tls_error(&e, relay)),
        Ok(Ok(tls)) => tls,
    };
    let settings = TcpSettings::agent(plan.keep_alive, plan.idle_timeout);
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpLink::agent_side(tls, peer, settings)).await {
        Err(_) => Err(Failure::Unreachable(format!("the relay at {relay} (TCP) did not start the link"))),
        Ok(Err(e)) => Err(Failure::Unreachable(format!("the relay at {relay} (TCP) did not start the link: {e}"))),
        Ok(Ok(link)) => Ok(link),
    }
}

/// A failed TLS handshake over TCP, told apart by the rustls error inside.
fn classify_tls_error(e: &std::io::Error, relay: &crate::config::RelayAddr) -> Failure {
    let inner = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(why)) => Failure::Trust(format!(
            "the relay at {relay} presented a certificate that does not match --fingerprint / --ca ({why:?})"
        )),
        Some(rustls::Error::AlertReceived(alert)) => Failure::Trust(format!(
            "the relay at {relay} rejected the TLS handshake over TCP ({alert:?}); is it a burrow relay of the same \
             version, and is this its agent port?"
        )),
        _ => Failure::Unreachable(format!("TLS over TCP with the relay at {relay} failed: {e}")),
    }
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
