//! Relay settings edited while it runs: limits applied to the open tunnels at once, keys
//! that need a restart named, and the compiled relay re-reading its file on SIGHUP.
//! Run with `cargo test -p burrow-relay --test reload`.

use anyhow::Context;
use testkit::{
    STEP, TestAgent, TestRelay, echo_server,
    processes::{RelayBinary, relay_bin},
    public_addr, relay_config, round_trip, tunnel,
};
use tokio::{net::TcpStream, process::Command};

/// Whether a visitor's connection to `addr` is served (its echo comes back) rather than reset.
async fn served(addr: std::net::SocketAddr) -> bool {
    match TcpStream::connect(addr).await {
        Ok(mut tcp) => round_trip(&mut tcp, b"?").await.is_ok_and(|back| back == b"?"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn the_relay_applies_edited_limits_and_names_keys_that_need_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = relay_config(dir.path());
    let relay = relay::Relay::bind(config.clone())?;
    let reloader = relay.reloader();
    let test_relay = TestRelay::run(relay, config.token.clone().context("token")?)?;
    let (agent, tunnels) = TestAgent::start(test_relay.plan(vec![tunnel("web", echo_server().await?)])).await?;
    let public = public_addr(&tunnels[0]);
    let mut first = TcpStream::connect(public).await?;
    assert_eq!(round_trip(&mut first, b"one").await?, b"one");
    assert!(served(public).await, "a second visitor from the same address is served at first");

    let applied = reloader.apply(relay::RelayConfig {
        max_visitors_per_ip: 1,
        listen: "127.0.0.1:1".parse()?,
        ..config.clone()
    })?;
    assert_eq!(applied.changed, ["max_visitors_per_ip: 256 -> 1"]);
    assert_eq!(applied.needs_restart, ["listen"]);
    assert!(!served(public).await, "past the new cap, a second visitor is reset");
    assert_eq!(round_trip(&mut first, b"still").await?, b"still", "the open visitor keeps its place");

    assert!(reloader.apply(relay::RelayConfig { max_visitors_per_tunnel: 0, ..config.clone() }).is_err());
    reloader.apply(config)?;
    assert!(served(public).await, "the cap can be raised again");
    agent.stop().await?;
    test_relay.stop().await
}

/// The compiled relay re-reads its config file on SIGHUP.
#[tokio::test]
async fn the_relay_binary_reloads_its_config_file_on_sighup() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("relay.toml");
    let data = dir.path().join("data");
    let settings = |extra: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\npublic_bind = \"127.0.0.1\"\nadmin_listen = \"off\"\ndata_dir = \"{}\"\n\
             token = \"reload-test-token-0123456789\"\n{extra}",
            data.display()
        )
    };
    std::fs::write(&file, settings(""))?;
    let binary = RelayBinary::launch(Command::new(relay_bin()?).arg("--config").arg(&file)).await?;
    let (cancel, task) = (tokio_util::sync::CancellationToken::new(), tokio::spawn(async { Ok(()) }));
    let handle = TestRelay {
        addr: binary.addr,
        admin: None,
        fingerprint: binary.fingerprint,
        token: burrow_common::Secret::new("reload-test-token-0123456789"),
        cancel,
        task,
    };
    let (agent, tunnels) = TestAgent::start(handle.plan(vec![tunnel("web", echo_server().await?)])).await?;
    let public = public_addr(&tunnels[0]);
    let mut first = TcpStream::connect(public).await?;
    assert_eq!(round_trip(&mut first, b"one").await?, b"one");

    std::fs::write(&file, settings("max_visitors_per_ip = 1\n"))?;
    let relay = &binary.process;
    Command::new("kill").args(["-HUP", &relay.pid()?.to_string()]).status().await?;
    // The reload is seen by its effect: a second visitor is refused once it is in force.
    let refused = tokio::time::timeout(STEP, async {
        while served(public).await {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(refused.is_ok(), "the new cap was never applied; stderr: {}", relay.stderr_text());
    relay.stderr_line_with("config reloaded: max_visitors_per_ip: 256 -> 1").await?;
    assert_eq!(round_trip(&mut first, b"still").await?, b"still");
    agent.stop().await?;
    Ok(())
}

/// The configured token is revoked by editing the config: the sessions that used it end at
/// once, told why, and the new token is accepted without a restart.
#[tokio::test]
async fn changing_the_configured_token_ends_its_sessions() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = relay_config(dir.path());
    let relay = relay::Relay::bind(config.clone())?;
    let reloader = relay.reloader();
    let test_relay = TestRelay::run(relay, config.token.clone().context("token")?)?;
    let echo = echo_server().await?;
    let (old, _) = TestAgent::start(test_relay.plan(vec![tunnel("web", echo)])).await?;

    let new_token = burrow_common::Secret::new("the-new-configured-token-0123456789");
    let applied = reloader.apply(relay::RelayConfig { token: Some(new_token.clone()), ..config })?;
    assert_eq!(applied.changed, ["token: changed"], "applied at once, and never logged");
    assert!(applied.needs_restart.is_empty());
    let changed = std::time::Instant::now();
    let err = old.finished().await?.unwrap_err();
    let took = changed.elapsed();
    assert!(format!("{err:#}").contains("revoked this agent's token"), "{err:#}");
    assert!(took < std::time::Duration::from_secs(3), "the old session lasted {took:?}");

    let mut plan = test_relay.plan(vec![tunnel("web", echo)]);
    plan.token = new_token;
    let (new, tunnels) = TestAgent::start(plan).await?;
    assert_eq!(round_trip(&mut TcpStream::connect(public_addr(&tunnels[0])).await?, b"new").await?, b"new");
    new.stop().await?;
    test_relay.stop().await
}
