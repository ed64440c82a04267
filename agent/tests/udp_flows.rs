//! The agent's side of UDP tunnels, against a stand-in relay that speaks the protocol by
//! hand: it opens flow streams and sends flow datagrams as the relay does, and checks what
//! the agent carries to and from a local UDP service. Run with
//! `cargo test -p burrow-agent --test udp_flows`.

mod udp_support;

use std::{net::SocketAddr, time::Duration};

use agent::{Plan, TunnelPlan, config::AgentConfig, snapshot::Snapshot, stats::Stats};
use anyhow::Context;
use burrow_common::{
    Granted, JoinTicket, LinkOpening, Secret, ServerMsg, StreamCode, StreamHeader, Welcome,
    protocol::{MAX_CONTROL_FRAME, datagram, read_msg, write_msg},
    tls::{self, Trust},
    transport,
};
use bytes::Bytes;
use testkit::*;
use tokio::net::UdpSocket;
use udp_support::*;

/// The stand-in relay's side of one session, once it has welcomed the agent.
struct Session {
    conn: quinn::Connection,
    /// Kept open: the agent ends its session when its control stream ends.
    _control: (quinn::SendStream, quinn::RecvStream),
    agent: TestAgent,
    stats: Stats,
}

/// Starts an agent with `tunnels` against a stand-in relay on one link, and grants them
/// ids 0, 1, ... in order.
async fn welcomed(tunnels: Vec<TunnelPlan>) -> anyhow::Result<Session> {
    let generated = tls::self_signed(&["localhost".into()])?;
    let identity = tls::Identity::from_pem(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes())?;
    let fingerprint = identity.fingerprint();
    let mut server_transport = transport::relay(Duration::from_secs(30));
    server_transport.max_concurrent_bidi_streams(16u32.into());
    let stand_in = quinn::Endpoint::server(tls::server_config(identity, server_transport)?, "127.0.0.1:0".parse()?)?;
    let config = AgentConfig { links: 1, transport: agent::config::TransportChoice::Quic, ..AgentConfig::default() };
    let relay = agent::config::RelayAddr { host: "127.0.0.1".into(), port: stand_in.local_addr()?.port() };
    let mut plan = Plan::new(&config, relay, Trust::Pinned(fingerprint), Secret::new("a-token-of-no-importance"));
    plan.tunnels = tunnels;
    let stats = plan.stats.clone();
    let agent = TestAgent::spawn(plan);

    let conn = tokio::time::timeout(STEP, stand_in.accept()).await?.expect("endpoint open").await?;
    let (mut send, mut recv) = conn.accept_bi().await?;
    let LinkOpening::Hello(hello) = read_msg(&mut recv, MAX_CONTROL_FRAME).await? else {
        anyhow::bail!("the agent's first message is not a Hello");
    };
    let granted = (0..).zip(&hello.tunnels).map(|(id, spec)| Granted {
        id,
        name: spec.name.clone(),
        port: 21_000 + id as u16,
        host: None,
        urls: Vec::new(),
    });
    let welcome = Welcome { tunnels: granted.collect(), ticket: JoinTicket([0; 32]), links: 1, fleet: Vec::new() };
    write_msg(&mut send, &ServerMsg::Welcome(welcome)).await?;
    let mut session = Session { conn, _control: (send, recv), agent, stats };
    session.agent.online().await?;
    Ok(session)
}

impl Session {
    /// Opens flow `flow` of tunnel `tunnel` for `visitor`, as the relay does for a new
    /// visitor address.
    async fn open_flow(
        &self,
        tunnel: u32,
        flow: u64,
        visitor: &str,
    ) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
        let (mut send, recv) = self.conn.open_bi().await?;
        let header = StreamHeader { tunnel, visitor: visitor.parse()?, flow: Some(flow) };
        write_msg(&mut send, &header).await?;
        Ok((send, recv))
    }

    fn send(&self, flow: u64, payload: &[u8]) -> anyhow::Result<()> {
        Ok(self.conn.send_datagram(datagram::encode(flow, payload))?)
    }

    /// Sends `payload` on `flow` and returns the next flow datagram back.
    async fn ping(&self, flow: u64, payload: &[u8]) -> anyhow::Result<(u64, Bytes)> {
        self.send(flow, payload)?;
        next_datagram(&self.conn).await
    }

    fn snapshot(&self) -> Snapshot {
        self.stats.snapshot()
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.agent.stop().await
    }
}

fn udp(name: &str, local: SocketAddr) -> TunnelPlan {
    testkit::in_process::udp_tunnel(name, local)
}

#[tokio::test]
async fn packets_cross_both_ways_and_each_flow_gets_only_its_own_replies() -> anyhow::Result<()> {
    let session = welcomed(vec![udp("vpn", udp_service().await?)]).await?;
    let _first = session.open_flow(0, 64, "198.51.100.1:40000").await?;
    let _second = session.open_flow(0, 65, "198.51.100.2:40000").await?;
    for round in 0..200u32 {
        let (flow, payload) = if round % 2 == 0 { (64, format!("one {round}")) } else { (65, format!("two {round}")) };
        assert_eq!(session.ping(flow, payload.as_bytes()).await?, (flow, Bytes::from(payload)));
    }
    let now = session.snapshot();
    let udp = now.tunnels[0].udp.expect("a UDP tunnel");
    assert_eq!((udp.packets.to_local, udp.packets.to_visitor, udp.packets.dropped()), (200, 200, 0));
    assert_eq!((now.tunnels[0].open, now.tunnels[0].total), (2, 2), "two flows");
    let flows: Vec<_> = now.connections.iter().filter_map(|c| Some((c.visitor.to_string(), c.flow?))).collect();
    assert_eq!(flows.len(), 2);
    assert!(flows.iter().all(|(_, packets)| packets.to_local == 100 && packets.to_visitor == 100), "{flows:?}");
    assert_eq!(now.tunnels[0].url, "udp://127.0.0.1:21000");
    session.stop().await
}

#[tokio::test]
async fn a_datagram_that_beats_its_flows_stream_waits_for_it() -> anyhow::Result<()> {
    let session = welcomed(vec![udp("dns", udp_service().await?)]).await?;
    session.send(7, b"early")?;
    let _flow = session.open_flow(0, 7, "198.51.100.1:53000").await?;
    assert_eq!(next_datagram(&session.conn).await?, (7, Bytes::from_static(b"early")));
    assert_eq!(session.snapshot().udp_unknown_flow, 0);
    session.stop().await
}

/// A local packet larger than a link datagram takes is dropped and counted, never cut or
/// fragmented; the flow goes on. The datagram size grows as the path's MTU is found, so
/// the test asks for one byte over the size it last saw until that is what it meets.
#[tokio::test]
async fn a_local_packet_over_the_datagram_size_is_dropped_counted_and_the_flow_goes_on() -> anyhow::Result<()> {
    let session = welcomed(vec![udp("game", udp_service().await?)]).await?;
    let _flow = session.open_flow(0, 64, "198.51.100.1:40000").await?;
    session.send(64, &ask_for(60_000))?;
    assert_eq!(session.ping(64, &ask_for(0)).await?.1.len(), 0, "the large reply dropped whole, the empty one crossed");
    let room = |session: &Session| session.snapshot().tunnels[0].udp.and_then(|udp| udp.max_payload);
    let mut dropped = false;
    for _ in 0..20 {
        let max = room(&session).expect("online");
        session.send(64, &ask_for(max as u32 + 1))?;
        let (_, reply) = session.ping(64, &ask_for(max as u32)).await?;
        if reply.len() == max {
            dropped = true;
            break;
        }
        // The path's MTU grew in between: the larger reply fitted, and the fitting one follows.
        assert_eq!(reply.len(), max + 1);
        assert_eq!(next_datagram(&session.conn).await?.1.len(), max);
    }
    assert!(dropped, "the datagram size kept growing");
    let packets = session.snapshot().tunnels[0].udp.expect("a UDP tunnel").packets;
    assert_eq!(packets.oversize, 2, "the 60,000 bytes, then one byte over the size: {packets:?}");
    assert_eq!(session.ping(64, b"still here").await?, (64, Bytes::from_static(b"still here")));
    session.stop().await
}

#[tokio::test]
async fn a_flow_ends_when_the_relay_finishes_its_stream_and_the_agent_finishes_too() -> anyhow::Result<()> {
    let session = welcomed(vec![udp("vpn", udp_service().await?)]).await?;
    let (mut send, mut recv) = session.open_flow(0, 1, "198.51.100.1:40000").await?;
    assert_eq!(session.ping(1, b"hello").await?, (1, Bytes::from_static(b"hello")));
    send.finish()?;
    let answer = tokio::time::timeout(STEP, recv.read_to_end(16)).await??;
    assert!(answer.is_empty(), "a flow's stream carries no bytes");
    let now = session.snapshot();
    assert_eq!(now.tunnels[0].open, 0);
    assert_eq!(now.connections[0].state, "closed", "{:?}", now.connections[0]);
    session.send(1, b"late")?;
    // The late datagram waits as a stray; a new flow is served meanwhile.
    let _next = session.open_flow(0, 2, "198.51.100.1:40000").await?;
    assert_eq!(session.ping(2, b"again").await?, (2, Bytes::from_static(b"again")));
    session.stop().await
}

/// A local service that restarts must not end its flows: a port unreachable is counted and
/// the flow is still there when the service is back.
#[tokio::test]
async fn a_local_service_restarting_keeps_its_flows() -> anyhow::Result<()> {
    let gone = UdpSocket::bind("127.0.0.1:0").await?;
    let port = gone.local_addr()?;
    drop(gone);
    let session = welcomed(vec![udp("vpn", port), udp("echo", udp_service().await?)]).await?;
    let _flow = session.open_flow(0, 1, "198.51.100.1:40000").await?;
    session.send(1, b"anyone?")?;
    session.send(1, b"anyone at all?")?;
    // The agent reads the link's datagrams in order: once a later one has crossed, the
    // first two met the closed port.
    let _echo = session.open_flow(1, 2, "198.51.100.1:40000").await?;
    assert_eq!(session.ping(2, b"in order").await?, (2, Bytes::from_static(b"in order")));
    let packets = session.snapshot().tunnels[0].udp.expect("a UDP tunnel").packets;
    assert!(packets.local_unreachable >= 1, "{packets:?}");

    serve_udp(UdpSocket::bind(port).await?);
    session.send(1, b"served")?;
    assert_eq!(next_datagram(&session.conn).await?, (1, Bytes::from_static(b"served")));
    let now = session.snapshot();
    assert_eq!((now.tunnels[0].open, now.tunnels[0].total), (1, 1), "the same flow, never ended");
    session.stop().await
}

#[tokio::test]
async fn streams_unlike_their_tunnels_kind_are_reset() -> anyhow::Result<()> {
    let session = welcomed(vec![udp("vpn", udp_service().await?), tunnel("web", echo_server().await?)]).await?;
    let (mut send, mut recv) = session.open_flow(1, 1, "198.51.100.1:40000").await?;
    let err = recv.read_to_end(16).await.unwrap_err();
    assert!(reset_with(&err, StreamCode::BadHeader), "a flow of a TCP tunnel: {err}");
    send.finish().ok();

    let (mut send, mut recv) = session.conn.open_bi().await?;
    write_msg(&mut send, &StreamHeader::visitor(0, "198.51.100.1:40000".parse()?)).await?;
    let err = recv.read_to_end(16).await.unwrap_err();
    assert!(reset_with(&err, StreamCode::BadHeader), "a byte stream of a UDP tunnel: {err}");

    let (_send, mut recv) = session.open_flow(9, 1, "198.51.100.1:40000").await?;
    let err = recv.read_to_end(16).await.unwrap_err();
    assert!(reset_with(&err, StreamCode::UnknownTunnel), "{err}");
    session.stop().await
}

/// The next flow datagram on `conn`, skipping liveness probes.
async fn next_datagram(conn: &quinn::Connection) -> anyhow::Result<(u64, Bytes)> {
    loop {
        let got = tokio::time::timeout(STEP, conn.read_datagram()).await.context("no datagram")??;
        match datagram::decode(&got) {
            Ok(flow) => return Ok(flow),
            Err(datagram::DatagramDecodeError::NoFlow) => continue,
            Err(e) => anyhow::bail!("a datagram that is no flow's: {e}"),
        }
    }
}

fn reset_with(err: &quinn::ReadToEndError, code: StreamCode) -> bool {
    matches!(err, quinn::ReadToEndError::Read(quinn::ReadError::Reset(c)) if *c == code.code())
}
