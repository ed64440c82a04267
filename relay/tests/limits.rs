//! Visitor caps: per tunnel and per source address. A visitor past a cap is reset at once,
//! and others are served as before. Run with `cargo test -p burrow-relay --test limits`.

use std::net::SocketAddr;

use testkit::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// A visitor from `source` whose echo came back: it holds a place under the caps.
async fn held_visitor(source: &str, target: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse()?)?;
    let mut tcp = socket.connect(target).await?;
    tcp.write_all(b"x").await?;
    let mut byte = [0u8; 1];
    tokio::time::timeout(STEP, tcp.read_exact(&mut byte)).await??;
    Ok(tcp)
}

/// Whether a new visitor from 127.0.0.1 is turned away (closed without data).
async fn turned_away(target: SocketAddr) -> anyhow::Result<bool> {
    let mut tcp = TcpStream::connect(target).await?;
    tcp.write_all(b"x").await.ok();
    let mut byte = [0u8; 1];
    Ok(!matches!(tokio::time::timeout(STEP, tcp.read(&mut byte)).await?, Ok(1)))
}

#[tokio::test]
async fn a_tunnel_at_its_limit_turns_new_visitors_away_until_one_leaves() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = relay_config(dir.path());
    config.max_visitors_per_tunnel = 3;
    let relay = TestRelay::start_with(config).await?;
    let (agent, tunnels) = TestAgent::start(relay.plan(vec![tunnel("capped", echo_server().await?)])).await?;
    let public = public_addr(&tunnels[0]);

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(held_visitor("127.0.0.1", public).await?);
    }
    assert!(turned_away(public).await?, "a fourth visitor must be turned away");

    // One leaves; its place frees once the relay has seen it go.
    drop(held.pop());
    tokio::time::timeout(STEP, async {
        while turned_away(public).await? {
            tokio::task::yield_now().await;
        }
        anyhow::Ok(())
    })
    .await??;
    drop(held);
    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn an_address_at_its_limit_is_turned_away_on_every_tunnel_while_others_are_served() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = relay_config(dir.path());
    config.max_visitors_per_ip = 2;
    let relay = TestRelay::start_with(config).await?;
    let echo = echo_server().await?;
    let (agent, tunnels) = TestAgent::start(relay.plan(vec![tunnel("a", echo), tunnel("b", echo)])).await?;
    let (a, b) = (public_addr(&tunnels[0]), public_addr(&tunnels[1]));

    let _one = held_visitor("127.0.0.1", a).await?;
    let _two = held_visitor("127.0.0.1", b).await?;
    assert!(turned_away(a).await?, "a third visitor from the same address, tunnel a");
    assert!(turned_away(b).await?, "a third visitor from the same address, tunnel b");
    let _other = held_visitor("127.0.0.2", a).await?;

    agent.stop().await?;
    relay.stop().await
}

/// Visitors that stop reading pin only their own stream's window: other visitors of the same
/// tunnel and other tunnels of the same session keep flowing.
#[tokio::test]
async fn visitors_that_stop_reading_do_not_freeze_the_session() -> anyhow::Result<()> {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };
    const STALLED: usize = 5;
    let written = Arc::new((0..STALLED + 1).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
    let next = Arc::new(AtomicU64::new(0));
    let (counters, turn) = (written.clone(), next.clone());
    // Each visitor gets as much as the path will take: far more than every buffer on the way.
    let flood = local_server(move |mut tcp| {
        let (counters, slot) = (counters.clone(), turn.fetch_add(1, Ordering::SeqCst) as usize);
        async move {
            let chunk = vec![7u8; 64 * 1024];
            for _ in 0..1024 {
                tcp.write_all(&chunk).await?;
                if let Some(counter) = counters.get(slot) {
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }
            Ok(())
        }
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let plan = relay.plan(vec![tunnel("flood", flood), tunnel("canary", echo_server().await?)]);
    let (agent, tunnels) = TestAgent::start(plan).await?;
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(TcpStream::connect(public_addr(&tunnels[0])).await?);
    }
    // Wait until every stalled visitor's server is blocked: its count stops moving.
    let quiet = std::time::Duration::from_millis(500);
    let deadline = std::time::Instant::now() + STEP;
    let total = |w: &[AtomicU64]| w.iter().take(STALLED).map(|c| c.load(Ordering::Relaxed)).collect::<Vec<_>>();
    let mut before = total(&written);
    loop {
        tokio::time::sleep(quiet).await;
        let now = total(&written);
        if now == before && now.iter().all(|n| *n > 2 * 1024 * 1024) {
            break;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the stalled visitors' servers never blocked: {now:?}");
        before = now;
    }
    let started = std::time::Instant::now();
    assert_eq!(exchange(public_addr(&tunnels[1]), b"other tunnel").await?, b"other tunnel");
    let mut fresh = TcpStream::connect(public_addr(&tunnels[0])).await?;
    let mut first = vec![0u8; 256 * 1024];
    tokio::time::timeout(STEP, fresh.read_exact(&mut first)).await??;
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(1), "other visitors waited {took:?} behind stalled ones");
    drop((stalled, fresh));
    agent.stop().await?;
    relay.stop().await
}

/// Waits until the relay counts `open` visitors, then until it counts none, and returns how
/// long the second wait took.
async fn open_then_cut_off(relay: &TestRelay, open: f64) -> anyhow::Result<std::time::Duration> {
    settled(relay, "burrow_visitors", open).await?;
    let started = std::time::Instant::now();
    settled(relay, "burrow_visitors", 0.0).await?;
    Ok(started.elapsed())
}

/// A local server that writes to each connection until the write fails, a bounded amount.
async fn endless_server() -> anyhow::Result<SocketAddr> {
    local_server(|mut tcp| async move {
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..16 * 1024 {
            tcp.write_all(&chunk).await?;
        }
        Ok(())
    })
    .await
}

/// The visitor ends its connection (a FIN or a reset) within `STEP`, without having sent or
/// received anything more.
async fn closed_by_relay(tcp: &mut TcpStream) -> anyhow::Result<()> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(STEP, tcp.read(&mut byte)).await? {
        Ok(0) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        other => anyhow::bail!("expected an end, got {other:?}"),
    }
}

/// A visitor that opens a connection to a server that streams and never reads a byte must not
/// hold its stream and its places for ever: once a write to it has waited
/// `visitor_write_timeout`, it is cut off.
#[tokio::test]
async fn a_visitor_that_stops_reading_is_cut_off_after_the_write_timeout() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let limit = std::time::Duration::from_secs(1);
    let config = relay::RelayConfig { visitor_write_timeout: limit, ..relay_config(dir.path()) };
    let relay = TestRelay::start_with(config).await?;
    let (agent, tunnels) = TestAgent::start(relay.plan(vec![tunnel("stream", endless_server().await?)])).await?;

    let stalled = TcpStream::connect(public_addr(&tunnels[0])).await?;
    let took = open_then_cut_off(&relay, 1.0).await?;
    assert!(took >= limit - std::time::Duration::from_millis(100), "cut off after {took:?}");
    // The tunnel still serves visitors that read.
    let mut reader = TcpStream::connect(public_addr(&tunnels[0])).await?;
    let mut first = vec![0u8; 64 * 1024];
    tokio::time::timeout(STEP, reader.read_exact(&mut first)).await??;
    drop((stalled, reader));
    agent.stop().await?;
    relay.stop().await
}

/// An HTTP visitor that asks for a large download and never reads it is cut off the same way.
#[tokio::test]
async fn an_http_visitor_that_stops_reading_is_cut_off_after_the_write_timeout() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let limit = std::time::Duration::from_secs(1);
    let config = relay::RelayConfig { visitor_write_timeout: limit, ..testkit::http::http_relay_config(dir.path()) };
    let relay = testkit::http::HttpRelay::start_with(config).await?;
    let app = testkit::http_apps::LocalApp::start("web").await?;
    let plan = relay.plan(vec![testkit::http::http_tunnel("web", app.addr, Some("myapp"))]);
    let (agent, _) = TestAgent::start(plan).await?;

    let mut stalled = TcpStream::connect(relay.http).await?;
    let request = "GET /download?bytes=1073741824 HTTP/1.1\r\nHost: myapp.burrow.test\r\n\r\n";
    stalled.write_all(request.as_bytes()).await?;
    let took = open_then_cut_off(&relay, 1.0).await?;
    assert!(took >= limit - std::time::Duration::from_millis(100), "cut off after {took:?}");
    drop(stalled);
    agent.stop().await?;
    relay.stop().await
}

/// A request body that stops arriving midway is cut off after `http_body_idle_timeout`: the
/// visitor gets a 408 (or its connection closes) rather than holding a stream for ever.
#[tokio::test]
async fn a_trickled_request_body_is_cut_off_after_the_body_idle_timeout() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let limit = std::time::Duration::from_secs(1);
    let config = relay::RelayConfig { http_body_idle_timeout: limit, ..testkit::http::http_relay_config(dir.path()) };
    let relay = testkit::http::HttpRelay::start_with(config).await?;
    let app = testkit::http_apps::LocalApp::start("web").await?;
    let plan = relay.plan(vec![testkit::http::http_tunnel("web", app.addr, Some("myapp"))]);
    let (agent, _) = TestAgent::start(plan).await?;

    let started = std::time::Instant::now();
    let mut trickle = TcpStream::connect(relay.http).await?;
    let head = "POST /upload HTTP/1.1\r\nHost: myapp.burrow.test\r\nContent-Length: 1000\r\n\r\n";
    trickle.write_all(head.as_bytes()).await?;
    trickle.write_all(&[b'x'; 10]).await?;
    let mut answer = Vec::new();
    match tokio::time::timeout(std::time::Duration::from_secs(5), trickle.read_to_end(&mut answer)).await {
        Err(_) => anyhow::bail!("the trickling visitor was still connected after 5 s"),
        Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(Ok(_)) => {
            let text = String::from_utf8_lossy(&answer);
            assert!(answer.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
        }
    }
    let took = started.elapsed();
    assert!(took >= limit - std::time::Duration::from_millis(100), "cut off after {took:?}");
    settled(&relay, "burrow_visitors", 0.0).await?;
    agent.stop().await?;
    relay.stop().await
}

/// With `tcp_idle_timeout` set on the relay, a visitor with nothing moving either way is
/// closed once that long has passed; one that keeps talking is not.
#[tokio::test]
async fn a_relay_idle_timeout_closes_quiet_visitors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let limit = std::time::Duration::from_secs(1);
    let config = relay::RelayConfig { tcp_idle_timeout: Some(limit), ..relay_config(dir.path()) };
    let relay = TestRelay::start_with(config).await?;
    let (agent, tunnels) = TestAgent::start(relay.plan(vec![tunnel("echo", echo_server().await?)])).await?;

    let mut quiet = TcpStream::connect(public_addr(&tunnels[0])).await?;
    assert_eq!(round_trip(&mut quiet, b"hello").await?, b"hello");
    let last_byte = std::time::Instant::now();
    closed_by_relay(&mut quiet).await?;
    let took = last_byte.elapsed();
    assert!(took >= limit - std::time::Duration::from_millis(100), "closed after {took:?}");
    settled(&relay, "burrow_visitors", 0.0).await?;
    agent.stop().await?;
    relay.stop().await
}
