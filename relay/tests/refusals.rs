//! Setup mistakes end the agent with an error that names the problem, and never disturb
//! other agents. Run with `cargo test -p burrow-relay --test refusals`.

use std::time::{Duration, Instant};

use burrow_common::{Refusal, Secret, tls::Trust};
use relay::RelayConfig;
use testkit::*;

#[tokio::test]
async fn wrong_token_is_refused_with_a_clear_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let echo = echo_server().await?;
    let mut plan = relay.plan(vec![tunnel("web", echo)]);
    plan.token = Secret::new("not-the-token");

    let started = Instant::now();
    let err = TestAgent::spawn(plan).finished().await?.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "refusal took {:?}", started.elapsed());
    assert_eq!(refusal(&err), Some(&Refusal::BadToken), "{err:#}");
    let message = format!("{err:#}");
    assert!(!message.contains("not-the-token"), "the token must not appear in errors");
    relay.stop().await
}

#[tokio::test]
async fn wrong_fingerprint_is_refused_before_any_token_is_sent() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let other = burrow_common::tls::self_signed(&["other.test".into()])?;
    let other = burrow_common::tls::Identity::from_pem(other.cert_pem.as_bytes(), other.key_pem.as_bytes())?;
    let mut plan = relay.plan(vec![tunnel("web", echo_server().await?)]);
    plan.trust = Trust::Pinned(other.fingerprint());

    let err = TestAgent::spawn(plan).finished().await?.unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("does not match --fingerprint"), "{message}");
    relay.stop().await
}

#[tokio::test]
async fn port_in_use_is_refused_by_number() -> anyhow::Result<()> {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = taken.local_addr()?.port();
    let dir = tempfile::tempdir()?;
    let mut config = relay_config(dir.path());
    config.ports = format!("{port}-{port}").parse().map_err(anyhow::Error::msg)?;
    let relay = TestRelay::start_with(config).await?;
    let mut wanted = tunnel("web", echo_server().await?);
    wanted.remote_port = Some(port);

    let err = TestAgent::spawn(relay.plan(vec![wanted])).finished().await?.unwrap_err();
    assert_eq!(refusal(&err), Some(&Refusal::PortTaken { port }));
    // What the agent binary prints after `error: `.
    assert_eq!(format!("{err:#}"), format!("the relay refused: port {port} is already in use on the relay"));
    relay.stop().await
}

#[tokio::test]
async fn port_taken_by_another_agent_is_refused_and_the_holder_keeps_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let echo = echo_server().await?;
    let (holder, tunnels) = TestAgent::start(relay.plan(vec![tunnel("first", echo)])).await?;
    let mut wanted = tunnel("second", echo);
    wanted.remote_port = Some(tunnels[0].port);

    let err = TestAgent::spawn(relay.plan(vec![wanted])).finished().await?.unwrap_err();
    assert_eq!(refusal(&err), Some(&Refusal::PortTaken { port: tunnels[0].port }), "{err:#}");
    assert_eq!(exchange(public_addr(&tunnels[0]), b"mine").await?, b"mine");
    holder.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn port_outside_the_range_is_refused_with_the_allowed_range() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = relay_config(dir.path());
    config.ports = "20000-20010".parse().map_err(anyhow::Error::msg)?;
    let relay = TestRelay::start_with(config).await?;
    let mut wanted = tunnel("web", echo_server().await?);
    wanted.remote_port = Some(80);

    let err = TestAgent::spawn(relay.plan(vec![wanted])).finished().await?.unwrap_err();
    let expected = Refusal::PortNotAllowed { port: 80, allowed: "20000-20010".into() };
    assert_eq!(refusal(&err), Some(&expected), "{err:#}");
    relay.stop().await
}

#[tokio::test]
async fn token_limited_to_ports_cannot_take_others() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let free = tokio::net::TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    let outside = free.checked_sub(1).filter(|p| *p > 0).unwrap_or(free + 1);
    let store = relay::tokens::TokenStore::open(dir.path());
    let ports = [format!("{free}").parse().map_err(anyhow::Error::msg)?];
    let limited = store.add("limited", relay::tokens::Limits { ports: Some(&ports), ..Default::default() })?;
    let mut config = relay_config(dir.path());
    config.ports = format!("{}-{}", free.min(outside), free.max(outside)).parse().map_err(anyhow::Error::msg)?;
    let relay = TestRelay::start_with(config).await?;
    let echo = echo_server().await?;

    let mut plan = relay.plan(vec![tunnel("any", echo)]);
    plan.token = limited.clone();
    let mut plan_outside = plan.clone();
    plan_outside.tunnels[0].remote_port = Some(outside);
    let err = TestAgent::spawn(plan_outside).finished().await?.unwrap_err();
    let expected = Refusal::PortNotAllowed { port: outside, allowed: free.to_string() };
    assert_eq!(refusal(&err), Some(&expected), "{err:#}");

    // With no port asked for, the relay picks the only one the token may use.
    let (agent, tunnels) = TestAgent::start(plan.clone()).await?;
    assert_eq!(tunnels[0].port, free);

    // `--ports none` closes TCP and UDP tunnels to a token.
    plan.token = store.add("no-ports", relay::tokens::Limits { ports: Some(&[]), ..Default::default() })?;
    let err = TestAgent::spawn(plan).finished().await?.unwrap_err();
    assert!(format!("{err:#}").contains("may open no TCP or UDP tunnels"), "{err:#}");
    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn one_token_cannot_hold_more_tunnels_than_its_limit_across_sessions() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start_with(RelayConfig { max_tunnels_per_token: 2, ..relay_config(dir.path()) }).await?;
    let echo = echo_server().await?;
    let (first, tunnels) = TestAgent::start(relay.plan(vec![tunnel("a", echo), tunnel("b", echo)])).await?;

    let err = TestAgent::spawn(relay.plan(vec![tunnel("c", echo)])).finished().await?.unwrap_err();
    assert_eq!(refusal(&err), Some(&Refusal::TokenTunnelLimit { max: 2 }), "{err:#}");
    assert_eq!(exchange(public_addr(&tunnels[1]), b"still served").await?, b"still served");

    // The limit counts tunnels held now: once the first agent leaves, another may open.
    first.stop().await?;
    let (second, _) = TestAgent::start(relay.plan(vec![tunnel("c", echo)])).await?;
    second.stop().await?;
    relay.stop().await
}

/// Many sessions asking for the same tunnel name at different places (here subdomains) still
/// count against the token's limit: only one place of a tunnel may be taken over for free.
#[tokio::test]
async fn sessions_repeating_one_tunnel_name_cannot_get_past_the_token_limit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = RelayConfig { max_tunnels_per_token: 2, ..testkit::http::http_relay_config(dir.path()) };
    let relay = TestRelay::start_with(config).await?;
    let echo = echo_server().await?;
    let mut agents = Vec::new();
    let refused = loop {
        anyhow::ensure!(agents.len() <= 3, "{} sessions of one tunnel name were admitted", agents.len());
        let local = tunnel("same", echo).local;
        let name = format!("place{}", agents.len());
        let plan = relay.plan(vec![agent::TunnelPlan::http("same", local, Some(&name))]);
        let mut agent = TestAgent::spawn(plan);
        match agent.online().await {
            Ok(_) => agents.push(agent),
            Err(e) => break e,
        }
    };
    assert_eq!(refusal(&refused), Some(&Refusal::TokenTunnelLimit { max: 2 }), "{refused:#}");
    for agent in agents {
        agent.stop().await?;
    }
    relay.stop().await
}

#[tokio::test]
async fn revoking_a_token_ends_its_sessions_at_once_and_no_other() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let store = relay::tokens::TokenStore::open(dir.path());
    let teammate_token = store.add("teammate", Default::default())?;
    let echo = echo_server().await?;
    let mut teammate_plan = relay.plan(vec![tunnel("theirs", echo)]);
    teammate_plan.token = teammate_token;
    let (teammate, _) = TestAgent::start(teammate_plan).await?;
    let (other, others) = TestAgent::start(relay.plan(vec![tunnel("mine", echo)])).await?;

    // What `relay token revoke teammate` does from another process: edit the token file.
    assert!(store.revoke("teammate")?);
    let revoked = Instant::now();
    let err = teammate.finished().await?.unwrap_err();
    let took = revoked.elapsed();
    assert!(format!("{err:#}").contains("revoked this agent's token"), "{err:#}");
    assert!(took < Duration::from_secs(3), "the revoked session lasted {took:?}");
    assert_eq!(exchange(public_addr(&others[0]), b"still here").await?, b"still here");
    other.stop().await?;
    relay.stop().await
}

/// Two consecutive ports free on loopback now, for a relay range of exactly two.
async fn two_free_ports() -> anyhow::Result<(u16, u16)> {
    for _ in 0..64 {
        let first = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = first.local_addr()?.port();
        if port < u16::MAX && tokio::net::TcpListener::bind(("127.0.0.1", port + 1)).await.is_ok() {
            return Ok((port, port + 1));
        }
    }
    anyhow::bail!("no two consecutive free ports found")
}

/// Places belong to a token, not to its name: a new token under a revoked token's name is
/// another token, so the revoked one's reservations are not handed to whoever gets the name.
#[tokio::test]
async fn a_token_added_again_under_a_revoked_name_does_not_get_its_reservations() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (low, high) = two_free_ports().await?;
    let mut config = relay_config(dir.path());
    config.ports = format!("{low}-{high}").parse().map_err(anyhow::Error::msg)?;
    let relay = TestRelay::start_with(config).await?;
    let store = relay::tokens::TokenStore::open(dir.path());
    let echo = echo_server().await?;
    let mut plan = relay.plan(vec![tunnel("web", echo)]);
    plan.token = store.add("team", Default::default())?;
    let (first, tunnels) = TestAgent::start(plan.clone()).await?;
    let reserved = tunnels[0].port;
    first.stop().await?;

    assert!(store.revoke("team")?);
    plan.token = store.add("team", Default::default())?;
    let (second, tunnels) = TestAgent::start(plan).await?;
    assert_ne!(tunnels[0].port, reserved, "the new token got the revoked token's reserved port");
    assert_eq!(exchange(public_addr(&tunnels[0]), b"its own").await?, b"its own");
    second.stop().await?;
    relay.stop().await
}

/// Replaces the subdomains a stored token may claim, as an operator editing tokens.json would.
fn restrict_subdomains(data_dir: &std::path::Path, token: &str, patterns: &[&str]) -> anyhow::Result<()> {
    let path = data_dir.join("tokens.json");
    let mut file: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let tokens = file["tokens"].as_array_mut().ok_or_else(|| anyhow::anyhow!("a token list"))?;
    for record in tokens.iter_mut().filter(|t| t["name"] == token) {
        record["subdomains"] = serde_json::json!(patterns);
    }
    Ok(std::fs::write(&path, serde_json::to_vec(&file)?)?)
}

/// A token limited to `app-*,docs` gets only such names: asked for, drawn at random, or
/// reserved before the limit was set.
#[tokio::test]
async fn a_token_limited_to_subdomains_cannot_take_others() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start_with(testkit::http::http_relay_config(dir.path())).await?;
    let store = relay::tokens::TokenStore::open(dir.path());
    let local = testkit::http::loopback();
    let plan = |name: &str, subdomain: Option<&str>, token: &Secret| {
        let mut plan = relay.plan(vec![testkit::http::http_tunnel(name, local, subdomain)]);
        plan.token = token.clone();
        plan
    };
    let token = store.add("limited", Default::default())?;
    let (before, _) = TestAgent::start(plan("web", Some("blog"), &token)).await?;
    before.stop().await?;
    restrict_subdomains(dir.path(), "limited", &["app-*", "docs"])?;

    let err = TestAgent::spawn(plan("other", Some("other"), &token)).finished().await?.unwrap_err();
    let expected = Refusal::SubdomainNotAllowed { name: "other".into(), allowed: "app-*,docs".into() };
    assert_eq!(refusal(&err), Some(&expected), "{err:#}");

    let (docs, granted) = TestAgent::start(plan("docs", Some("docs"), &token)).await?;
    assert_eq!(testkit::http::subdomain_in(&granted[0].url())?, "docs");
    // "web" had "blog" reserved; the limit now keeps it from there, so it draws an `app-` name.
    let (web, granted) = TestAgent::start(plan("web", None, &token)).await?;
    let drawn = testkit::http::subdomain_in(&granted[0].url())?;
    assert!(drawn.starts_with("app-") && drawn.len() > 4, "{drawn}");

    let exact_only = store.add("exact", Default::default())?;
    restrict_subdomains(dir.path(), "exact", &["docs"])?;
    let err = TestAgent::spawn(plan("random", None, &exact_only)).finished().await?.unwrap_err();
    assert!(format!("{err:#}").contains("may use only the subdomains docs"), "{err:#}");
    let closed = store.add("closed", Default::default())?;
    restrict_subdomains(dir.path(), "closed", &[])?;
    let err = TestAgent::spawn(plan("docs", Some("docs"), &closed)).finished().await?.unwrap_err();
    assert!(format!("{err:#}").contains("may open no HTTP or TLS tunnels"), "{err:#}");
    docs.stop().await?;
    web.stop().await?;
    relay.stop().await
}
