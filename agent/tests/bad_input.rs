//! Bad input closes only the connection or stream that carried it; everything else keeps
//! working. Run with `cargo test -p burrow-agent --test bad_input`.

use std::{sync::Arc, time::Duration};

use burrow_common::{
    CloseCode, Granted, Hello, JoinTicket, LinkOpening, ServerMsg, StreamCode, StreamHeader, Welcome,
    protocol::{MAX_CONTROL_FRAME, read_msg, write_msg},
    tls::{self, Trust},
    transport,
};
use testkit::*;

/// A relay with one working tunnel, to show that it keeps serving.
async fn relay_with_canary() -> anyhow::Result<(TestRelay, TestAgent, std::net::SocketAddr, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let (agent, tunnels) = TestAgent::start(relay.plan(vec![tunnel("canary", echo_server().await?)])).await?;
    Ok((relay, agent, public_addr(&tunnels[0]), dir))
}

fn raw_client(alpn: &[u8], relay: &TestRelay) -> anyhow::Result<quinn::Endpoint> {
    let mut tls = tls::client_tls(&Trust::Pinned(relay.fingerprint))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport::agent(Duration::from_secs(10), Duration::from_secs(30))));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Sends `bytes` as the start of a control stream; returns how the relay closed the session.
async fn send_control_bytes(relay: &TestRelay, bytes: &[u8]) -> anyhow::Result<quinn::ConnectionError> {
    let endpoint = raw_client(burrow_common::ALPN, relay)?;
    let conn = endpoint.connect(relay.addr, "localhost")?.await?;
    let (mut send, _recv) = conn.open_bi().await?;
    send.write_all(bytes).await?;
    Ok(tokio::time::timeout(Duration::from_secs(1), conn.closed()).await?)
}

/// A session opened by hand, with one TCP tunnel named `name`, as far as the Welcome.
async fn welcomed_raw_session(
    relay: &TestRelay,
    name: &str,
) -> anyhow::Result<(quinn::Connection, (quinn::SendStream, quinn::RecvStream), Vec<Granted>)> {
    let endpoint = raw_client(burrow_common::ALPN, relay)?;
    let conn = endpoint.connect(relay.addr, "localhost")?.await?;
    let (mut control, mut answers) = conn.open_bi().await?;
    let tunnels = vec![burrow_common::TunnelSpec {
        name: name.into(),
        local: "127.0.0.1:1".into(),
        kind: burrow_common::TunnelKind::Tcp { port: None },
    }];
    let hello = Hello { version: burrow_common::protocol::PROTOCOL_VERSION, token: relay.token.clone(), tunnels };
    write_msg(&mut control, &LinkOpening::Hello(hello)).await?;
    match read_msg(&mut answers, MAX_CONTROL_FRAME).await? {
        ServerMsg::Welcome(Welcome { tunnels, .. }) => Ok((conn, (control, answers), tunnels)),
        other => anyhow::bail!("no Welcome: {other:?}"),
    }
}

fn closed_with(err: &quinn::ConnectionError, code: CloseCode) -> bool {
    matches!(err, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == code.code())
}

#[tokio::test]
async fn garbage_datagrams_on_the_quic_port_are_ignored() -> anyhow::Result<()> {
    let (relay, agent, canary, _dir) = relay_with_canary().await?;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    for size in [1, 20, 1200, 1500, 60_000].into_iter().cycle().take(500) {
        socket.send_to(&random_bytes(size), relay.addr).await?;
    }
    assert_eq!(exchange(canary, b"alive").await?, b"alive");
    let (second, _) = TestAgent::start(relay.plan(vec![tunnel("late", echo_server().await?)])).await?;
    second.stop().await?;
    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn client_with_the_wrong_alpn_fails_the_tls_handshake() -> anyhow::Result<()> {
    let (relay, agent, canary, _dir) = relay_with_canary().await?;
    let endpoint = raw_client(b"h3", &relay)?;
    let err = endpoint.connect(relay.addr, "localhost")?.await.unwrap_err();
    let no_protocol = quinn::TransportErrorCode::crypto(rustls::AlertDescription::NoApplicationProtocol.into());
    let refused = matches!(&err, quinn::ConnectionError::ConnectionClosed(close) if close.error_code == no_protocol);
    assert!(refused, "{err}");
    assert_eq!(exchange(canary, b"alive").await?, b"alive");
    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn oversized_control_frame_closes_that_session_only() -> anyhow::Result<()> {
    let (relay, agent, canary, _dir) = relay_with_canary().await?;
    let err = send_control_bytes(&relay, &u32::MAX.to_be_bytes()).await?;
    assert!(closed_with(&err, CloseCode::ProtocolViolation), "{err}");
    let just_over = u32::try_from(MAX_CONTROL_FRAME + 1)?.to_be_bytes();
    let err = send_control_bytes(&relay, &just_over).await?;
    assert!(closed_with(&err, CloseCode::ProtocolViolation), "{err}");
    assert_eq!(exchange(canary, b"alive").await?, b"alive");
    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn malformed_control_frame_closes_that_session_only() -> anyhow::Result<()> {
    let (relay, agent, canary, _dir) = relay_with_canary().await?;
    let err = send_control_bytes(&relay, &[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff]).await?;
    assert!(closed_with(&err, CloseCode::ProtocolViolation), "{err}");
    assert_eq!(exchange(canary, b"alive").await?, b"alive");
    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn silent_client_is_closed_at_the_handshake_timeout() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = relay_config(dir.path());
    config.handshake_timeout = Duration::from_millis(300);
    let relay = TestRelay::start_with(config).await?;
    let endpoint = raw_client(burrow_common::ALPN, &relay)?;
    let conn = endpoint.connect(relay.addr, "localhost")?.await?;
    let err = tokio::time::timeout(STEP, conn.closed()).await?;
    assert!(closed_with(&err, CloseCode::HandshakeTimeout), "{err}");
    relay.stop().await
}

fn reset_with(err: &quinn::ReadToEndError, code: StreamCode) -> bool {
    matches!(err, quinn::ReadToEndError::Read(quinn::ReadError::Reset(c)) if *c == code.code())
}

/// A stand-in relay that speaks the protocol by hand, to send the agent bad stream headers.
#[tokio::test]
async fn agent_resets_streams_with_unknown_or_malformed_headers_and_serves_the_rest() -> anyhow::Result<()> {
    let generated = tls::self_signed(&["localhost".into()])?;
    let identity = tls::Identity::from_pem(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes())?;
    let fingerprint = identity.fingerprint();
    let server = tls::server_config(identity, transport::relay(Duration::from_secs(30)))?;
    let fake_relay = quinn::Endpoint::server(server, "127.0.0.1:0".parse()?)?;
    let echo = echo_server().await?;

    let dir = tempfile::tempdir()?;
    let template = TestRelay::start(dir.path()).await?;
    let mut plan = template.plan(vec![tunnel("web", echo)]);
    plan.relay.port = fake_relay.local_addr()?.port();
    plan.trust = Trust::Pinned(fingerprint);
    let agent = TestAgent::spawn(plan);

    let conn = fake_relay.accept().await.expect("endpoint open").await?;
    let (mut control_send, mut control_recv) = conn.accept_bi().await?;
    let LinkOpening::Hello(hello) = read_msg(&mut control_recv, MAX_CONTROL_FRAME).await? else {
        anyhow::bail!("the agent's first message is not a Hello");
    };
    assert_eq!(hello.tunnels[0].name, "web");
    // One link: this stand-in serves one connection.
    let welcome = ServerMsg::Welcome(Welcome {
        tunnels: vec![Granted { id: 0, name: "web".into(), port: 1, host: None, urls: Vec::new() }],
        ticket: JoinTicket([0; 32]),
        links: 1,
        fleet: Vec::new(),
    });
    write_msg(&mut control_send, &welcome).await?;
    let visitor = "192.0.2.1:5000".parse()?;

    let (mut send, mut recv) = conn.open_bi().await?;
    write_msg(&mut send, &StreamHeader::visitor(99, visitor)).await?;
    let err = recv.read_to_end(1024).await.unwrap_err();
    assert!(reset_with(&err, StreamCode::UnknownTunnel), "{err}");

    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await?;
    let err = recv.read_to_end(1024).await.unwrap_err();
    assert!(reset_with(&err, StreamCode::BadHeader), "{err}");

    let (mut send, mut recv) = conn.open_bi().await?;
    write_msg(&mut send, &StreamHeader::visitor(0, visitor)).await?;
    send.write_all(b"still serving").await?;
    send.finish()?;
    let back = tokio::time::timeout(STEP, recv.read_to_end(1024)).await??;
    assert_eq!(back, b"still serving");

    agent.stop().await?;
    template.stop().await
}

#[tokio::test]
async fn agent_facing_a_relay_of_another_protocol_version_stops_with_a_clear_error() -> anyhow::Result<()> {
    let generated = tls::self_signed(&["localhost".into()])?;
    let identity = tls::Identity::from_pem(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes())?;
    let fingerprint = identity.fingerprint();
    let mut server_tls = tls::server_tls(identity)?;
    // A version after ours.
    server_tls.alpn_protocols = vec![b"burrow/99".to_vec()];
    assert_ne!(burrow_common::ALPN, b"burrow/99");
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)?;
    let future_relay =
        quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(crypto)), "127.0.0.1:0".parse()?)?;
    let accepting = tokio::spawn({
        let endpoint = future_relay.clone();
        async move {
            while let Some(incoming) = endpoint.accept().await {
                incoming.await.ok();
            }
        }
    });

    let dir = tempfile::tempdir()?;
    let template = TestRelay::start(dir.path()).await?;
    let mut plan = template.plan(vec![tunnel("web", echo_server().await?)]);
    plan.relay.port = future_relay.local_addr()?.port();
    plan.trust = Trust::Pinned(fingerprint);
    let err = TestAgent::spawn(plan).finished().await?.unwrap_err();
    assert!(format!("{err:#}").contains("is it a burrow relay of the same version?"), "{err:#}");
    accepting.abort();
    template.stop().await
}

#[tokio::test]
async fn agents_get_through_when_the_relay_demands_address_validation() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = relay_config(dir.path());
    // As under a handshake flood: every new client must answer a QUIC Retry first.
    config.retry_handshakes_above = 0;
    let relay = TestRelay::start_with(config).await?;
    let (first, tunnels) = TestAgent::start(relay.plan(vec![tunnel("a", echo_server().await?)])).await?;
    let (second, _) = TestAgent::start(relay.plan(vec![tunnel("b", echo_server().await?)])).await?;
    assert_eq!(exchange(public_addr(&tunnels[0]), b"validated").await?, b"validated");
    // Both agents' links all came up, at least their first ones through a Retry.
    let page = settled(&relay, "burrow_links{transport=\"quic\"}", 8.0).await?;
    let retried = sample(&page, "burrow_handshakes_retried_total").unwrap_or(0.0);
    assert!((2.0..=8.0).contains(&retried), "{page}");
    assert_eq!(sample(&page, "burrow_sessions"), Some(2.0));
    first.stop().await?;
    second.stop().await?;
    relay.stop().await
}

/// An agent with a valid token that tries to open streams of its own: the relay grants it
/// only its control stream, so it cannot make the relay hold state for streams it invents.
#[tokio::test]
async fn an_authenticated_agent_cannot_open_streams_beyond_its_control_stream() -> anyhow::Result<()> {
    let (relay, canary, canary_addr, _dir) = relay_with_canary().await?;
    let (conn, _control, _tunnels) = welcomed_raw_session(&relay, "hostile").await?;

    let extra_bidi = tokio::time::timeout(Duration::from_millis(500), conn.open_bi()).await;
    assert!(extra_bidi.is_err(), "the relay granted a second stream to an agent");
    let uni = tokio::time::timeout(Duration::from_millis(500), conn.open_uni()).await;
    assert!(uni.is_err(), "the relay granted a unidirectional stream to an agent");
    assert_eq!(exchange(canary_addr, b"unaffected").await?, b"unaffected");
    canary.stop().await?;
    relay.stop().await
}

/// After the Welcome, the control stream carries tunnel updates: garbage there is a protocol
/// violation that closes that session (and frees its tunnel), never the relay.
#[tokio::test]
async fn a_malformed_update_after_the_welcome_closes_that_session_only() -> anyhow::Result<()> {
    let (relay, canary, canary_addr, _dir) = relay_with_canary().await?;
    let (conn, (mut control, _answers), tunnels) = welcomed_raw_session(&relay, "mangled").await?;
    let public = std::net::SocketAddr::from(([127, 0, 0, 1], tunnels[0].port));
    control.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await?;
    let err = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await?;
    assert!(closed_with(&err, CloseCode::ProtocolViolation), "{err}");
    let refused = tokio::time::timeout(STEP, async {
        while tokio::net::TcpStream::connect(public).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(refused.is_ok(), "the violating session's port is freed");
    assert_eq!(exchange(canary_addr, b"unaffected").await?, b"unaffected");
    canary.stop().await?;
    relay.stop().await
}
