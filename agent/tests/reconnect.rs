//! Stable public addresses: across relay restarts, agent restarts and duplicate agents.
//! Run with `cargo test -p burrow-agent --test reconnect`.

mod support;

use agent::Status;
use support::*;

#[tokio::test]
async fn agent_reconnects_by_itself_after_a_relay_restart_and_keeps_its_port() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let relay_addr = relay.addr;
    let echo = echo_server().await?;
    let (mut agent, before) = TestAgent::start(relay.plan(vec![tunnel("web", echo)])).await?;
    assert_eq!(
        exchange(public_addr(&before[0]), b"before").await?,
        b"before"
    );

    relay.stop().await?;
    tokio::time::timeout(
        STEP,
        agent
            .status
            .wait_for(|s| matches!(s, Status::Retrying { .. })),
    )
    .await??;

    let mut config = relay_config(dir.path());
    config.listen = relay_addr;
    let relay = TestRelay::start_with(config).await?;
    let after = agent.online().await?;
    assert_eq!(
        after[0].port, before[0].port,
        "the reservation must survive the restart"
    );
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
async fn a_newer_session_of_the_same_tunnel_replaces_the_old_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let old_server = local_server(|mut tcp| async move {
        tokio::io::AsyncWriteExt::write_all(&mut tcp, b"old").await
    })
    .await?;
    let new_server = local_server(|mut tcp| async move {
        tokio::io::AsyncWriteExt::write_all(&mut tcp, b"new").await
    })
    .await?;
    let (old, old_tunnels) = TestAgent::start(relay.plan(vec![tunnel("web", old_server)])).await?;
    let (new, new_tunnels) = TestAgent::start(relay.plan(vec![tunnel("web", new_server)])).await?;
    assert_eq!(new_tunnels[0].port, old_tunnels[0].port);

    // The replaced agent stops with a clear error rather than fighting back.
    let err = old.finished().await?.unwrap_err();
    assert!(format!("{err:#}").contains("took over"), "{err:#}");
    assert_eq!(exchange(public_addr(&new_tunnels[0]), b"").await?, b"new");
    new.stop().await?;
    relay.stop().await
}
