//! What HTTP tunnels refuse, and how they say it: error pages with their status (plain text
//! for scripts, HTML for browsers), access rules, a stalled visitor cut off, subdomains that
//! cannot be had, names kept across restarts, and the per-tunnel connection cap.
//! Run with `cargo test -p burrow-relay --test http_limits`.

use std::time::{Duration, Instant};

use base64::Engine;
use burrow_common::Refusal;
use testkit::{TestAgent, TestRelay, closed_port, http::*, http_apps::*, metrics, refusal, sample, settled};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");

#[tokio::test]
async fn an_unknown_host_gets_404_naming_it_as_text_or_html() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;

    let text = visit(relay.http, "Nobody.burrow.test:80", "/", &[]).await?;
    assert_eq!(text.status, 404);
    assert!(text.header("content-type").starts_with("text/plain"), "{text:?}");
    assert_eq!(text.body, "404 Tunnel not found: No tunnel is registered for nobody.burrow.test.\n");

    let html = visit(relay.http, "nobody.burrow.test", "/", &[HTML]).await?;
    assert_eq!(html.status, 404);
    assert!(html.header("content-type").starts_with("text/html"), "{html:?}");
    assert!(html.body.starts_with("<!doctype html>"), "{}", html.body);
    assert!(html.body.contains("No tunnel is registered for nobody.burrow.test."), "{}", html.body);

    // The same over HTTPS, and for a host outside the domain.
    let https = answer(relay.client()?.get(relay.https_url("nobody", "/")).send().await?).await?;
    assert_eq!(https.status, 404);
    assert!(https.body.contains("nobody.burrow.test"), "{}", https.body);
    let elsewhere = visit(relay.http, "example.com", "/", &[]).await?;
    assert_eq!(elsewhere.status, 404);
    assert!(elsewhere.body.contains("example.com"), "{}", elsewhere.body);
    relay.stop().await
}

/// A lost session's name is parked: a request that arrives meanwhile waits and is answered by
/// the agent that comes back; past `max_parked_visitors` waiting, one is told at once.
#[tokio::test]
async fn requests_for_a_lost_session_wait_for_its_agent_within_the_parking_cap() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = relay::RelayConfig {
        idle_timeout: Duration::from_secs(1),
        max_parked_visitors: 1,
        ..http_relay_config(dir.path())
    };
    let relay = HttpRelay::start_with(config).await?;
    let app = LocalApp::start("web").await?;
    let proxy = testkit::UdpProxy::start(relay.addr).await?;
    let mut plan = relay.plan(vec![http_tunnel("web", app.addr, Some("myapp"))]);
    plan.relay.port = proxy.addr.port();
    plan.keep_alive = Duration::from_millis(200);
    let (agent, _) = TestAgent::start(plan).await?;
    proxy.cut();
    agent.kill().await;
    settled(&relay, "burrow_sessions", 0.0).await?;

    let (http, name) = (relay.http, host("myapp"));
    let ask = || {
        let name = name.clone();
        tokio::spawn(async move { visit(http, &name, "/", &[]).await })
    };
    let (mut first, mut second) = (ask(), ask());
    // One of the two waits; the other finds the one place taken and is answered at once.
    let told = tokio::select! {
        told = &mut first => told,
        told = &mut second => told,
    };
    let told = told??;
    let waiting = if first.is_finished() { second } else { first };
    assert_eq!(told.status, 502, "{}", told.body);
    assert!(told.body.contains("Tunnel offline"), "{}", told.body);
    assert!(!waiting.is_finished(), "the other request waits for the agent");

    let (back, _) = TestAgent::start(relay.plan(vec![http_tunnel("web", app.addr, Some("myapp"))])).await?;
    let served = tokio::time::timeout(testkit::STEP, waiting).await???;
    assert_eq!(served.status, 200, "{}", served.body);
    back.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn a_stopped_agent_leaves_its_name_reserved_and_offline_with_502() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let app = LocalApp::start("web").await?;
    let (agent, _) = TestAgent::start(relay.plan(vec![http_tunnel("web", app.addr, Some("myapp"))])).await?;
    assert_eq!(visit(relay.http, &host("myapp"), "/", &[]).await?.status, 200);

    agent.stop().await?;
    settled(&relay, "burrow_sessions", 0.0).await?;
    let text = visit(relay.http, &host("myapp"), "/", &[]).await?;
    assert_eq!(text.status, 502);
    assert_eq!(text.body, "502 Tunnel offline: The agent serving myapp.burrow.test is not connected right now.\n");
    let html = visit(relay.http, &host("myapp"), "/", &[HTML]).await?;
    assert_eq!(html.status, 502);
    assert!(html.body.contains("<h1>Tunnel offline</h1>"), "{}", html.body);
    relay.stop().await
}

/// Where the local server is (a host and port on the agent's network) is the agent's
/// business: the public page does not say; the inspector and console do.
#[tokio::test]
async fn a_local_server_that_refuses_gets_502_without_its_address_which_the_inspector_shows() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let closed = closed_port().await?;
    let plan = relay.plan(vec![http_tunnel("web", closed, Some("myapp"))]);
    let inspector = testkit::start_inspector(&plan.stats).await?;
    let (agent, _) = TestAgent::start(plan).await?;

    let text = visit(relay.http, &host("myapp"), "/", &[]).await?;
    assert_eq!(text.status, 502);
    assert!(text.header("content-type").starts_with("text/plain"), "{text:?}");
    assert_eq!(text.body, "502 Local server unavailable: The local server is unavailable.\n");
    let html = visit(relay.http, &host("myapp"), "/", &[HTML]).await?;
    assert_eq!(html.status, 502);
    assert!(html.body.starts_with("<!doctype html>"), "{}", html.body);
    assert!(!html.body.contains(&closed.to_string()), "{}", html.body);

    let refused = format!("the local server at {closed} refused the connection");
    let event = testkit::event_where(inspector, "/api/events", |data| data.contains(&refused)).await?;
    assert!(event.contains("\"status\":502"), "{event}");

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn a_local_server_slower_than_the_response_timeout_gets_504() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = relay::RelayConfig { http_response_timeout: Duration::from_secs(1), ..http_relay_config(dir.path()) };
    let relay = HttpRelay::start_with(config).await?;
    let app = LocalApp::start("web").await?;
    let (agent, _) = TestAgent::start(relay.plan(vec![http_tunnel("web", app.addr, Some("myapp"))])).await?;

    let started = Instant::now();
    let slow = visit(relay.http, &host("myapp"), "/slow", &[]).await?;
    let waited = started.elapsed();
    assert_eq!(slow.status, 504);
    assert_eq!(slow.body, "504 Local server too slow: The local server did not answer within 1s.\n");
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(5), "504 after {waited:?}");
    // The tunnel still serves the next request.
    assert_eq!(visit(relay.http, &host("myapp"), "/", &[]).await?.status, 200);

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn a_sub_second_response_timeout_is_named_as_configured() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let timeout = Duration::from_millis(300);
    let config = relay::RelayConfig { http_response_timeout: timeout, ..http_relay_config(dir.path()) };
    let relay = HttpRelay::start_with(config).await?;
    let app = LocalApp::start("web").await?;
    let (agent, _) = TestAgent::start(relay.plan(vec![http_tunnel("web", app.addr, Some("myapp"))])).await?;

    let slow = visit(relay.http, &host("myapp"), "/slow", &[]).await?;
    assert_eq!(slow.status, 504);
    assert!(!slow.body.contains("within 0s"), "the page names a limit of 0s for {timeout:?}: {}", slow.body);

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn basic_auth_admits_only_the_right_credentials_and_keeps_them_from_the_local_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let app = LocalApp::start("web").await?;
    let mut tunnel = http_tunnel("web", app.addr, Some("private"));
    tunnel.access.basic_auth = Some(burrow_common::Secret::new("alice:correct-horse"));
    let (agent, _) = TestAgent::start(relay.plan(vec![tunnel])).await?;
    let client = relay.client()?;
    let url = relay.https_url("private", "/");

    let without = answer(client.get(&url).send().await?).await?;
    assert_eq!(without.status, 401);
    assert_eq!(without.header("www-authenticate"), "Basic realm=\"private.burrow.test\", charset=\"UTF-8\"");
    let wrong = answer(client.get(&url).basic_auth("alice", Some("guess")).send().await?).await?;
    assert_eq!(wrong.status, 401);
    assert_eq!(app.connections(), 0, "refused requests never reach the local server");

    let right = answer(client.get(&url).basic_auth("alice", Some("correct-horse")).send().await?).await?;
    assert_eq!(right.status, 200, "{}", right.body);
    let headers = &right.json()?["headers"];
    assert!(headers.get("authorization").is_none(), "the local server got the credentials: {headers}");

    // Guessing is slowed as token guessing is: past half a burst of 10 wrong answers from one
    // address, one a second. 13 more guesses (14 in all) take at least 3 s.
    let guessing = Instant::now();
    for attempt in 0..13 {
        let wrong = client.get(&url).basic_auth("alice", Some(format!("guess{attempt}"))).send().await?;
        assert_eq!(wrong.status(), 401);
    }
    let took = guessing.elapsed();
    assert!(took >= Duration::from_millis(2500), "14 wrong guesses took only {took:?}");
    let right = answer(client.get(&url).basic_auth("alice", Some("correct-horse")).send().await?).await?;
    assert_eq!(right.status, 200, "a guesser that waits for its answers never drains the quota");

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn address_rules_turn_away_denied_visitors_with_403() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let app = LocalApp::start("web").await?;
    let mut denied = http_tunnel("denied", app.addr, Some("denied"));
    denied.access.deny = vec!["127.0.0.0/8".parse()?];
    let mut elsewhere = http_tunnel("elsewhere", app.addr, Some("elsewhere"));
    elsewhere.access.allow = vec!["10.0.0.0/8".parse()?];
    let mut allowed = http_tunnel("allowed", app.addr, Some("allowed"));
    allowed.access.allow = vec!["127.0.0.1/32".parse()?];
    let (agent, _) = TestAgent::start(relay.plan(vec![denied, elsewhere, allowed])).await?;

    for name in ["denied", "elsewhere"] {
        let refused = visit(relay.http, &host(name), "/", &[]).await?;
        assert_eq!(refused.status, 403, "{name}");
        assert_eq!(refused.body, "403 Access denied: Your address 127.0.0.1 is not allowed to reach this tunnel.\n");
    }
    assert_eq!(app.connections(), 0, "denied requests never reach the local server");
    assert_eq!(visit(relay.http, &host("allowed"), "/", &[]).await?.status, 200);

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn a_visitor_stalling_in_its_request_head_is_cut_off_and_others_are_served() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let header_timeout = Duration::from_millis(500);
    let config = relay::RelayConfig { http_header_timeout: header_timeout, ..http_relay_config(dir.path()) };
    let relay = HttpRelay::start_with(config).await?;
    let app = LocalApp::start("web").await?;
    let (agent, _) = TestAgent::start(relay.plan(vec![http_tunnel("web", app.addr, Some("myapp"))])).await?;

    let started = Instant::now();
    let mut stalled = TcpStream::connect(relay.http).await?;
    stalled.write_all(b"GET / HTTP/1.1\r\nHost: myapp.burrow.test\r\nX-Slow: ").await?;
    // A TLS visitor that never sends its ClientHello gets the same treatment.
    let mut silent_tls = TcpStream::connect(relay.https).await?;
    // While they stall, another visitor is served.
    assert_eq!(visit(relay.http, &host("myapp"), "/", &[]).await?.status, 200);

    for (port, tcp) in [("http", &mut stalled), ("https", &mut silent_tls)] {
        let mut rest = Vec::new();
        match tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await {
            Err(_) => anyhow::bail!("the stalled {port} visitor was still connected after 5 s"),
            // A reset is as good as an end.
            Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{port}: {e}"),
            Ok(Ok(_)) => {
                let text = String::from_utf8_lossy(&rest);
                assert!(rest.is_empty() || text.starts_with("HTTP/1.1 408"), "{port}: {text}");
            }
        }
    }
    let cut_after = started.elapsed();
    assert!(cut_after >= header_timeout - Duration::from_millis(50), "cut off after {cut_after:?}");
    assert!(cut_after < Duration::from_secs(5), "cut off only after {cut_after:?}");
    assert_eq!(app.connections(), 1, "the stalled request never reached the local server");
    assert_eq!(visit(relay.http, &host("myapp"), "/", &[]).await?.status, 200);

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn a_request_head_over_the_configured_size_is_refused_with_431() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let limit = relay::RelayConfig::default().http_max_header_bytes;
    let app = LocalApp::start("web").await?;
    let (agent, _) = TestAgent::start(relay.plan(vec![http_tunnel("web", app.addr, Some("myapp"))])).await?;

    let within = "a".repeat(limit - 1024);
    assert_eq!(visit(relay.http, &host("myapp"), "/", &[("x-big", &within)]).await?.status, 200);
    // Half as large again as the limit, sent at once.
    let over = "a".repeat(limit + limit / 2);
    let refused = visit(relay.http, &host("myapp"), "/", &[("x-big", &over)]).await?;
    assert_eq!(refused.status, 431, "a {} KiB head with a {} KiB limit", over.len() / 1024, limit / 1024);

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn a_subdomain_held_by_another_token_is_refused_and_stays_with_its_holder() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let other_token = relay::tokens::TokenStore::open(dir.path()).add("other", Default::default())?;
    let relay = HttpRelay::start(dir.path()).await?;
    let app = LocalApp::start("mine").await?;
    let (holder, _) = TestAgent::start(relay.plan(vec![http_tunnel("web", app.addr, Some("myapp"))])).await?;

    let mut rival = relay.plan(vec![http_tunnel("web", app.addr, Some("MyApp"))]);
    rival.token = other_token.clone();
    let err = TestAgent::spawn(rival.clone()).finished().await?.unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "the relay refused: the subdomain \"myapp\" is held by another agent on this relay; choose another name"
    );
    assert_eq!(visit(relay.http, &host("myapp"), "/", &[]).await?.json()?["app"], "mine");

    // Stopping the holder does not free the name for the other token: it stays reserved.
    holder.stop().await?;
    settled(&relay, "burrow_sessions", 0.0).await?;
    let err = TestAgent::spawn(rival).finished().await?.unwrap_err();
    assert_eq!(refusal(&err), Some(&Refusal::SubdomainTaken { name: "myapp".into() }), "{err:#}");
    relay.stop().await
}

#[tokio::test]
async fn invalid_and_reserved_subdomains_are_refused_with_the_reason() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = http_relay_config(dir.path());
    config.reserved_names.push("billing".into());
    let relay = HttpRelay::start_with(config).await?;
    let app = LocalApp::start("web").await?;

    for (subdomain, reason) in [
        (
            "my_app",
            "\"my_app\" is not a valid subdomain: use 1-63 letters, digits or '-', not starting or ending with '-'",
        ),
        ("-app", "\"-app\" is not a valid subdomain"),
        ("a.b", "\"a.b\" is not a valid subdomain"),
        ("WWW", "\"www\" is reserved on this relay; choose another name"),
        ("billing", "\"billing\" is reserved on this relay"),
    ] {
        let plan = relay.plan(vec![http_tunnel("web", app.addr, Some(subdomain))]);
        let err = TestAgent::spawn(plan).finished().await?.unwrap_err();
        let Some(Refusal::BadTunnel { name, why }) = refusal(&err) else { anyhow::bail!("{subdomain}: {err:#}") };
        assert_eq!(name, "web");
        // The reason is text the user reads.
        assert!(why.contains(reason), "{subdomain}: {why}");
    }
    relay.stop().await
}

#[tokio::test]
async fn a_relay_without_a_domain_refuses_http_and_tls_tunnels() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let app = LocalApp::start("web").await?;

    for tunnel in [http_tunnel("web", app.addr, Some("myapp")), tls_tunnel("secure", app.addr, "secure")] {
        let err = TestAgent::spawn(relay.plan(vec![tunnel])).finished().await?.unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "the relay refused: this relay serves no HTTP or TLS tunnels: it was started without --domain"
        );
    }
    relay.stop().await
}

#[tokio::test]
async fn subdomains_are_kept_across_agent_and_relay_restarts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let other_token = relay::tokens::TokenStore::open(dir.path()).add("other", Default::default())?;
    let app = LocalApp::start("web").await?;
    let tunnels = || vec![http_tunnel("picked", app.addr, None), http_tunnel("named", app.addr, Some("myapp"))];
    let names = |granted: &[agent::PublicTunnel]| -> anyhow::Result<Vec<String>> {
        granted.iter().map(|t| subdomain_in(t.url().as_str())).collect()
    };

    let relay = HttpRelay::start(dir.path()).await?;
    let (agent, granted) = TestAgent::start(relay.plan(tunnels())).await?;
    let first = names(&granted)?;
    let random = first[0].clone();
    assert_eq!(first[1], "myapp");
    let words: Vec<&str> = random.split('-').collect();
    assert!(matches!(words.as_slice(), [_, _, n] if n.len() == 8), "a readable random name: {random}");
    assert_eq!(visit(relay.http, &host(&random), "/", &[]).await?.status, 200);

    // The agent restarts: the same names.
    agent.stop().await?;
    settled(&relay, "burrow_sessions", 0.0).await?;
    let (agent, granted) = TestAgent::start(relay.plan(tunnels())).await?;
    assert_eq!(names(&granted)?, first, "after the agent restarted");
    agent.stop().await?;
    relay.stop().await?;

    // The relay restarts on the same data directory: still the same names, and still
    // refused to another token.
    let relay = HttpRelay::start(dir.path()).await?;
    let mut rival = relay.plan(vec![http_tunnel("web", app.addr, Some("myapp"))]);
    rival.token = other_token;
    let err = TestAgent::spawn(rival).finished().await?.unwrap_err();
    assert_eq!(refusal(&err), Some(&Refusal::SubdomainTaken { name: "myapp".into() }), "{err:#}");
    let (agent, granted) = TestAgent::start(relay.plan(tunnels())).await?;
    assert_eq!(names(&granted)?, first, "after the relay restarted");
    let answer = visit(relay.http, &host(&random), "/", &[]).await?;
    assert_eq!(answer.status, 200, "{}", answer.body);

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn a_tunnel_at_its_connection_cap_answers_503_until_a_place_frees() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = relay::RelayConfig { max_visitors_per_tunnel: 2, ..http_relay_config(dir.path()) };
    let relay = HttpRelay::start_with(config).await?;
    let app = LocalApp::start("web").await?;
    let (agent, _) = TestAgent::start(relay.plan(vec![http_tunnel("web", app.addr, Some("myapp"))])).await?;

    // Each visitor connection holds its place as long as it stays open.
    let mut first = Visitor::connect(relay.http).await?;
    let mut second = Visitor::connect(relay.http).await?;
    assert_eq!(first.get(&host("myapp"), "/", &[]).await?.status, 200);
    assert_eq!(second.get(&host("myapp"), "/", &[]).await?.status, 200);
    let mut third = Visitor::connect(relay.http).await?;
    let full = third.get(&host("myapp"), "/", &[]).await?;
    assert_eq!(full.status, 503);
    assert_eq!(
        full.body,
        "503 Too many connections: myapp.burrow.test is serving as many connections as it allows; \
         try again in a moment.\n"
    );
    // The open ones keep working.
    assert_eq!(first.get(&host("myapp"), "/again", &[]).await?.status, 200);

    drop(first);
    settled(&relay, "burrow_visitors", 1.0).await?;
    assert_eq!(third.get(&host("myapp"), "/", &[]).await?.status, 200, "a freed place is taken");

    agent.stop().await?;
    relay.stop().await
}

/// Sends `request` whole on a connection from `source`, and returns the response head.
async fn request_from(source: &str, relay: std::net::SocketAddr, request: String) -> anyhow::Result<String> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(source.parse()?, 0))?;
    let mut tcp = socket.connect(relay).await?;
    tcp.write_all(request.as_bytes()).await?;
    testkit::probes::read_head(&mut tcp).await
}

fn status_of(head: &str) -> u16 {
    head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or_default()
}

#[tokio::test]
async fn parallel_basic_auth_guesses_are_checked_at_most_once_a_second() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = relay::RelayConfig { max_visitors_per_ip: 1024, ..http_relay_config(dir.path()) };
    let relay = HttpRelay::start_with(config).await?;
    let app = LocalApp::start("web").await?;
    let mut tunnel = http_tunnel("web", app.addr, Some("private"));
    tunnel.access.basic_auth = Some(burrow_common::Secret::new("alice:correct-horse"));
    let (agent, _) = TestAgent::start(relay.plan(vec![tunnel])).await?;

    let started = Instant::now();
    let mut guesses = tokio::task::JoinSet::new();
    for guess in 0..256 {
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("alice:guess-{guess:03}"));
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {credentials}\r\nConnection: close\r\n\r\n",
            host("private")
        );
        guesses.spawn(request_from("127.0.0.2", relay.http, request));
    }
    let mut statuses = Vec::new();
    while let Some(head) = guesses.join_next().await {
        let head = head??;
        if status_of(&head) == 429 {
            assert!(head.to_lowercase().contains("retry-after: 1\r\n"), "{head}");
        }
        statuses.push(status_of(&head));
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "256 guesses took {elapsed:?} to answer");
    assert!(statuses.iter().all(|s| [401, 429].contains(s)), "{statuses:?}");
    assert!(statuses.contains(&429), "guesses over the quota are answered 429 at once");
    let checks = sample(&metrics(&relay).await?, "burrow_credential_checks_total{kind=\"basic_auth\"}").unwrap_or(0.0);
    let allowed = 10.0 + elapsed.as_secs_f64().ceil() + 1.0;
    assert!((1.0..=allowed).contains(&checks), "{checks} passwords compared in {elapsed:?}");
    assert_eq!(app.connections(), 0);

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn a_short_basic_auth_password_is_refused_by_the_relay() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let app = LocalApp::start("web").await?;
    // The agent's config loader would refuse it first; the library sends what it is given.
    let mut tunnel = http_tunnel("web", app.addr, Some("private"));
    tunnel.access.basic_auth = Some(burrow_common::Secret::new("alice:s3cret"));
    let err = TestAgent::spawn(relay.plan(vec![tunnel])).finished().await?.unwrap_err();
    match refusal(&err) {
        Some(Refusal::BadTunnel { name, why }) => {
            assert_eq!(name, "web");
            assert!(why.contains("at least 12 characters"), "{why}");
        }
        other => anyhow::bail!("expected BadTunnel, got {other:?}: {err:#}"),
    }
    relay.stop().await
}

#[tokio::test]
async fn probing_unknown_names_is_paced_like_wrong_passwords() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let mut probes = tokio::task::JoinSet::new();
    for probe in 0..20 {
        let request =
            format!("GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", host(&format!("probe-{probe}")));
        probes.spawn(request_from("127.0.0.4", relay.http, request));
    }
    let mut statuses = Vec::new();
    while let Some(head) = probes.join_next().await {
        statuses.push(status_of(&head??));
    }
    let not_found = statuses.iter().filter(|s| **s == 404).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert!(not_found <= 10, "{not_found} names looked up: {statuses:?}");
    assert_eq!(not_found + throttled, 20, "{statuses:?}");
    // Another address is not held back by this one's probing.
    assert_eq!(visit(relay.http, &host("elsewhere"), "/", &[]).await?.status, 404);
    relay.stop().await
}
