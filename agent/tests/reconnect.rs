//! Stable public addresses: across relay restarts, agent restarts and duplicate agents.
//! Run with `cargo test -p burrow-agent --test reconnect`.

use std::time::{Duration, Instant};

use agent::Status;
use testkit::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn agent_reconnects_by_itself_after_a_relay_restart_and_keeps_its_port() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let relay_addr = relay.addr;
    let echo = echo_server().await?;
    let (mut agent, before) = TestAgent::start(relay.plan(vec![tunnel("web", echo)])).await?;
    assert_eq!(exchange(public_addr(&before[0]), b"before").await?, b"before");

    relay.stop().await?;
    tokio::time::timeout(STEP, agent.status.wait_for(|s| matches!(s, Status::Retrying { .. }))).await??;

    let mut config = relay_config(dir.path());
    config.listen = relay_addr;
    let relay = TestRelay::start_with(config).await?;
    let after = agent.online().await?;
    assert_eq!(after[0].port, before[0].port, "the reservation must survive the restart");
    assert_eq!(exchange(public_addr(&after[0]), b"after").await?, b"after");

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn restarted_agent_gets_the_same_port_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let echo = echo_server().await?;
    let (agent, first) = TestAgent::start(relay.plan(vec![tunnel("web", echo)])).await?;
    agent.stop().await?;

    // Another tunnel asking for any port must not be handed the reserved one.
    let (other, other_tunnels) = TestAgent::start(relay.plan(vec![tunnel("other", echo)])).await?;
    assert_ne!(other_tunnels[0].port, first[0].port);

    let (agent, second) = TestAgent::start(relay.plan(vec![tunnel("web", echo)])).await?;
    assert_eq!(second[0].port, first[0].port);
    agent.stop().await?;
    other.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn a_second_live_agent_cannot_take_a_tunnel_from_a_live_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let first_server = local_server(|mut tcp| async move { tcp.write_all(b"first").await }).await?;
    let (first, tunnels) = TestAgent::start(relay.plan(vec![tunnel("web", first_server)])).await?;

    let err = TestAgent::spawn(relay.plan(vec![tunnel("web", echo_server().await?)])).finished().await?.unwrap_err();
    assert_eq!(refusal(&err), Some(&burrow_common::Refusal::TunnelActive { name: "web".into() }), "{err:#}");
    assert_eq!(exchange(public_addr(&tunnels[0]), b"").await?, b"first");
    assert!(!first.task.is_finished(), "the live agent keeps its tunnel");
    first.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn an_unresponsive_session_is_replaced_within_three_seconds() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let proxy = UdpProxy::start(relay.addr).await?;
    let old_server = local_server(|mut tcp| async move { tcp.write_all(b"old").await }).await?;
    let mut old_plan = relay.plan(vec![tunnel("web", old_server)]);
    old_plan.relay.port = proxy.addr.port();
    let (old, old_tunnels) = TestAgent::start(old_plan).await?;

    // The old agent falls silent without closing anything, as after kill -9.
    proxy.cut();
    let started = Instant::now();
    let new_server = local_server(|mut tcp| async move { tcp.write_all(b"new").await }).await?;
    let (new, new_tunnels) = TestAgent::start(relay.plan(vec![tunnel("web", new_server)])).await?;
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(new_tunnels[0].port, old_tunnels[0].port);
    assert_eq!(exchange(public_addr(&new_tunnels[0]), b"").await?, b"new");

    new.stop().await?;
    old.stop().await?;
    relay.stop().await
}
