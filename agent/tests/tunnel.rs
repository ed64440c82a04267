//! End-to-end behaviour of TCP tunnels, with relay, agent and local servers in one process.
//! Run with `cargo test -p burrow-agent --test tunnel`.

use std::time::{Duration, Instant};

use testkit::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[tokio::test]
async fn ten_megabytes_each_way_arrive_identical() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let echo = echo_server().await?;
    let (agent, tunnels) = TestAgent::start(relay.plan(vec![tunnel("bulk", echo)])).await?;

    let data = random_bytes(10 * 1024 * 1024);
    let back = exchange(public_addr(&tunnels[0]), &data).await?;
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ");

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn two_hundred_concurrent_connections_each_verified() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let echo = echo_server().await?;
    let (agent, tunnels) = TestAgent::start(relay.plan(vec![tunnel("many", echo)])).await?;
    let public = public_addr(&tunnels[0]);

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        tasks.spawn(async move {
            let mut data = random_bytes(16 * 1024);
            data[..4].copy_from_slice(&i.to_be_bytes());
            let back = exchange(public, &data).await?;
            anyhow::ensure!(back == data, "connection {i} got different bytes back");
            Ok(())
        });
    }
    let mut done = 0;
    while let Some(result) = tasks.join_next().await {
        result??;
        done += 1;
    }
    assert_eq!(done, 200);

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn half_close_still_delivers_the_full_reply() -> anyhow::Result<()> {
    // Replies only after the client's EOF, as `wc`-like services and HTTP/1.0 uploads do.
    let reply_after_eof = local_server(|mut tcp| async move {
        let mut request = Vec::new();
        tcp.read_to_end(&mut request).await?;
        tcp.write_all(format!("got {} bytes\n", request.len()).as_bytes()).await?;
        tcp.write_all(&request).await?;
        tcp.shutdown().await
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let (agent, tunnels) = TestAgent::start(relay.plan(vec![tunnel("half", reply_after_eof)])).await?;

    let request = random_bytes(300_000);
    let reply = exchange(public_addr(&tunnels[0]), &request).await?;
    let header = b"got 300000 bytes\n";
    assert_eq!(&reply[..header.len()], header);
    assert!(reply[header.len()..] == request[..]);

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn server_that_speaks_first_is_heard_without_client_bytes() -> anyhow::Result<()> {
    let banner = local_server(|mut tcp| async move {
        tcp.write_all(b"SSH-2.0-burrow_test\r\n").await?;
        let mut rest = Vec::new();
        tcp.read_to_end(&mut rest).await?;
        Ok(())
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let (agent, tunnels) = TestAgent::start(relay.plan(vec![tunnel("ssh", banner)])).await?;

    let mut visitor = TcpStream::connect(public_addr(&tunnels[0])).await?;
    let mut line = [0u8; 21];
    tokio::time::timeout(STEP, visitor.read_exact(&mut line)).await??;
    assert_eq!(&line, b"SSH-2.0-burrow_test\r\n");

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn local_server_down_closes_the_visitor_promptly_and_nothing_else() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let down = closed_port().await?;
    let echo = echo_server().await?;
    let plan = relay.plan(vec![tunnel("down", down), tunnel("up", echo)]);
    let (agent, tunnels) = TestAgent::start(plan).await?;

    for _ in 0..3 {
        let started = Instant::now();
        let mut visitor = TcpStream::connect(public_addr(&tunnels[0])).await?;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(STEP, visitor.read(&mut buf)).await?;
        // An RST (error) or a FIN (0 bytes): either way the visitor is not left hanging.
        assert!(!matches!(read, Ok(n) if n > 0), "a down local server must not produce data");
        assert!(started.elapsed() < Duration::from_secs(2), "closed after {:?}", started.elapsed());
    }
    assert_eq!(exchange(public_addr(&tunnels[1]), b"still here").await?, b"still here");
    assert!(!agent.task.is_finished(), "the agent keeps running");

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn two_tunnels_on_one_agent_reach_their_own_servers() -> anyhow::Result<()> {
    let first = local_server(|mut tcp| async move { tcp.write_all(b"first").await }).await?;
    let second = local_server(|mut tcp| async move { tcp.write_all(b"second").await }).await?;
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let (agent, tunnels) = TestAgent::start(relay.plan(vec![tunnel("a", first), tunnel("b", second)])).await?;

    assert_ne!(tunnels[0].port, tunnels[1].port);
    assert_eq!(exchange(public_addr(&tunnels[0]), b"").await?, b"first");
    assert_eq!(exchange(public_addr(&tunnels[1]), b"").await?, b"second");

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn two_agents_at_once() -> anyhow::Result<()> {
    let one = local_server(|mut tcp| async move { tcp.write_all(b"agent one").await }).await?;
    let two = local_server(|mut tcp| async move { tcp.write_all(b"agent two").await }).await?;
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let (agent_one, t1) = TestAgent::start(relay.plan(vec![tunnel("web", one)])).await?;
    let (agent_two, t2) = TestAgent::start(relay.plan(vec![tunnel("web-2", two)])).await?;

    assert_eq!(exchange(public_addr(&t1[0]), b"").await?, b"agent one");
    assert_eq!(exchange(public_addr(&t2[0]), b"").await?, b"agent two");

    // One agent leaving frees its port at once and leaves the other serving.
    agent_one.stop().await?;
    let refused = TcpStream::connect(public_addr(&t1[0])).await;
    assert!(refused.is_err(), "the stopped agent's port must be closed");
    assert_eq!(exchange(public_addr(&t2[0]), b"").await?, b"agent two");

    agent_two.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn requested_port_is_granted_when_free() -> anyhow::Result<()> {
    let free = closed_port().await?.port();
    let dir = tempfile::tempdir()?;
    let mut config = relay_config(dir.path());
    config.ports = format!("{free}-{free}").parse().map_err(anyhow::Error::msg)?;
    let relay = TestRelay::start_with(config).await?;
    let echo = echo_server().await?;
    let mut wanted = tunnel("fixed", echo);
    wanted.remote_port = Some(free);
    let (agent, tunnels) = TestAgent::start(relay.plan(vec![wanted])).await?;
    assert_eq!(tunnels[0].port, free);
    assert_eq!(exchange(public_addr(&tunnels[0]), b"ok").await?, b"ok");
    agent.stop().await?;
    relay.stop().await
}

/// A tunnel with `tcp_idle_timeout` closes, at the agent, a visitor with nothing moving
/// either way for that long, whatever the relay's own settings.
#[tokio::test]
async fn a_tunnel_idle_timeout_closes_quiet_visitors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let limit = Duration::from_secs(1);
    let mut quiet_tunnel = tunnel("quiet", echo_server().await?);
    quiet_tunnel.tcp_idle_timeout = Some(limit);
    let (agent, tunnels) = TestAgent::start(relay.plan(vec![quiet_tunnel])).await?;

    let mut visitor = TcpStream::connect(public_addr(&tunnels[0])).await?;
    assert_eq!(round_trip(&mut visitor, b"hello").await?, b"hello");
    let last_byte = Instant::now();
    let mut byte = [0u8; 1];
    match tokio::time::timeout(STEP, visitor.read(&mut byte)).await? {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => anyhow::bail!("expected the quiet visitor to be closed, got {other:?}"),
    }
    let took = last_byte.elapsed();
    assert!(took >= limit - Duration::from_millis(100), "closed after {took:?}");
    settled(&relay, "burrow_visitors", 0.0).await?;

    agent.stop().await?;
    relay.stop().await
}
