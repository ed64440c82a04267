//! Relays sharing their tokens and claims through etcd: `relay token` against the store
//! through the compiled binary, and a revocation ending a token's sessions on every relay.
//! Needs the `etcd` feature and etcd installed:
//! `cargo test -p burrow-relay --features etcd --test etcd_store`.

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::Context;
use burrow_common::Secret;
use relay::RelayConfig;
use testkit::{
    TestAgent, TestRelay, echo_server, etcd::Etcd, processes::required, public_addr, relay_config, round_trip, tunnel,
};
use tokio::net::TcpStream;

fn relay(etcd: &Etcd, data_dir: &std::path::Path, args: &[&str]) -> anyhow::Result<Output> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_relay"));
    command.args(args).args(["--store", &etcd.url()]).arg("--data-dir").arg(data_dir);
    Ok(command.output()?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `relay token add` against etcd, printing the token once.
fn add_token(etcd: &Etcd, data_dir: &std::path::Path, name: &str) -> anyhow::Result<Secret> {
    let added = relay(etcd, data_dir, &["token", "add", name])?;
    anyhow::ensure!(added.status.success(), "{}", text(&added.stderr));
    Ok(Secret::new(text(&added.stdout).trim()))
}

#[test]
fn tokens_are_added_invited_listed_and_revoked_in_etcd() -> anyhow::Result<()> {
    if !Etcd::available()? {
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let etcd = runtime.block_on(Etcd::start())?;
    let (one, two) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let token = add_token(&etcd, one.path(), "alice")?;
    assert!(token.expose().starts_with("brw_") && token.expose().len() == 47);
    assert!(!one.path().join("tokens.json").exists(), "kept in etcd, not the data directory");

    // Another relay's machine sees the same tokens.
    let listed = relay(&etcd, two.path(), &["token", "list"])?;
    assert_eq!(text(&listed.stdout), "alice\tports: all\tsubdomains: all\thostnames: none\n");
    let again = relay(&etcd, two.path(), &["token", "add", "alice"])?;
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("a token named \"alice\" already exists"), "{}", text(&again.stderr));

    let invited = relay(&etcd, two.path(), &["invite", "bob", "--ports", "22"])?;
    assert!(invited.status.success(), "{}", text(&invited.stderr));
    assert!(text(&invited.stdout).contains("BURROW_TOKEN=brw_"), "{}", text(&invited.stdout));
    let listed = text(&relay(&etcd, one.path(), &["token", "list"])?.stdout);
    assert!(listed.contains("bob\tports: 22\t"), "an invitation's token is the fleet's: {listed}");
    assert!(relay(&etcd, one.path(), &["token", "revoke", "bob"])?.status.success());

    assert!(relay(&etcd, two.path(), &["token", "revoke", "alice"])?.status.success());
    assert_eq!(text(&relay(&etcd, one.path(), &["token", "list"])?.stdout), "");
    let missing = relay(&etcd, one.path(), &["token", "revoke", "alice"])?;
    assert!(text(&missing.stderr).contains("no token named \"alice\""), "{}", text(&missing.stderr));
    Ok(())
}

/// A relay whose etcd does not answer fails to start within its request timeout, naming
/// the store.
#[tokio::test]
async fn an_unreachable_etcd_fails_the_start_naming_the_store() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let closed = testkit::closed_port().await?;
    let mut config = relay_config(dir.path());
    config.store.url = format!("etcd://{closed}").parse().map_err(anyhow::Error::msg)?;
    config.store.request_timeout = Duration::from_millis(500);
    let err = relay::Relay::open(config).await.err().context("no etcd there")?;
    let printed = format!("{:#}", anyhow::Error::from(err));
    assert!(printed.contains(&format!("store.url = etcd://{closed}")), "{printed}");
    Ok(())
}

fn fleet_config(etcd: &Etcd, dir: &std::path::Path) -> anyhow::Result<RelayConfig> {
    let mut config = relay_config(dir);
    config.store.url = etcd.url().parse().map_err(anyhow::Error::msg)?;
    Ok(config)
}

/// Two relays on one etcd, an agent of one token on each: revoking the token (from a third
/// machine, through the store) ends both sessions within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_ends_the_tokens_sessions_on_every_relay() -> anyhow::Result<()> {
    if !Etcd::available()? {
        return Ok(());
    }
    let etcd = Etcd::start().await?;
    let dirs = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    let alice = add_token(&etcd, dirs.2.path(), "alice")?;
    let relay_a = TestRelay::start_with(fleet_config(&etcd, dirs.0.path())?).await?;
    let relay_b = TestRelay::start_with(fleet_config(&etcd, dirs.1.path())?).await?;
    let echo = echo_server().await?;
    let mut agents = Vec::new();
    for (relay, name) in [(&relay_a, "web-a"), (&relay_b, "web-b")] {
        let mut plan = relay.plan(vec![tunnel(name, echo)]);
        plan.token = alice.clone();
        let (agent, tunnels) = TestAgent::start(plan).await?;
        let mut visitor = TcpStream::connect(public_addr(&tunnels[0])).await?;
        assert_eq!(round_trip(&mut visitor, b"hello").await?, b"hello");
        agents.push(agent);
    }

    let revoked = relay(&etcd, dirs.2.path(), &["token", "revoke", "alice"])?;
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let at = Instant::now();
    for agent in agents {
        let err = agent.finished().await?.err().context("the session ended with an error")?;
        assert!(format!("{err:#}").contains("revoked this agent's token"), "{err:#}");
        let took = at.elapsed();
        assert!(took < Duration::from_secs(1), "a session lasted {took:?} after the revocation");
    }
    relay_a.stop().await?;
    relay_b.stop().await
}

/// `etcdctl` against `etcd`, returning its output.
fn etcdctl(etcd: &Etcd, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("etcdctl").arg("--endpoints").arg(etcd.endpoint()).args(args).output()?;
    anyhow::ensure!(out.status.success(), "etcdctl {args:?}: {}", text(&out.stderr));
    Ok(text(&out.stdout))
}

/// A relay whose lease is gone (as when it was cut off from etcd past its TTL) can no longer
/// prove its claims: it ends its sessions, and the agent comes back to the same port,
/// claimed again under the relay's new lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_loses_its_lease_ends_its_sessions_and_they_claim_again() -> anyhow::Result<()> {
    if !Etcd::available()? || !required("etcdctl")? {
        return Ok(());
    }
    let etcd = Etcd::start().await?;
    let dir = tempfile::tempdir()?;
    let mut config = fleet_config(&etcd, dir.path())?;
    config.store.lease_ttl = Duration::from_secs(3);
    let relay = TestRelay::start_with(config).await?;
    let echo = echo_server().await?;
    let (mut agent, tunnels) = TestAgent::start(relay.plan(vec![tunnel("web", echo)])).await?;

    let members = etcdctl(&etcd, &["get", "--prefix", "--keys-only", "/burrow/members/"])?;
    let lease =
        members.lines().find_map(|key| key.strip_prefix("/burrow/members/")).context("the relay is a member")?;
    etcdctl(&etcd, &["lease", "revoke", lease])?;
    let mut status = agent.status.clone();
    let ended = status.wait_for(|status| !matches!(status, agent::Status::Online(_)));
    tokio::time::timeout(Duration::from_secs(5), ended).await.context("the session ended")??;
    let back = agent.online().await?;
    assert_eq!(back[0].port, tunnels[0].port, "the same port, claimed again");
    assert_eq!(round_trip(&mut TcpStream::connect(public_addr(&back[0])).await?, b"again").await?, b"again");
    agent.stop().await?;
    relay.stop().await
}

/// A relay of a three-relay fleet on one etcd, each with its own public address (the same
/// port is open on all three) and the agent port it advertises to the others' agents.
async fn fleet_relay(etcd: &Etcd, dir: &std::path::Path, public: &str, port: u16) -> anyhow::Result<TestRelay> {
    let mut config = fleet_config(etcd, dir)?;
    config.listen = format!("127.0.0.1:{port}").parse()?;
    config.public_bind = public.parse()?;
    config.store.advertise = Some(format!("127.0.0.1:{port}"));
    TestRelay::start_with(config).await
}

/// Waits until the agent's sessions with the fleet's other relays are `online` in number.
async fn fleet_sessions_online(stats: &agent::stats::Stats, online: usize) -> anyhow::Result<()> {
    let mut changes = stats.subscribe();
    let count = || {
        let fleet = stats.snapshot().fleet;
        fleet.iter().filter(|s| matches!(s.state, agent::snapshot::SessionState::Online { .. })).count()
    };
    let reached = async {
        while count() != online {
            changes.changed().await?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), reached)
        .await
        .with_context(|| format!("{online} fleet sessions online: {:?}", stats.snapshot().fleet))?
}

/// One agent, started against one relay of three, is told of the other two in its Welcome
/// and opens a session with each: its tunnel's port answers on all three relays' addresses,
/// byte for byte. One relay stopping leaves the other two serving; restarted, it gets its
/// session back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_serves_through_every_relay_of_the_fleet_and_outlives_one() -> anyhow::Result<()> {
    if !Etcd::available()? {
        return Ok(());
    }
    let etcd = Etcd::start().await?;
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    let alice = add_token(&etcd, dirs[3].path(), "alice")?;
    let publics = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let mut ports = Vec::new();
    for _ in 0..3 {
        ports.push(testkit::udp_tools::free_tcp_and_udp_port().await?);
    }
    let first = fleet_relay(&etcd, dirs[0].path(), publics[0], ports[0]).await?;
    let second = fleet_relay(&etcd, dirs[1].path(), publics[1], ports[1]).await?;
    let third = fleet_relay(&etcd, dirs[2].path(), publics[2], ports[2]).await?;
    let echo = echo_server().await?;
    let mut plan = first.plan(vec![tunnel("web", echo)]);
    plan.token = alice;
    let stats = plan.stats.clone();
    let (agent, tunnels) = TestAgent::start(plan).await?;
    fleet_sessions_online(&stats, 2).await?;
    let port = tunnels[0].port;
    let echo_via = |public: &str| {
        let addr: std::net::SocketAddr = format!("{public}:{port}").parse().expect("an address");
        async move {
            let mut visitor = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
            let payload: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
            anyhow::ensure!(round_trip(&mut visitor, &payload).await? == payload, "{addr} echoed other bytes");
            anyhow::Ok(())
        }
    };
    for public in publics {
        echo_via(public).await?;
    }

    third.stop().await?;
    fleet_sessions_online(&stats, 1).await?;
    for public in &publics[..2] {
        echo_via(public).await?;
    }
    let snapshot = stats.snapshot();
    assert!(matches!(snapshot.state, agent::snapshot::SessionState::Online { .. }), "{:?}", snapshot.state);

    let third = fleet_relay(&etcd, dirs[2].path(), publics[2], ports[2]).await?;
    fleet_sessions_online(&stats, 2).await?;
    echo_via(publics[2]).await?;
    agent.stop().await?;
    for relay in [first, second, third] {
        relay.stop().await?;
    }
    Ok(())
}
