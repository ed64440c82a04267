//! An agent reduced to its conversation: a QUIC connection from a chosen source address and
//! the control stream's messages, for tests that send what the real agent never would (no
//! Hello at all, many sessions with one token, thousands of updates).

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use burrow_common::{
    Fingerprint, Secret, TunnelKind, TunnelSpec,
    link::QuicLink,
    protocol::conversation::{AgentControlOn, HelloAnswer},
    tls::{self, Trust},
    transport,
};

/// A QUIC client endpoint bound to `source` (port 0), trusting the relay with `fingerprint`,
/// with the agent's transport settings or, when given, `transport`.
pub fn endpoint(
    source: IpAddr,
    fingerprint: Fingerprint,
    transport: Option<quinn::TransportConfig>,
) -> anyhow::Result<quinn::Endpoint> {
    let transport = transport.unwrap_or_else(|| transport::agent(Duration::from_secs(10), Duration::from_secs(60)));
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(source, 0))?;
    endpoint.set_default_client_config(tls::client_config(&Trust::Pinned(fingerprint), transport)?);
    Ok(endpoint)
}

/// One session's link and control stream, after its Hello was answered.
pub struct RawSession {
    pub link: QuicLink,
    pub control: AgentControlOn<QuicLink>,
}

/// Connects through `endpoint` to `relay` and says Hello with `token` and `tunnels`; returns
/// the session and the relay's answer.
pub async fn hello(
    endpoint: &quinn::Endpoint,
    relay: SocketAddr,
    token: &Secret,
    tunnels: Vec<TunnelSpec>,
) -> anyhow::Result<(RawSession, HelloAnswer)> {
    let link = QuicLink::from(endpoint.connect(relay, "localhost")?.await?);
    let mut control = AgentControlOn::<QuicLink>::open(&link).await?;
    let answer = control.hello(token, tunnels).await?;
    Ok((RawSession { link, control }, answer))
}

/// A TCP tunnel named `name` on any free port, to a local address nobody needs to serve.
pub fn tcp_tunnel(name: &str) -> TunnelSpec {
    TunnelSpec { name: name.into(), local: "127.0.0.1:9".into(), kind: TunnelKind::Tcp { port: None } }
}
