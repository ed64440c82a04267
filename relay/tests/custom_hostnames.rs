//! Custom hostnames end to end: a token allowed `app.example.org` serves it on the relay's
//! shared HTTP and HTTPS ports and by TLS passthrough, exactly as a subdomain is served; a
//! token not allowed it, or a second token while the first holds or keeps it, is refused
//! with the reason. Relay, agents and local servers run in one process.
//! Run with `cargo test -p burrow-relay --test custom_hostnames`.

use std::path::Path;

use agent::{Plan, TunnelPlan};
use burrow_common::{Refusal, Secret, tls::sha256};
use relay::tokens::{HostPattern, Limits, TokenStore, parse_list};
use testkit::{TestAgent, http::*, http_apps::*, refusal, settled, snapshot_when};

const HOST: &str = "app.example.org";

/// Adds a token allowed the hostname `patterns`, as `relay token add NAME --hostnames` does.
fn token_allowed(data_dir: &Path, name: &str, patterns: &str) -> anyhow::Result<Secret> {
    let hostnames = parse_list::<HostPattern>(patterns)?;
    TokenStore::open(data_dir).add(name, Limits { hostnames: &hostnames, ..Limits::default() })
}

fn plan(relay: &HttpRelay, token: &Secret, tunnels: Vec<TunnelPlan>) -> Plan {
    Plan { token: token.clone(), ..relay.plan(tunnels) }
}

#[tokio::test]
async fn a_hostname_the_token_allows_is_served_over_http_and_https_byte_for_byte() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let token = token_allowed(dir.path(), "custom", HOST)?;
    let app = LocalApp::start("web").await?;
    let tunnel = at_hostname(http_tunnel("web", app.addr, None), HOST);
    let planned = plan(&relay, &token, vec![tunnel]);
    let stats = planned.stats.clone();
    let (agent, granted) = TestAgent::start(planned).await?;

    let (http, https) = (relay.http.port(), relay.https.port());
    assert_eq!(granted[0].urls, [format!("https://{HOST}:{https}"), format!("http://{HOST}:{http}")]);
    // What the agent's banner prints, and what its console and inspector show.
    assert_eq!(granted[0].to_string(), format!("https://{HOST}:{https} -> {}", app.addr));
    let shown = snapshot_when(&stats, |now| !now.tunnels.is_empty()).await?;
    assert_eq!(shown.tunnels[0].url, format!("https://{HOST}:{https}"));
    let client = relay.pinned_client(HOST)?;
    for url in &granted[0].urls {
        let body = testkit::random_bytes(300 * 1024);
        let uploaded = answer(client.post(format!("{url}/upload")).body(body.clone()).send().await?).await?;
        assert_eq!(uploaded.status, 200, "{url}: {}", uploaded.body);
        let uploaded = uploaded.json()?;
        assert_eq!(uploaded["bytes"], body.len(), "{url}");
        assert_eq!(uploaded["sha256"], hex(&sha256(&body)), "{url}: the local server got the same bytes");

        let size = 200 * 1024;
        let downloaded = client.get(format!("{url}/download?bytes={size}")).send().await?;
        assert_eq!(downloaded.status(), 200, "{url}");
        let expected: Vec<u8> = pattern(size).flat_map(|chunk| chunk.to_vec()).collect();
        assert!(downloaded.bytes().await? == expected, "{url}: the visitor got other bytes");
    }
    // A raw request naming the host in any case, with a port, reaches the app with its Host as sent.
    let sent_host = format!("App.Example.ORG:{http}");
    let echoed = visit(relay.http, &sent_host, "/which", &[]).await?;
    assert_eq!(echoed.status, 200, "{}", echoed.body);
    assert_eq!(
        (echoed.json()?["app"].as_str(), echoed.json()?["headers"]["host"][0].as_str()),
        (Some("web"), Some(sent_host.as_str()))
    );

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn a_hostname_gets_the_redirect_and_access_rules_of_a_subdomain() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = relay::RelayConfig { http_redirect_https: true, ..http_relay_config(dir.path()) };
    let relay = HttpRelay::start_with(config).await?;
    let token = token_allowed(dir.path(), "custom", HOST)?;
    let app = LocalApp::start("web").await?;
    let mut tunnel = at_hostname(http_tunnel("web", app.addr, None), HOST);
    tunnel.access.basic_auth = Some(Secret::new("alice:correct-horse-battery"));
    let (agent, _) = TestAgent::start(plan(&relay, &token, vec![tunnel])).await?;

    let redirect = visit(relay.http, HOST, "/page?q=1", &[]).await?;
    assert_eq!(redirect.status, 308);
    assert_eq!(redirect.header("location"), format!("https://{HOST}:{}/page?q=1", relay.https.port()));
    let client = relay.pinned_client(HOST)?;
    let url = format!("https://{HOST}:{}/", relay.https.port());
    assert_eq!(client.get(&url).send().await?.status(), 401);
    let allowed = client.get(&url).basic_auth("alice", Some("correct-horse-battery")).send().await?;
    assert_eq!(answer(allowed).await?.json()?["app"], "web");
    assert_eq!(app.connections(), 1, "only the authorised request reached the app");

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn a_hostname_the_token_does_not_allow_is_refused_naming_both() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let token = token_allowed(dir.path(), "previews", "*.dev.example.org")?;
    let app = LocalApp::start("web").await?;
    let asking = |host: &str| at_hostname(http_tunnel("web", app.addr, None), host);

    let err = TestAgent::spawn(plan(&relay, &token, vec![asking(HOST)])).finished().await?.unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "the relay refused: the hostname \"app.example.org\" is outside the hostnames token \"previews\" allows (*.dev.example.org)"
    );
    // The relay's own token lists no hostname: none is allowed unless listed.
    let err = TestAgent::spawn(relay.plan(vec![asking(HOST)])).finished().await?.unwrap_err();
    let expected =
        Refusal::HostnameNotAllowed { name: HOST.into(), token: "configured".into(), allowed: "none".into() };
    assert_eq!(refusal(&err), Some(&expected), "{err:#}");
    let unserved = visit(relay.http, HOST, "/", &[]).await?;
    assert_eq!((unserved.status.as_u16(), app.connections()), (404, 0), "{}", unserved.body);

    // One label under the wildcard is allowed; two are not.
    let (agent, granted) = TestAgent::start(plan(&relay, &token, vec![asking("Pr-7.dev.example.org")])).await?;
    assert_eq!(granted[0].urls[0], format!("https://pr-7.dev.example.org:{}", relay.https.port()));
    let err = TestAgent::spawn(plan(&relay, &token, vec![asking("a.pr-7.dev.example.org")])).finished().await?;
    assert!(matches!(refusal(&err.unwrap_err()), Some(Refusal::HostnameNotAllowed { .. })));
    // A hostname under the relay's domain is that subdomain, which needs no hostname pattern.
    let (subdomain, granted) =
        TestAgent::start(relay.plan(vec![at_hostname(http_tunnel("sub", app.addr, None), &host("myapp"))])).await?;
    assert_eq!(subdomain_in(&granted[0].url())?, "myapp");
    let err = TestAgent::spawn(relay.plan(vec![asking("burrow.test")])).finished().await?.unwrap_err();
    assert!(format!("{err:#}").contains("\"burrow.test\" is this relay's own name"), "{err:#}");

    subdomain.stop().await?;
    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn a_hostname_held_by_another_token_is_refused_and_kept_for_its_holder() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let (holder_token, rival_token) =
        (token_allowed(dir.path(), "holder", HOST)?, token_allowed(dir.path(), "rival", "*.example.org")?);
    let (mine, theirs) = (LocalApp::start("mine").await?, LocalApp::start("theirs").await?);
    let holding = plan(&relay, &holder_token, vec![at_hostname(http_tunnel("web", mine.addr, None), HOST)]);
    let (holder, _) = TestAgent::start(holding.clone()).await?;

    let rival = plan(&relay, &rival_token, vec![at_hostname(http_tunnel("web", theirs.addr, None), "APP.example.org")]);
    let err = TestAgent::spawn(rival.clone()).finished().await?.unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "the relay refused: the hostname \"app.example.org\" is held by another agent on this relay; choose another name"
    );
    assert_eq!(visit(relay.http, HOST, "/", &[]).await?.json()?["app"], "mine");

    // Stopping the holder does not free the name for the rival: it stays reserved, and the
    // holder gets it back.
    holder.stop().await?;
    settled(&relay, "burrow_sessions", 0.0).await?;
    let err = TestAgent::spawn(rival).finished().await?.unwrap_err();
    assert_eq!(refusal(&err), Some(&Refusal::HostnameTaken { name: HOST.into() }), "{err:#}");
    let (holder, granted) = TestAgent::start(holding).await?;
    assert_eq!(granted[0].urls[0], format!("https://{HOST}:{}", relay.https.port()));
    assert_eq!(visit(relay.http, HOST, "/", &[]).await?.json()?["app"], "mine");

    holder.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn a_tls_tunnel_at_a_hostname_passes_the_handshake_through() -> anyhow::Result<()> {
    const SECURE: &str = "secure.example.org";
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let token = token_allowed(dir.path(), "custom", SECURE)?;
    let local = tls_echo_server(SECURE).await?;
    let tunnel = at_hostname(tls_tunnel("secure", local.addr, "unused"), SECURE);
    let (agent, granted) = TestAgent::start(plan(&relay, &token, vec![tunnel])).await?;
    assert_eq!(granted[0].urls, [format!("https://{SECURE}:{}", relay.https.port())]);

    let message = testkit::random_bytes(64 * 1024);
    let echoed = tls_round_trip(relay.https, SECURE, local.cert.clone(), message.clone()).await?;
    assert!(echoed == message, "the echo differs");

    agent.stop().await?;
    relay.stop().await
}
