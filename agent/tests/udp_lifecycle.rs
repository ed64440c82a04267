//! UDP tunnels over time, with the relay and the agent in this process: a flow ends once it
//! has been quiet for its idle time and the visitor's next packet opens another; a token's
//! port limits hold for UDP as for TCP, in a number space of its own; a UDP port stays the
//! tunnel's across agent and relay restarts; while the agent is away what reaches the port is dropped
//! and counted, and the same visitor is served again once the agent is back.
//! Run with `cargo test -p burrow-agent --test udp_lifecycle`.

#[allow(dead_code, reason = "these tests ask for no sized replies")]
mod udp_support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use agent::stats::Stats;
use anyhow::Context;
use burrow_common::Refusal;
use relay::{
    RelayConfig,
    tokens::{Limits, TokenStore},
};
use testkit::{in_process::udp_tunnel, *};
use tokio::net::UdpSocket;
use udp_support::*;

/// The shortest idle time a tunnel may ask for.
const FLOW_IDLE: Duration = Duration::from_secs(1);

/// How long a test waits for the relay to notice a flow's idle time has passed.
const IDLE_NOTICED_WITHIN: Duration = Duration::from_secs(5);

const NO_SESSION_DROPS: &str = "burrow_udp_drops_total{reason=\"no_session\"}";

#[tokio::test]
async fn a_flow_quiet_for_its_idle_time_ends_and_the_next_packet_opens_another() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let (agent, public, stats) = game_with_idle(&relay, FLOW_IDLE).await?;
    let visitor = visitor(public).await?;
    let me = visitor.local_addr()?;

    assert_eq!(ping(&visitor, b"first").await?, b"first");
    let quiet_since = Instant::now();
    let first = listed_flow(&relay, me).await?.context("an open flow is listed in /api/connections")?;
    polled(IDLE_NOTICED_WITHIN, || async { Ok(listed_flow(&relay, me).await?.is_none().then_some(())) })
        .await
        .context("the quiet flow is still listed")?;
    settled(&relay, "burrow_visitors", 0.0).await?;
    let quiet = quiet_since.elapsed();
    // The relay's idle clock started when it sent the echo, a little before it was read.
    assert!(quiet >= FLOW_IDLE - Duration::from_millis(100), "ended after {quiet:?} of quiet");
    polled(STEP, || async { Ok((stats.snapshot().tunnels[0].open == 0).then_some(())) })
        .await
        .context("the agent did not end its side of the flow")?;

    assert_eq!(ping(&visitor, b"again").await?, b"again");
    let second = listed_flow(&relay, me).await?.context("the new flow is listed")?;
    assert_ne!(second, first, "the same visitor's next packet opens a new flow");
    let now = stats.snapshot();
    assert_eq!((now.tunnels[0].open, now.tunnels[0].total), (1, 2), "one flow ended, one open");
    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn a_flow_that_keeps_talking_outlives_its_idle_time() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let (agent, public, stats) = game_with_idle(&relay, FLOW_IDLE).await?;
    let visitor = visitor(public).await?;
    let me = visitor.local_addr()?;

    // The spacing between packets is what is tested: well under the idle time, for three
    // times as long.
    let started = Instant::now();
    let mut every = tokio::time::interval(Duration::from_millis(300));
    let mut first = None;
    for round in 0..11 {
        every.tick().await;
        let payload = format!("round {round}").into_bytes();
        assert_eq!(ping(&visitor, &payload).await?, payload);
        let flow = listed_flow(&relay, me).await?.context("the busy flow is listed")?;
        assert_eq!(*first.get_or_insert(flow), flow, "round {round} found another flow");
    }
    assert!(started.elapsed() >= 3 * FLOW_IDLE, "{:?}", started.elapsed());
    let now = stats.snapshot();
    assert_eq!((now.tunnels[0].open, now.tunnels[0].total), (1, 1), "one flow all along");
    agent.stop().await?;
    relay.stop().await
}

/// TCP and UDP ports are two number spaces under one range and one token limit.
#[tokio::test]
async fn a_token_limited_to_one_port_opens_udp_there_only_and_tcp_shares_the_number() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let free = free_for_tcp_and_udp().await?;
    let outside = free.checked_sub(1).filter(|p| *p > 0).unwrap_or(free + 1);
    let store = TokenStore::open(dir.path());
    let ports = [free.to_string().parse().map_err(anyhow::Error::msg)?];
    let limited = store.add("limited", Limits { ports: Some(&ports), ..Limits::default() })?;
    let mut config = relay_config(dir.path());
    config.ports = format!("{}-{}", free.min(outside), free.max(outside)).parse().map_err(anyhow::Error::msg)?;
    let relay = TestRelay::start_with(config).await?;
    let (service, echo) = (udp_service().await?, echo_server().await?);
    let udp_on = |port| {
        let mut game = udp_tunnel("game", service);
        game.remote_port = port;
        game
    };

    let mut elsewhere = relay.plan(vec![udp_on(Some(outside))]);
    elsewhere.token = limited.clone();
    let err = TestAgent::spawn(elsewhere).finished().await?.unwrap_err();
    let expected = Refusal::PortNotAllowed { port: outside, allowed: free.to_string() };
    assert_eq!(refusal(&err), Some(&expected), "{err:#}");

    let mut both = relay.plan(vec![udp_on(Some(free)), tunnel("web", echo)]);
    both.token = limited.clone();
    let (agent, tunnels) = TestAgent::start(both).await?;
    let (udp, tcp) = (named(&tunnels, "game")?, named(&tunnels, "web")?);
    assert_eq!((udp.url(), tcp.url()), (format!("udp://127.0.0.1:{free}"), format!("tcp://127.0.0.1:{free}")));
    assert_eq!(ping(&visitor(public_addr(udp)).await?, b"over UDP").await?, b"over UDP");
    assert_eq!(exchange(public_addr(tcp), b"over TCP").await?, b"over TCP");
    agent.stop().await?;

    let mut closed = relay.plan(vec![udp_on(None)]);
    closed.token = store.add("no-ports", Limits { ports: Some(&[]), ..Limits::default() })?;
    let err = TestAgent::spawn(closed).finished().await?.unwrap_err();
    assert!(matches!(refusal(&err), Some(Refusal::BadTunnel { name, .. }) if name == "game"), "{err:#}");
    assert!(format!("{err:#}").contains("may open no TCP or UDP tunnels"), "{err:#}");
    relay.stop().await
}

#[tokio::test]
async fn a_restarted_agent_gets_its_udp_port_back_and_another_token_cannot_take_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let service = udp_service().await?;
    let (agent, first) = TestAgent::start(relay.plan(vec![udp_tunnel("game", service)])).await?;
    let port = first[0].port;
    assert_eq!(ping(&visitor(public_addr(&first[0])).await?, b"first agent").await?, b"first agent");
    agent.stop().await?;

    // Another token, with a tunnel of the same name: the reservation is the first token's.
    let other = TokenStore::open(dir.path()).add("other", Limits::default())?;
    let mut asking = udp_tunnel("game", service);
    asking.remote_port = Some(port);
    let mut taking = relay.plan(vec![asking]);
    taking.token = other.clone();
    let err = TestAgent::spawn(taking).finished().await?.unwrap_err();
    assert_eq!(refusal(&err), Some(&Refusal::PortTaken { port }), "{err:#}");
    let mut picking = relay.plan(vec![udp_tunnel("game", service)]);
    picking.token = other;
    let (other_agent, others) = TestAgent::start(picking).await?;
    assert_ne!(others[0].port, port, "the relay handed out a reserved port");

    let (agent, second) = TestAgent::start(relay.plan(vec![udp_tunnel("game", service)])).await?;
    assert_eq!(second[0].port, port, "the reservation must survive the agent's restart");
    assert_eq!(ping(&visitor(public_addr(&second[0])).await?, b"second agent").await?, b"second agent");
    agent.stop().await?;
    other_agent.stop().await?;
    relay.stop().await
}

/// A UDP port's reservation is of the UDP number space only: another token may take the
/// same number for TCP.
#[tokio::test]
async fn a_reserved_udp_port_leaves_the_same_tcp_port_to_others() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let only = free_for_tcp_and_udp().await?;
    let mut config = relay_config(dir.path());
    config.ports = format!("{only}-{only}").parse().map_err(anyhow::Error::msg)?;
    let relay = TestRelay::start_with(config).await?;
    let (agent, _) = TestAgent::start(relay.plan(vec![udp_tunnel("game", udp_service().await?)])).await?;
    agent.stop().await?;

    let mut web = relay.plan(vec![tunnel("web", echo_server().await?)]);
    web.token = TokenStore::open(dir.path()).add("other", Limits::default())?;
    let (other, tunnels) = TestAgent::start(web).await?;
    assert_eq!(tunnels[0].url(), format!("tcp://127.0.0.1:{only}"));
    assert_eq!(exchange(public_addr(&tunnels[0]), b"tcp").await?, b"tcp");
    other.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn an_agent_back_after_a_relay_restart_keeps_its_udp_port_and_its_visitor() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let relay_addr = relay.addr;
    let (mut agent, public, _) = game_with_idle(&relay, FLOW_IDLE).await?;
    let visitor = visitor(public).await?;
    assert_eq!(ping(&visitor, b"before").await?, b"before");

    relay.stop().await?;
    tokio::time::timeout(STEP, agent.status.wait_for(|s| matches!(s, agent::Status::Retrying { .. }))).await??;
    let relay = TestRelay::start_with(RelayConfig { listen: relay_addr, ..relay_config(dir.path()) }).await?;
    let after = agent.online().await?;
    assert_eq!(after[0].port, public.port(), "the reservation must survive the relay's restart");
    assert_eq!(ping(&visitor, b"after").await?, b"after");
    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn while_the_agent_is_away_packets_are_dropped_and_counted_then_served_again() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A relay that notices a lost session within about a second.
    let relay = TestRelay::start_with(RelayConfig { idle_timeout: FLOW_IDLE, ..relay_config(dir.path()) }).await?;
    let proxy = UdpProxy::start(relay.addr).await?;
    let service = udp_service().await?;
    let plan = |relay_port| {
        let mut plan = relay.plan(vec![udp_tunnel("game", service)]);
        plan.keep_alive = Duration::from_millis(200);
        plan.relay.port = relay_port;
        // The proxy forwards one agent socket, as one NAT mapping: the datagrams of a second
        // link would reach the wrong one and be lost.
        plan.links = 1;
        plan
    };
    let (agent, tunnels) = TestAgent::start(plan(proxy.addr.port())).await?;
    let public = public_addr(&tunnels[0]);
    let visitor = visitor(public).await?;
    assert_eq!(ping(&visitor, b"before").await?, b"before");

    // The agent's path goes silent and the agent dies without a word.
    proxy.cut();
    agent.kill().await;
    settled(&relay, "burrow_sessions", 0.0).await?;
    for sent in 1..=3 {
        visitor.send(format!("away {sent}").as_bytes()).await?;
        settled(&relay, NO_SESSION_DROPS, f64::from(sent)).await?;
    }

    let (agent, back) = TestAgent::start(plan(relay.addr.port())).await?;
    assert_eq!(back[0].port, public.port(), "the agent must get its parked port back");
    // Had a packet sent while away been kept, it would be the first answer here.
    assert_eq!(ping(&visitor, b"back").await?, b"back");
    let page = metrics(&relay).await?;
    assert_eq!(sample(&page, NO_SESSION_DROPS), Some(3.0));
    let game = "burrow_udp_tunnel_drops_total{token=\"configured\",tunnel=\"game\",reason=\"no_session\"}";
    assert_eq!(sample(&page, game), Some(3.0), "counted for the tunnel too");
    agent.stop().await?;
    relay.stop().await
}

/// An agent serving the echoing UDP service as tunnel "game", whose flows end after `idle`
/// of quiet; its public address and its stats.
async fn game_with_idle(relay: &TestRelay, idle: Duration) -> anyhow::Result<(TestAgent, SocketAddr, Stats)> {
    let mut game = udp_tunnel("game", udp_service().await?);
    game.flow_idle = Some(idle);
    let plan = relay.plan(vec![game]);
    let stats = plan.stats.clone();
    let (agent, tunnels) = TestAgent::start(plan).await?;
    Ok((agent, public_addr(&tunnels[0]), stats))
}

fn named<'a>(tunnels: &'a [agent::PublicTunnel], name: &str) -> anyhow::Result<&'a agent::PublicTunnel> {
    tunnels.iter().find(|t| t.name == name).with_context(|| format!("no tunnel {name:?} in {tunnels:?}"))
}

/// The relay's id of the open flow from `peer`, as `/api/connections` lists it.
async fn listed_flow(relay: &TestRelay, peer: SocketAddr) -> anyhow::Result<Option<u64>> {
    let connections = api(relay, "connections").await?;
    let listed = connections.as_array().context("/api/connections is a list")?;
    let mine = listed.iter().find(|c| c["peer"].as_str() == Some(&peer.to_string()));
    mine.map(|c| c["id"].as_u64().context("a connection's id")).transpose()
}

/// Polls `check` until it yields a value, for at most `limit`.
async fn polled<T, F, Fut>(limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    tokio::time::timeout(limit, async {
        loop {
            if let Some(found) = check().await? {
                return Ok(found);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .with_context(|| format!("not within {limit:?}"))?
}

/// A port free on loopback for both TCP and UDP now.
async fn free_for_tcp_and_udp() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await?;
        let port = udp.local_addr()?.port();
        if tokio::net::TcpListener::bind(("127.0.0.1", port)).await.is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no port free for both TCP and UDP")
}

/// A visitor's socket on loopback, connected to the tunnel's public port.
async fn visitor(public: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(public).await?;
    Ok(socket)
}

async fn ping(visitor: &UdpSocket, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    visitor.send(payload).await?;
    let mut buffer = vec![0u8; 64 * 1024];
    let len = tokio::time::timeout(STEP, visitor.recv(&mut buffer)).await.context("no answer")??;
    buffer.truncate(len);
    Ok(buffer)
}
