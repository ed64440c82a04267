//! What the agent reports about the connections it carries: its stats, the inspector's JSON
//! and its event stream all agree with what the test's visitors sent and received.
//! Run with `cargo test -p burrow-agent --test inspector`.

use std::net::SocketAddr;

use agent::{
    PublicTunnel,
    snapshot::{SessionState, Snapshot},
    stats::Stats,
};
use anyhow::Context;
use testkit::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Bytes each visitor sends; the local server answers `2 * size + 1`, so the two directions
/// have different counts.
const SIZES: [u64; 5] = [0, 1, 10, 1000, 100_000];

async fn doubling_server() -> anyhow::Result<SocketAddr> {
    local_server(|mut tcp| async move {
        let mut got = Vec::new();
        tcp.read_to_end(&mut got).await?;
        tcp.write_all(&vec![b'x'; 2 * got.len() + 1]).await?;
        tcp.shutdown().await
    })
    .await
}

/// One visitor: sends `size` bytes, half-closes, reads the whole answer. Returns its own
/// address, which the relay passes on to the agent.
async fn visit(public: SocketAddr, size: u64) -> anyhow::Result<SocketAddr> {
    let mut tcp = TcpStream::connect(public).await?;
    let me = tcp.local_addr()?;
    tcp.write_all(&random_bytes(usize::try_from(size)?)).await?;
    tcp.shutdown().await?;
    let mut answer = Vec::new();
    tokio::time::timeout(STEP, tcp.read_to_end(&mut answer)).await??;
    anyhow::ensure!(answer.len() as u64 == 2 * size + 1, "answer of {} bytes", answer.len());
    Ok(me)
}

/// Status and body of `GET path`, naming the inspector by `host`.
async fn fetch(addr: SocketAddr, path: &str, host: &str) -> anyhow::Result<(u16, String)> {
    fetch_with(addr, path, host, "").await
}

/// Status and body of `GET path` with `extra` header lines (each ending in CRLF).
async fn fetch_with(addr: SocketAddr, path: &str, host: &str, extra: &str) -> anyhow::Result<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).await?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(STEP, tcp.read_to_string(&mut response)).await??;
    let status = response.split_whitespace().nth(1).unwrap_or_default().parse()?;
    Ok((status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// The snapshot shows exactly `visitors` (address, bytes sent), newest first.
fn check(now: &Snapshot, visitors: &[(SocketAddr, u64)], tunnel: &PublicTunnel, relay: SocketAddr) {
    assert!(matches!(now.state, SessionState::Online { .. }), "{:?}", now.state);
    assert_eq!(now.relay, relay.to_string());
    let path = now.path.as_ref().expect("an online session has a QUIC path");
    assert_eq!(path.remote, relay);
    assert!(path.rtt_ms > 0.0 && path.congestion_window > 0 && path.sent_packets > 0, "{path:?}");
    let [shown] = now.tunnels.as_slice() else { panic!("one tunnel: {:?}", now.tunnels) };
    let count = visitors.len() as u64;
    assert_eq!(
        (shown.name.as_str(), shown.url.clone(), shown.local.clone()),
        ("web", tunnel.url(), tunnel.local.to_string())
    );
    assert_eq!((shown.open, shown.total, shown.failed), (0, count, 0));
    assert_eq!(shown.to_local, SIZES.iter().sum::<u64>());
    assert_eq!(shown.to_visitor, SIZES.iter().map(|s| 2 * s + 1).sum::<u64>());
    assert_eq!(now.connections.len(), visitors.len());
    for (shown, (visitor, size)) in now.connections.iter().zip(visitors.iter().rev()) {
        assert_eq!((shown.visitor, shown.tunnel.as_str(), shown.state.as_str()), (*visitor, "web", "closed"));
        assert_eq!((shown.to_local, shown.to_visitor, &shown.reason), (*size, 2 * size + 1, &None));
    }
}

#[tokio::test]
async fn stats_json_and_events_report_each_visitor_and_its_bytes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let plan = relay.plan(vec![tunnel("web", doubling_server().await?)]);
    let stats = plan.stats.clone();
    let (agent, tunnels) = TestAgent::start(plan).await?;
    let inspector = start_inspector(&stats).await?;
    let public = public_addr(&tunnels[0]);

    let mut visitors = Vec::new();
    for size in SIZES {
        visitors.push((visit(public, size).await?, size));
    }
    // The agent records a close when its splice returns, just after the visitor's last byte.
    let all_closed = |now: &Snapshot| {
        now.tunnels.first().is_some_and(|t| t.total == 5 && t.open == 0)
            && now.connections.iter().all(|c| c.state == "closed")
    };
    check(&snapshot_when(&stats, all_closed).await?, &visitors, &tunnels[0], relay.addr);

    let (status, json) = fetch(inspector, "/api/status", "127.0.0.1").await?;
    assert_eq!(status, 200, "{json}");
    check(&serde_json::from_str(&json)?, &visitors, &tunnels[0], relay.addr);
    let event = event_where(inspector, "/api/events", |_| true).await?;
    check(&serde_json::from_str(&event)?, &visitors, &tunnels[0], relay.addr);

    // A visitor that arrives while the page listens shows up in the next event.
    let (late, _) =
        tokio::join!(event_where(inspector, "/api/events", |data| data.contains("\"total\":6,")), visit(public, 7));
    let late: Snapshot = serde_json::from_str(&late?)?;
    assert_eq!(late.connections.len(), 6);

    agent.stop().await?;
    let stopped = stats.snapshot();
    assert_eq!(stopped.state, SessionState::Stopped { error: None });
    assert!(stopped.path.is_none(), "no path without a session");
    assert_eq!(stopped.tunnels[0].total, 6, "counters outlive the session");
    relay.stop().await
}

/// Bytes a long-ish transfer sends each way.
const MIB: u64 = 1 << 20;

/// `now` shows one open connection from `visitor` that has carried `bytes` each way, and its
/// tunnel the same on top of `earlier` bytes each way.
fn check_open(now: &Snapshot, visitor: SocketAddr, bytes: u64, earlier: u64) {
    let [tunnel] = now.tunnels.as_slice() else { panic!("one tunnel: {:?}", now.tunnels) };
    assert_eq!((tunnel.open, tunnel.to_local, tunnel.to_visitor), (1, earlier + bytes, earlier + bytes));
    let open = now.connections.first().expect("the open connection first");
    assert_eq!((open.visitor, open.state.as_str()), (visitor, "open"));
    assert_eq!((open.to_local, open.to_visitor), (bytes, bytes));
}

#[tokio::test]
async fn an_open_connection_shows_its_bytes_so_far_everywhere_and_its_total_once_closed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let plan = relay.plan(vec![tunnel("web", echo_server().await?)]);
    let stats = plan.stats.clone();
    let (agent, tunnels) = TestAgent::start(plan).await?;
    let inspector = start_inspector(&stats).await?;
    let public = public_addr(&tunnels[0]);
    assert_eq!(exchange(public, b"earlier").await?, b"earlier");
    snapshot_when(&stats, |now| now.tunnels.first().is_some_and(|t| t.total == 1 && t.open == 0)).await?;

    let mut visitor = TcpStream::connect(public).await?;
    let me = visitor.local_addr()?;
    let sent = random_bytes(usize::try_from(MIB)?);
    assert!(round_trip(&mut visitor, &sent).await? == sent, "the echo differs");
    // The agent counts each chunk before writing it on, so with the echo back the counts are
    // whole, though the connection is still open.
    check_open(&stats.snapshot(), me, MIB, 7);
    let (status, json) = fetch(inspector, "/api/status", "127.0.0.1").await?;
    assert_eq!(status, 200, "{json}");
    check_open(&serde_json::from_str(&json)?, me, MIB, 7);
    let event = event_where(inspector, "/api/events", |_| true).await?;
    check_open(&serde_json::from_str(&event)?, me, MIB, 7);

    // More bytes move the same open connection's counts on.
    assert!(round_trip(&mut visitor, &sent[..1000]).await? == sent[..1000], "the echo differs");
    check_open(&stats.snapshot(), me, MIB + 1000, 7);

    visitor.shutdown().await?;
    let mut rest = Vec::new();
    tokio::time::timeout(STEP, visitor.read_to_end(&mut rest)).await??;
    assert!(rest.is_empty(), "nothing more came back");
    let closed = |now: &Snapshot| now.connections.first().is_some_and(|c| c.state == "closed");
    let now = snapshot_when(&stats, closed).await?;
    let (tunnel, connection) = (&now.tunnels[0], &now.connections[0]);
    assert_eq!((tunnel.open, tunnel.total), (0, 2));
    assert_eq!((tunnel.to_local, tunnel.to_visitor), (7 + MIB + 1000, 7 + MIB + 1000), "each byte counted once");
    assert_eq!((connection.visitor, connection.to_local, connection.to_visitor), (me, MIB + 1000, MIB + 1000));
    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn a_visitor_the_local_server_refuses_is_listed_as_failed_with_why() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let down = closed_port().await?;
    let plan = relay.plan(vec![tunnel("web", down)]);
    let stats = plan.stats.clone();
    let (agent, tunnels) = TestAgent::start(plan).await?;

    let mut visitor = TcpStream::connect(public_addr(&tunnels[0])).await?;
    let me = visitor.local_addr()?;
    // The visitor's connection is closed at once; how (reset or FIN) is the relay's business.
    tokio::time::timeout(STEP, visitor.read(&mut [0u8; 1])).await?.ok();

    let failed = |now: &Snapshot| {
        now.tunnels.first().is_some_and(|t| t.failed == 1 && t.open == 0)
            && now.connections.first().is_some_and(|c| c.state == "failed")
    };
    let now = snapshot_when(&stats, failed).await?;
    let (shown, connection) = (&now.tunnels[0], &now.connections[0]);
    assert_eq!((shown.open, shown.total, shown.to_local, shown.to_visitor), (0, 1, 0, 0));
    assert_eq!((connection.visitor, connection.state.as_str()), (me, "failed"));
    assert_eq!((connection.to_local, connection.to_visitor), (0, 0));
    let reason = connection.reason.as_deref().context("a failure says why")?;
    assert!(reason.contains(&format!("local server {down} unreachable")), "{reason}");
    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn the_page_is_self_contained_and_answers_only_to_local_names() -> anyhow::Result<()> {
    let inspector = start_inspector(&Stats::default()).await?;
    for (path, marker) in [("/", "HTTP requests"), ("/inspector.js", "/api/events"), ("/inspector.css", "font")] {
        let (status, body) = fetch(inspector, path, &inspector.to_string()).await?;
        assert_eq!(status, 200, "{path}");
        assert!(body.contains(marker), "{path} lacks {marker:?}");
        assert!(!body.contains("://"), "{path} must fetch nothing from elsewhere");
    }
    let (status, json) = fetch(inspector, "/api/status", "localhost").await?;
    assert_eq!(status, 200);
    let idle: Snapshot = serde_json::from_str(&json)?;
    assert!(idle.tunnels.is_empty() && idle.connections.is_empty() && idle.path.is_none());
    assert_eq!(fetch(inspector, "/nope", "localhost").await?.0, 404);
    // A page elsewhere that made its own name resolve to 127.0.0.1 gets nothing.
    assert_eq!(fetch(inspector, "/api/status", "rebound.example:4040").await?.0, 403);
    Ok(())
}

/// Bound beyond loopback (`--inspect 0.0.0.0:4040`), anyone on the network could read the
/// tunnels' requests: the config needs an `inspect_token`, and requests without it get 401.
/// DNS names, which a page elsewhere could rebind to this machine, are still turned away.
#[tokio::test]
async fn an_inspector_beyond_loopback_requires_its_token() -> anyhow::Result<()> {
    let exposed = agent::config::AgentConfig { inspect: Some("0.0.0.0:4040".parse()?), ..Default::default() };
    let refused = format!("{:#}", exposed.validate().expect_err("an exposed inspector without a token"));
    assert!(refused.contains("inspect = 0.0.0.0:4040") && refused.contains("inspect_token"), "{refused}");
    let token = "inspect-token-0123456789";
    let guarded =
        agent::config::AgentConfig { inspect_token: Some(burrow_common::Secret::new(token)), ..exposed.clone() };
    guarded.validate()?;

    let listener = agent::inspector::bind(Some("0.0.0.0:0".parse()?)).await.context("inspector bound")?;
    let port = listener.local_addr()?.port();
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn(agent::inspector::serve(listener, Stats::default(), guarded.inspect_token, cancel.clone()));
    let _stop = cancel.drop_guard();
    let inspector = SocketAddr::from(([127, 0, 0, 1], port));
    let by_ip = format!("192.0.2.10:{port}");
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let (status, body) = fetch(inspector, "/api/status", &by_ip).await?;
    assert_eq!(status, 401, "no token: {body}");
    assert!(body.contains("inspect_token"), "{body}");
    assert_eq!(
        fetch_with(inspector, "/api/status", &by_ip, "Authorization: Bearer wrong-token-0123456789\r\n").await?.0,
        401
    );
    assert_eq!(fetch_with(inspector, "/api/status", &by_ip, &bearer).await?.0, 200);
    assert_eq!(
        fetch_with(inspector, "/api/status", "localhost", &bearer).await?.0,
        200,
        "no page elsewhere can rebind localhost"
    );
    assert_eq!(fetch_with(inspector, "/api/status", "rebound.example", &bearer).await?.0, 403);
    Ok(())
}

#[tokio::test]
async fn a_taken_inspector_port_gives_way_to_one_of_the_next_nine() -> anyhow::Result<()> {
    let taken = TcpListener::bind("127.0.0.1:0").await?;
    let port = taken.local_addr()?.port();
    anyhow::ensure!(port < u16::MAX - 9, "ephemeral port {port} too high for this test");
    let listener = agent::inspector::bind(Some(SocketAddr::from(([127, 0, 0, 1], port)))).await;
    let got = listener.context("a port after the taken one")?.local_addr()?.port();
    assert!(got > port && got <= port + 9, "{got} after {port}");
    assert!(agent::inspector::bind(None).await.is_none(), "inspect = off binds nothing");
    Ok(())
}
