//! The relay's admin API: `/api/*` and `/metrics` report exactly the traffic a test made,
//! name tokens without ever showing one, `/readyz` follows the relay's shutdown, and the admin
//! token guards everything when the endpoint listens beyond loopback.
//! Run with `cargo test -p burrow-relay --test admin_api`.

use std::net::SocketAddr;

use burrow_common::{Secret, tls::sha256};
use serde_json::{Value, json};
use testkit::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Everything the admin endpoint serves, to search for secrets.
const PAGES: [&str; 10] = [
    "/",
    "/dashboard.js",
    "/dashboard.css",
    "/api/agents",
    "/api/tunnels",
    "/api/connections",
    "/api/tokens",
    "/metrics",
    "/healthz",
    "/readyz",
];

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs()
}

/// Sends `size` bytes through `public` in `visitors` connections and checks the echo.
async fn visit(public: SocketAddr, visitors: usize, size: usize) -> anyhow::Result<()> {
    for _ in 0..visitors {
        let data = random_bytes(size);
        assert_eq!(exchange(public, &data).await?, data);
    }
    Ok(())
}

fn named<'a>(tunnels: &'a [agent::PublicTunnel], name: &str) -> &'a agent::PublicTunnel {
    tunnels.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no tunnel {name} in {tunnels:?}"))
}

/// The tunnel named `name` of token `token` in `/api/tunnels`.
fn tunnel_of<'a>(tunnels: &'a Value, token: &str, name: &str) -> &'a Value {
    let list = tunnels.as_array().expect("an array");
    list.iter()
        .find(|t| t["token"] == token && t["name"] == name)
        .unwrap_or_else(|| panic!("{token}/{name}: {tunnels}"))
}

#[tokio::test]
async fn api_and_metrics_report_exactly_the_traffic_made_and_never_a_token() -> anyhow::Result<()> {
    let started = now();
    let dir = tempfile::tempdir()?;
    let alice_ports = ["21000-21999".parse().map_err(anyhow::Error::msg)?];
    let alice_limits = relay::tokens::Limits { ports: Some(&alice_ports), ..Default::default() };
    let alice = relay::tokens::TokenStore::open(dir.path()).add("alice", alice_limits)?;
    let relay = TestRelay::start(dir.path()).await?;
    let admin = relay.admin.expect("enabled");
    let plan = relay.plan(vec![tunnel("web", echo_server().await?), tunnel("files", echo_server().await?)]);
    let (ours, tunnels) = TestAgent::start(plan).await?;
    let (web, files) = (public_addr(named(&tunnels, "web")), public_addr(named(&tunnels, "files")));
    let mut plan = relay.plan(vec![tunnel("web", echo_server().await?)]);
    plan.token = alice.clone();
    let (theirs, alice_tunnels) = TestAgent::start(plan.clone()).await?;

    visit(web, 3, 1000).await?;
    visit(files, 2, 5000).await?;
    visit(public_addr(&alice_tunnels[0]), 1, 7).await?;
    let mut held = TcpStream::connect(files).await?;
    held.write_all(b"0123456789").await?;
    held.read_exact(&mut [0u8; 10]).await?;
    let page = settled(&relay, "burrow_visitors", 1.0).await?;

    let open = api(&relay, "connections").await?;
    let peer = held.local_addr()?.to_string();
    assert_eq!(open.as_array().map(Vec::len), Some(1), "{open}");
    assert_eq!(
        (&open[0]["peer"], &open[0]["token"], &open[0]["tunnel"], &open[0]["port"]),
        (&json!(peer), &json!("configured"), &json!("files"), &json!(files.port()))
    );
    assert_eq!((&open[0]["bytes_visitor_to_local"], &open[0]["bytes_local_to_visitor"]), (&json!(10), &json!(10)));
    assert!((started..=now()).contains(&open[0]["opened_at"].as_u64().expect("unix seconds")));

    let listed = api(&relay, "tunnels").await?;
    let names: Vec<_> = listed.as_array().expect("an array").iter().map(|t| (&t["token"], &t["name"])).collect();
    assert_eq!(
        names,
        [
            (&json!("alice"), &json!("web")),
            (&json!("configured"), &json!("files")),
            (&json!("configured"), &json!("web"))
        ]
    );
    // The held visitor is open and counted, its bytes too: they count as they move.
    assert_tunnels(
        &listed,
        &page,
        [
            ("configured", "web", web.port(), 0, 3, 3000),
            ("configured", "files", files.port(), 1, 3, 10_010),
            ("alice", "web", alice_tunnels[0].port, 0, 1, 7),
        ],
    );
    assert_eq!(sample(&page, "burrow_stream_open_seconds_count"), Some(7.0), "every visitor's stream opened");
    assert_eq!(sample(&page, "burrow_reconnects_total"), Some(0.0));

    let expected = [("configured", json!(["web", "files"])), ("alice", json!(["web"]))];
    assert_agents(&api(&relay, "agents").await?, &page, started, expected);

    let tokens = api(&relay, "tokens").await?;
    assert_eq!(tokens[0]["name"], "configured");
    assert_eq!(
        (&tokens[1]["name"], &tokens[1]["ports"], &tokens[1]["limited"]),
        (&json!("alice"), &json!("21000-21999"), &json!(true))
    );
    assert!((started..=now()).contains(&tokens[1]["created"].as_u64().expect("unix seconds")));
    let secrets = [relay.token.expose().into(), alice.expose().into(), hex(&sha256(alice.expose().as_bytes()))];
    assert_no_page_shows(admin, &secrets).await?;

    drop(held);
    settled(&relay, "burrow_visitors", 0.0).await?;
    assert_eq!(api(&relay, "connections").await?, json!([]));
    let closed = tunnel_of(&api(&relay, "tunnels").await?, "configured", "files").clone();
    assert_eq!(
        (&closed["bytes_visitor_to_local"], &closed["bytes_local_to_visitor"]),
        (&json!(10_010), &json!(10_010))
    );

    // Alice's agent leaves and comes back: one reconnect, her tunnel's counts carry on, and
    // the path series of her first session are gone.
    theirs.stop().await?;
    // The agent is gone once its run ends; the relay, once it has read the close.
    settled(&relay, "burrow_tunnels", 2.0).await?;
    let listed = api(&relay, "tunnels").await?;
    assert!(listed.as_array().expect("an array").iter().all(|t| t["token"] != "alice"), "{listed}");
    let (theirs, _) = TestAgent::start(plan).await?;
    let page = settled(&relay, "burrow_reconnects_total", 1.0).await?;
    assert_eq!(page.lines().filter(|l| l.starts_with("burrow_session_rtt_seconds{token=\"alice\"")).count(), 1);
    let again = tunnel_of(&api(&relay, "tunnels").await?, "alice", "web").clone();
    assert_eq!((&again["visitors_total"], &again["bytes_visitor_to_local"]), (&json!(1), &json!(7)));

    theirs.stop().await?;
    ours.stop().await?;
    relay.stop().await
}

/// Bytes a long-ish transfer sends each way.
const MIB: u64 = 1 << 20;

/// `/api/tunnels` and `/metrics` show `bytes` each way for the one tunnel, on `port`, with
/// `open` visitors of the one it carried.
async fn assert_bytes_everywhere(relay: &TestRelay, port: u16, open: u64, bytes: u64) -> anyhow::Result<()> {
    let page = metrics(relay).await?;
    assert_eq!(sample(&page, "burrow_visitors"), Some(open as f64), "{page}");
    assert_eq!(sample(&page, "burrow_bytes_total{direction=\"visitor_to_local\"}"), Some(bytes as f64));
    assert_eq!(sample(&page, "burrow_bytes_total{direction=\"local_to_visitor\"}"), Some(bytes as f64));
    assert_tunnels(&api(relay, "tunnels").await?, &page, [("configured", "web", port, open, 1, bytes)]);
    Ok(())
}

#[tokio::test]
async fn a_transfer_counts_in_the_api_and_metrics_while_its_visitor_is_open_and_once_after() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let (agent, tunnels) = TestAgent::start(relay.plan(vec![tunnel("web", echo_server().await?)])).await?;
    let port = tunnels[0].port;
    let mut visitor = TcpStream::connect(public_addr(&tunnels[0])).await?;
    let sent = random_bytes(usize::try_from(MIB)?);
    assert!(round_trip(&mut visitor, &sent).await? == sent, "the echo differs");

    // The relay counts each chunk before writing it on, so with the echo back the counts are
    // whole, though the visitor is still open.
    assert_bytes_everywhere(&relay, port, 1, MIB).await?;
    let open = api(&relay, "connections").await?;
    assert_eq!((&open[0]["bytes_visitor_to_local"], &open[0]["bytes_local_to_visitor"]), (&json!(MIB), &json!(MIB)));
    assert!(round_trip(&mut visitor, &sent[..1000]).await? == sent[..1000], "the echo differs");
    assert_bytes_everywhere(&relay, port, 1, MIB + 1000).await?;

    visitor.shutdown().await?;
    let mut rest = Vec::new();
    tokio::time::timeout(STEP, visitor.read_to_end(&mut rest)).await??;
    assert!(rest.is_empty(), "nothing more came back");
    settled(&relay, "burrow_visitors", 0.0).await?;
    assert_bytes_everywhere(&relay, port, 0, MIB + 1000).await?;
    agent.stop().await?;
    relay.stop().await
}

/// Each `(token, name, port, open, total, bytes)` in `/api/tunnels` and in `page`; the echo
/// makes bytes equal each way.
fn assert_tunnels<const N: usize>(listed: &Value, page: &str, expected: [(&str, &str, u16, u64, u64, u64); N]) {
    for (token, name, port, open, total, bytes) in expected {
        let t = tunnel_of(listed, token, name);
        assert_eq!((&t["port"], &t["state"]), (&json!(port), &json!("serving")), "{t}");
        assert_eq!((&t["open_visitors"], &t["visitors_total"]), (&json!(open), &json!(total)), "{t}");
        assert_eq!((&t["bytes_visitor_to_local"], &t["bytes_local_to_visitor"]), (&json!(bytes), &json!(bytes)));
        let series = format!("burrow_tunnel_bytes_total{{token=\"{token}\",tunnel=\"{name}\",direction=");
        assert_eq!(sample(page, &format!("{series}\"visitor_to_local\"}}")), Some(bytes as f64), "{page}");
        assert_eq!(sample(page, &format!("{series}\"local_to_visitor\"}}")), Some(bytes as f64));
    }
}

/// `/api/agents` lists sessions of these tokens with these tunnels, in this order, each with
/// a measured path that `page` shows too.
fn assert_agents<const N: usize>(agents: &Value, page: &str, started: u64, expected: [(&str, Value); N]) {
    let agents = agents.as_array().expect("an array");
    assert_eq!(agents.len(), N);
    for (agent, (token, tunnels)) in agents.iter().zip(expected) {
        assert_eq!(agent["token"], token);
        let names: Vec<_> = agent["tunnels"].as_array().expect("tunnels").iter().map(|t| t["name"].clone()).collect();
        assert_eq!(Value::from(names), tunnels);
        assert!(agent["remote"].as_str().expect("an address").starts_with("127.0.0.1:"));
        assert!((started..=now()).contains(&agent["connected_since"].as_u64().expect("unix seconds")));
        assert!(agent["rtt_ms"].as_f64().expect("ms") > 0.0 && agent["cwnd"].as_u64().expect("bytes") > 0);
        assert!(agent["sent_packets"].as_u64() >= agent["lost_packets"].as_u64());
        let session = &agent["session"];
        let rtt = format!("burrow_session_rtt_seconds{{token=\"{token}\",session=\"{session}\"}}");
        assert!(sample(page, &rtt).is_some_and(|s| s > 0.0), "{rtt} in {page}");
    }
}

async fn assert_no_page_shows(admin: SocketAddr, secrets: &[String]) -> anyhow::Result<()> {
    for path in PAGES {
        let (_, body) = get(admin, path, None).await?;
        for secret in secrets {
            assert!(!body.contains(secret.as_str()), "{path} shows a token or its hash");
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn readyz_turns_503_when_the_relay_starts_draining_while_healthz_stays_200() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = relay_config(dir.path());
    // Long enough that the held visitor, not the clock, decides when the drain ends.
    config.grace_period = STEP;
    let relay = TestRelay::start_with(config).await?;
    let admin = relay.admin.expect("enabled");
    let (agent, tunnels) = TestAgent::start(relay.plan(vec![tunnel("web", echo_server().await?)])).await?;
    let mut held = TcpStream::connect(public_addr(&tunnels[0])).await?;
    held.write_all(b"x").await?;
    held.read_exact(&mut [0u8; 1]).await?;
    assert_eq!(get(admin, "/readyz", None).await?, (200, "ready\n".into()));

    relay.cancel.cancel();
    assert_eq!(get(admin, "/readyz", None).await?, (503, "shutting down\n".into()));
    assert_eq!(get(admin, "/healthz", None).await?, (200, "ok\n".into()));
    assert_eq!(api(&relay, "connections").await?.as_array().map(Vec::len), Some(1), "the visitor still drains");

    drop(held);
    relay.stop().await?;
    assert!(get(admin, "/healthz", None).await.is_err(), "the admin endpoint stops with the relay");
    agent.stop().await
}

/// `anyone:admin-token-0123456789`, base64 as HTTP Basic sends it.
const BASIC_ANY_USER: &str = "Basic YW55b25lOmFkbWluLXRva2VuLTAxMjM0NTY3ODk=";
/// `:admin-token-0123456789`
const BASIC_NO_USER: &str = "Basic OmFkbWluLXRva2VuLTAxMjM0NTY3ODk=";
/// `admin-token-0123456789:`: the token as the user name is no password.
const BASIC_TOKEN_AS_USER: &str = "Basic YWRtaW4tdG9rZW4tMDEyMzQ1Njc4OTo=";
/// `anyone:wrong`
const BASIC_WRONG_PASSWORD: &str = "Basic YW55b25lOndyb25n";

#[tokio::test]
async fn beyond_loopback_the_admin_token_is_required_as_bearer_or_basic_password() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = relay_config(dir.path());
    config.admin_listen = Some("0.0.0.0:0".parse()?);
    let err = relay::Relay::bind(config.clone()).err().expect("an open admin endpoint beyond loopback is refused");
    assert!(format!("{err:#}").contains("admin_token"), "{err:#}");

    let token = "admin-token-0123456789";
    config.admin_token = Some(Secret::new(token));
    let relay = TestRelay::start_with(config).await?;
    let admin = SocketAddr::from(([127, 0, 0, 1], relay.admin.expect("enabled").port()));
    let bearer = format!("Bearer {token}");
    for path in PAGES {
        let (status, head, _) = get_authorized(admin, path, None).await?;
        assert_eq!(status, 401, "{path} without a token");
        assert!(head.to_ascii_lowercase().contains("www-authenticate: basic"), "{head}");
        for refused in ["Bearer admin-token-wrong-0000", BASIC_TOKEN_AS_USER, BASIC_WRONG_PASSWORD] {
            assert_eq!(get_authorized(admin, path, Some(refused)).await?.0, 401, "{path} with {refused}");
        }
        for accepted in [bearer.as_str(), BASIC_ANY_USER, BASIC_NO_USER] {
            let (status, _, body) = get_authorized(admin, path, Some(accepted)).await?;
            assert_eq!(status, 200, "{path} with {accepted}");
            assert!(!body.contains(token) && !body.contains(relay.token.expose()), "{path} shows a token");
        }
    }
    relay.stop().await
}

/// Status of a raw `GET path` on the admin endpoint whose Host header says `host`.
async fn status_for_host(admin: SocketAddr, path: &str, host: &str) -> anyhow::Result<u16> {
    let mut tcp = TcpStream::connect(admin).await?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(STEP, tcp.read_to_string(&mut response)).await??;
    Ok(response.split_whitespace().nth(1).unwrap_or_default().parse()?)
}

/// A page elsewhere that makes its own name resolve to the admin endpoint (DNS rebinding, or a
/// browser behind an `ssh -L` forward) is refused before any token is asked for; requests
/// naming the relay by IP, as localhost or by one of its hostnames are served.
#[tokio::test]
async fn a_request_naming_another_host_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = relay::RelayConfig { hostname: vec!["relay.example.com".into()], ..relay_config(dir.path()) };
    let relay = TestRelay::start_with(config).await?;
    let admin = relay.admin.expect("tests enable the admin endpoint");
    let port = admin.port();
    for path in ["/api/tokens", "/metrics", "/"] {
        assert_eq!(status_for_host(admin, path, "rebind.example").await?, 403, "{path}");
        assert_eq!(status_for_host(admin, path, &format!("rebind.example:{port}")).await?, 403, "{path}");
        assert_eq!(status_for_host(admin, path, &format!("192.0.2.10:{port}")).await?, 403, "{path}: not loopback");
        for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("relay.example.com:{port}")] {
            assert_eq!(status_for_host(admin, path, &host).await?, 200, "{path} for {host}");
        }
    }
    relay.stop().await
}
