//! UDP tunnels end to end, with the relay and the agent in this process: visitors' packets
//! reach a local UDP service through the relay's public port and its answers come back,
//! byte for byte, each to its own visitor; a packet too large for a link datagram is
//! dropped and counted, and the session goes on. Run with `cargo test -p burrow-agent --test udp`.

mod udp_support;

use std::net::SocketAddr;

use agent::{config::TransportChoice, snapshot::Snapshot, stats::Stats};
use anyhow::Context;
use burrow_common::{link::TCP_MAX_DATAGRAM, protocol::datagram};
use testkit::{in_process::udp_tunnel, *};
use tokio::net::UdpSocket;
use udp_support::*;

/// The first flow's payload room over a TCP link, whose datagrams are exactly this large:
/// the relay numbers a session's flows from 1, whose id takes one byte.
const FIRST_FLOW_MAX: usize = TCP_MAX_DATAGRAM - 1;

struct Tunnel {
    relay: TestRelay,
    agent: TestAgent,
    public: SocketAddr,
    stats: Stats,
    _dir: tempfile::TempDir,
}

/// A relay and an agent with one UDP tunnel to `local`, its links over `transport`.
async fn udp_tunnel_to(local: SocketAddr, transport: TransportChoice) -> anyhow::Result<Tunnel> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let mut plan = relay.plan(vec![udp_tunnel("udp", local)]);
    plan.transport = transport;
    let stats = plan.stats.clone();
    let (agent, tunnels) = TestAgent::start(plan).await?;
    assert!(tunnels[0].url().starts_with("udp://"), "{}", tunnels[0].url());
    let public = public_addr(&tunnels[0]);
    Ok(Tunnel { relay, agent, public, stats, _dir: dir })
}

impl Tunnel {
    fn snapshot(&self) -> Snapshot {
        self.stats.snapshot()
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.agent.stop().await?;
        self.relay.stop().await
    }
}

/// A visitor's socket on loopback, connected to the tunnel's public port.
async fn visitor(public: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(public).await?;
    Ok(socket)
}

async fn receive(visitor: &UdpSocket) -> anyhow::Result<Vec<u8>> {
    let mut buffer = vec![0u8; 64 * 1024];
    let len = tokio::time::timeout(STEP, visitor.recv(&mut buffer)).await.context("no answer")??;
    buffer.truncate(len);
    Ok(buffer)
}

async fn ping(visitor: &UdpSocket, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    visitor.send(payload).await?;
    receive(visitor).await
}

/// Over a TCP link, where a datagram's room is known exactly: every payload size from one
/// byte to the largest that fits, 10,000 packets in all, a few in flight at a time.
#[tokio::test]
async fn ten_thousand_packets_of_every_size_come_back_byte_for_byte() -> anyhow::Result<()> {
    let tunnel = udp_tunnel_to(udp_service().await?, TransportChoice::Tcp).await?;
    let visitor = visitor(tunnel.public).await?;
    const IN_FLIGHT: usize = 8;
    let packets: Vec<Vec<u8>> = (0..10_000).map(|i| random_bytes(1 + i % FIRST_FLOW_MAX)).collect();
    assert!(packets.iter().any(|p| p.len() == FIRST_FLOW_MAX) && packets.iter().any(|p| p.len() == 1));
    for window in packets.chunks(IN_FLIGHT) {
        for packet in window {
            visitor.send(packet).await?;
        }
        for packet in window {
            let echo = receive(&visitor).await?;
            assert!(echo == *packet, "{} bytes sent, {} bytes back, or other bytes", packet.len(), echo.len());
        }
    }
    let now = tunnel.snapshot();
    let udp = now.tunnels[0].udp.context("a UDP tunnel")?;
    assert_eq!((udp.packets.to_local, udp.packets.to_visitor, udp.packets.dropped()), (10_000, 10_000, 0));
    let bytes: u64 = packets.iter().map(|p| p.len() as u64).sum();
    assert_eq!((now.tunnels[0].to_local, now.tunnels[0].to_visitor), (bytes, bytes));
    assert_eq!(udp.max_payload, Some(datagram::typical_max_payload(TCP_MAX_DATAGRAM)), "shown for a two-byte id");
    tunnel.stop().await
}

/// Two visitors of one tunnel are two flows, each with its own socket to the local service:
/// each gets only the answers to its own packets.
#[tokio::test]
async fn two_visitors_flows_are_kept_apart() -> anyhow::Result<()> {
    let tunnel = udp_tunnel_to(udp_service().await?, TransportChoice::Quic).await?;
    let (first, second) = (visitor(tunnel.public).await?, visitor(tunnel.public).await?);
    for round in 0..100 {
        first.send(format!("first {round}").as_bytes()).await?;
        second.send(format!("second {round}").as_bytes()).await?;
        assert_eq!(receive(&second).await?, format!("second {round}").into_bytes());
        assert_eq!(receive(&first).await?, format!("first {round}").into_bytes());
    }
    let now = tunnel.snapshot();
    assert_eq!((now.tunnels[0].open, now.tunnels[0].total), (2, 2));
    let mut flows: Vec<_> = now.connections.iter().filter_map(|c| Some((c.visitor, c.flow?))).collect();
    flows.sort_by_key(|(visitor, _)| *visitor);
    let mut visitors = vec![first.local_addr()?, second.local_addr()?];
    visitors.sort();
    assert_eq!(flows.iter().map(|(visitor, _)| *visitor).collect::<Vec<_>>(), visitors, "a flow per visitor address");
    assert!(flows.iter().all(|(_, packets)| (packets.to_local, packets.to_visitor) == (100, 100)), "{flows:?}");
    tunnel.stop().await
}

/// A local answer one byte over what a link datagram takes is dropped at the agent and
/// counted, as is a visitor's packet that large at the relay; neither ends the flow.
#[tokio::test]
async fn a_packet_one_byte_over_the_room_is_dropped_counted_and_the_session_goes_on() -> anyhow::Result<()> {
    let tunnel = udp_tunnel_to(udp_service().await?, TransportChoice::Tcp).await?;
    let visitor = visitor(tunnel.public).await?;
    assert_eq!(ping(&visitor, b"hello").await?, b"hello");

    visitor.send(&ask_for(FIRST_FLOW_MAX as u32 + 1)).await?;
    assert_eq!(ping(&visitor, &ask_for(FIRST_FLOW_MAX as u32)).await?.len(), FIRST_FLOW_MAX, "the one that fits");
    let packets = tunnel.snapshot().tunnels[0].udp.context("a UDP tunnel")?.packets;
    assert_eq!(packets.oversize, 1, "{packets:?}");

    visitor.send(&random_bytes(FIRST_FLOW_MAX + 1)).await?;
    assert_eq!(ping(&visitor, b"still there").await?, b"still there");
    let page = metrics(&tunnel.relay).await?;
    let oversize = page.lines().find(|l| l.starts_with("burrow_udp_tunnel_drops") && l.contains("oversize"));
    assert!(oversize.is_some_and(|line| line.ends_with(" 1")), "the relay counts the visitor's: {oversize:?}");
    let now = tunnel.snapshot();
    assert_eq!((now.tunnels[0].open, now.tunnels[0].total, now.tunnels[0].failed), (1, 1, 0), "one flow, going on");
    tunnel.stop().await
}
