//! A session survives the agent's address changing under it (a NAT remapping its flow), with
//! every tunneled connection intact; with migration off the same scenario stalls, which
//! shows the first test exercises migration. Run with `cargo test -p burrow-agent --test migration`.

use std::time::Duration;

use testkit::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Sends `data` on an open visitor connection and reads the echo back.
async fn echo_round(visitor: &mut TcpStream, data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (mut r, mut w) = visitor.split();
    let mut back = vec![0u8; data.len()];
    let (wrote, read) = tokio::join!(w.write_all(data), r.read_exact(&mut back));
    wrote?;
    read?;
    Ok(back)
}

async fn agent_behind_proxy(relay: &TestRelay, proxy: &UdpProxy) -> anyhow::Result<(TestAgent, std::net::SocketAddr)> {
    let mut plan = relay.plan(vec![tunnel("bulk", echo_server().await?)]);
    plan.relay.port = proxy.addr.port();
    // An idle agent tells the relay its new address at its next keep-alive.
    plan.keep_alive = Duration::from_millis(200);
    // The proxy forwards one flow, as one NAT mapping; the relay counts a move per link.
    plan.links = 1;
    let (agent, tunnels) = TestAgent::start(plan).await?;
    Ok((agent, public_addr(&tunnels[0])))
}

#[tokio::test]
async fn the_session_and_its_connections_survive_three_address_changes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let proxy = UdpProxy::start(relay.addr).await?;
    let (agent, public) = agent_behind_proxy(&relay, &proxy).await?;

    let mut visitor = TcpStream::connect(public).await?;
    for moved in 1..=3 {
        let data = random_bytes(1024 * 1024);
        assert!(tokio::time::timeout(STEP, echo_round(&mut visitor, &data)).await?? == data);
        proxy.rebind();
        let data = random_bytes(1024 * 1024);
        assert!(tokio::time::timeout(STEP, echo_round(&mut visitor, &data)).await?? == data, "after move {moved}");
        settled(&relay, "burrow_migrations_total", f64::from(moved)).await?;
    }
    assert!(!agent.status.has_changed()?, "the agent never left its first session");
    assert_eq!(sample(&metrics(&relay).await?, "burrow_sessions_admitted_total"), Some(1.0));

    drop(visitor);
    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn without_migration_the_same_move_stalls_the_connection() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = relay_config(dir.path());
    config.migration = false;
    let relay = TestRelay::start_with(config).await?;
    let proxy = UdpProxy::start(relay.addr).await?;
    let (agent, public) = agent_behind_proxy(&relay, &proxy).await?;

    let mut visitor = TcpStream::connect(public).await?;
    let data = random_bytes(64 * 1024);
    assert!(tokio::time::timeout(STEP, echo_round(&mut visitor, &data)).await?? == data);
    proxy.rebind();
    // The relay drops the agent's packets from its new address, so nothing comes back.
    let stalled = tokio::time::timeout(Duration::from_secs(3), echo_round(&mut visitor, &data)).await;
    assert!(stalled.is_err(), "with migration off the connection must stall");
    assert_eq!(sample(&metrics(&relay).await?, "burrow_migrations_total"), Some(0.0));

    drop(visitor);
    agent.stop().await?;
    relay.stop().await
}
