//! End-to-end behaviour of HTTP and TLS tunnels by subdomain: routing by Host and SNI, HTTPS
//! with the relay's wildcard certificate, forwarded headers, large streamed bodies,
//! WebSocket, server-sent events, keep-alive and TLS passthrough. Relay, agents and local
//! servers run in one process, except the memory test, which reads the compiled relay's RSS.
//! Run with `cargo test -p burrow-relay --test http_tunnels` (which builds the relay binary too).

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use testkit::{STEP, TestAgent, http::*, http_apps::*};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn requests_reach_the_tunnel_their_host_names_in_any_case_with_or_without_port() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let (alpha, beta, gamma) =
        (LocalApp::start("alpha").await?, LocalApp::start("beta").await?, LocalApp::start("gamma").await?);
    let two = vec![http_tunnel("alpha", alpha.addr, Some("alpha")), http_tunnel("beta", beta.addr, Some("beta"))];
    let (first, granted) = TestAgent::start(relay.plan(two)).await?;
    let (second, _) = TestAgent::start(relay.plan(vec![http_tunnel("gamma", gamma.addr, Some("gamma"))])).await?;

    let (http, https) = (relay.http.port(), relay.https.port());
    assert_eq!(
        granted[0].urls,
        [format!("https://alpha.burrow.test:{https}"), format!("http://alpha.burrow.test:{http}")]
    );
    assert_eq!(granted[1].urls[1], format!("http://beta.burrow.test:{http}"));

    // One visitor connection going from tunnel to tunnel, and between the two agents.
    let mut visitor = Visitor::connect(relay.http).await?;
    for (sent_host, app) in [
        (format!("alpha.burrow.test:{http}"), "alpha"),
        ("beta.burrow.test".to_string(), "beta"),
        ("ALPHA.Burrow.Test".to_string(), "alpha"),
        (format!("Gamma.BURROW.test:{http}"), "gamma"),
        ("beta.burrow.test.".to_string(), "beta"),
        ("gamma.burrow.test".to_string(), "gamma"),
    ] {
        let answer = visitor.get(&sent_host, "/which?x=1", &[]).await?;
        assert_eq!(answer.status, 200, "{sent_host}: {}", answer.body);
        let echoed = answer.json()?;
        assert_eq!(echoed["app"], app, "Host {sent_host} reached {}", echoed["app"]);
        assert_eq!(echoed["path"], "/which?x=1");
        assert_eq!(echoed["headers"]["host"][0], sent_host.as_str(), "the local server sees the Host as sent");
    }

    first.stop().await?;
    second.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn https_uses_the_wildcard_certificate_and_the_http_port_stays_plain() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let app = LocalApp::start("web").await?;
    let (agent, granted) = TestAgent::start(relay.plan(vec![http_tunnel("web", app.addr, Some("myapp"))])).await?;
    let client = relay.client()?;

    for url in &granted[0].urls {
        let answer = answer(client.get(format!("{url}/hello")).send().await?).await?;
        assert_eq!(answer.status, 200, "{url}: {}", answer.body);
        let echoed = answer.json()?;
        assert_eq!(echoed["app"], "web");
        let scheme = url.split_once("://").context("a scheme")?.0;
        assert_eq!(echoed["headers"]["x-forwarded-proto"][0], scheme, "{url}");
    }
    // Any subdomain: the certificate is a wildcard, and an unknown name is the relay's 404.
    let other = answer(client.get(relay.https_url("nobody-here", "/")).send().await?).await?;
    assert_eq!(other.status, 404);
    // A request on a connection whose TLS named another host is misdirected.
    let misdirected = client.get(relay.https_url("myapp", "/")).header("host", host("nobody-here")).send().await?;
    assert_eq!(misdirected.status(), 421);

    // Trusting only the public roots, the same request fails: the TLS really was this
    // relay's own certificate.
    let public_roots =
        reqwest::Client::builder().use_rustls_tls().no_proxy().resolve(&host("myapp"), relay.https).build()?;
    let refused = public_roots.get(relay.https_url("myapp", "/")).send().await;
    assert!(refused.is_err(), "a client without the relay's certificate got {refused:?}");
    // Plain HTTP on the HTTPS port is not served.
    let plain = reqwest::Client::builder().no_proxy().resolve(&host("myapp"), relay.https).build()?;
    assert!(plain.get(format!("http://myapp.burrow.test:{}/", relay.https.port())).send().await.is_err());

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn plain_http_is_redirected_to_https_when_the_relay_says_so() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = relay::RelayConfig { http_redirect_https: true, ..http_relay_config(dir.path()) };
    let relay = HttpRelay::start_with(config).await?;
    let app = LocalApp::start("web").await?;
    let (agent, _) = TestAgent::start(relay.plan(vec![http_tunnel("web", app.addr, Some("myapp"))])).await?;

    let redirect = visit(relay.http, "MyApp.burrow.test", "/page?q=1", &[]).await?;
    assert_eq!(redirect.status, 308);
    assert_eq!(redirect.header("location"), relay.https_url("myapp", "/page?q=1"));
    assert_eq!(app.connections(), 0, "the redirect is the relay's own answer");
    let followed = answer(relay.client()?.get(relay.http_url("myapp", "/page")).send().await?).await?;
    assert_eq!(followed.status, 200);
    assert_eq!(followed.json()?["headers"]["x-forwarded-proto"][0], "https");

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn forwarded_headers_name_the_visitor_and_replace_forged_ones() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let app = LocalApp::start("web").await?;
    let (agent, _) = TestAgent::start(relay.plan(vec![http_tunnel("web", app.addr, Some("myapp"))])).await?;

    let sent_host = format!("myapp.burrow.test:{}", relay.http.port());
    let forged = [
        ("x-forwarded-for", "203.0.113.66"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "bank.example"),
        ("forwarded", "for=203.0.113.66;proto=https"),
    ];
    let echoed = visit(relay.http, &sent_host, "/", &forged).await?.json()?;
    let headers = &echoed["headers"];
    assert_eq!(headers["x-forwarded-for"], serde_json::json!(["127.0.0.1"]), "{headers}");
    assert_eq!(headers["x-forwarded-proto"], serde_json::json!(["http"]), "{headers}");
    assert_eq!(headers["x-forwarded-host"], serde_json::json!([sent_host]), "{headers}");
    let forwarded = format!("for=127.0.0.1;host=\"{sent_host}\";proto=http");
    assert_eq!(headers["forwarded"], serde_json::json!([forwarded]), "{headers}");

    // Over HTTPS the proto says so.
    let response =
        relay.client()?.get(relay.https_url("myapp", "/")).header("x-forwarded-proto", "http").send().await?;
    let headers = answer(response).await?.json()?["headers"].clone();
    assert_eq!(headers["x-forwarded-proto"], serde_json::json!(["https"]), "{headers}");
    assert_eq!(headers["x-forwarded-for"], serde_json::json!(["127.0.0.1"]), "{headers}");
    let https_host = format!("myapp.burrow.test:{}", relay.https.port());
    assert_eq!(headers["forwarded"][0], format!("for=127.0.0.1;host=\"{https_host}\";proto=https"));

    // Hop-by-hop headers stay on their hop: one a visitor names in Connection (here the
    // forwarding header a proxy in front of the local server would trust) does not cross.
    let hop = [("connection", "x-forwarded-for, x-private"), ("x-private", "1"), ("keep-alive", "timeout=99")];
    let echoed = visit(relay.http, &sent_host, "/", &hop).await?.json()?;
    let headers = &echoed["headers"];
    assert_eq!(headers["x-forwarded-for"], serde_json::json!(["127.0.0.1"]), "{headers}");
    for gone in ["x-private", "keep-alive", "connection"] {
        assert!(headers.get(gone).is_none(), "{gone} crossed: {headers}");
    }
    // Two Hosts could be routed by one and served by the other.
    let mut twice = Visitor::connect(relay.http).await?;
    let answer = twice.get(&sent_host, "/", &[("host", "other.burrow.test")]).await?;
    assert_eq!(answer.status, 400, "{}", answer.body);

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn the_agent_rewrites_host_and_headers_next_to_the_local_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let app = LocalApp::start("web").await?;
    let mut tunnel = http_tunnel("web", app.addr, Some("myapp"));
    tunnel.rewrite = agent::HttpRewrite {
        host_header: Some("localhost:3000".into()),
        request_headers: vec![("x-team".into(), "blue".into())],
        response_headers: vec![("x-served-by".into(), "burrow".into())],
    };
    let (agent, _) = TestAgent::start(relay.plan(vec![tunnel])).await?;

    let answer = visit(relay.http, &host("myapp"), "/", &[("x-team", "red")]).await?;
    assert_eq!(answer.header("x-served-by"), "burrow");
    let headers = &answer.json()?["headers"];
    assert_eq!(headers["host"], serde_json::json!(["localhost:3000"]), "{headers}");
    assert_eq!(headers["x-team"], serde_json::json!(["blue"]), "{headers}");
    assert_eq!(headers["x-forwarded-host"], serde_json::json!(["myapp.burrow.test"]), "{headers}");

    agent.stop().await?;
    relay.stop().await
}

/// Bytes each way in the big transfer test.
const BIG: u64 = 50 * 1024 * 1024;
/// How much the relay's RSS may grow while 2 x 50 MB pass: a buffered body would need more.
const RELAY_GROWTH_LIMIT_KIB: u64 = 25 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn fifty_megabytes_each_way_stream_through_while_relay_memory_stays_flat() -> anyhow::Result<()> {
    let relay = HttpRelayProcess::start().await?;
    let app = LocalApp::start("bulk").await?;
    let (agent, _) = TestAgent::start(relay.plan(vec![http_tunnel("bulk", app.addr, Some("bulk"))])?).await?;
    let client = reqwest::Client::builder().no_proxy().resolve(&host("bulk"), relay.http).build()?;
    let base = format!("http://bulk.burrow.test:{}", relay.http.port());
    // The first requests allocate what later ones reuse; the baseline is taken after them.
    for _ in 0..3 {
        let warm = client.post(format!("{base}/upload")).body(vec![7u8; 256 * 1024]).send().await?;
        assert_eq!(warm.status(), 200);
        warm.bytes().await?;
    }
    let baseline = relay.relay.process.vm_rss_kib()?;
    let expected = sha256_hex(pattern(BIG));
    let started = Instant::now();

    let transfers = async {
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(pattern(BIG).map(Ok::<_, std::io::Error>)));
        let uploaded = answer(client.post(format!("{base}/upload")).body(body).send().await?).await?;
        assert_eq!(uploaded.status, 200, "{}", uploaded.body);
        let uploaded = uploaded.json()?;
        assert_eq!(uploaded["bytes"], BIG, "the local server got every byte");
        assert_eq!(uploaded["sha256"], expected.as_str(), "the local server got the same bytes");

        let response = client.get(format!("{base}/download?bytes={BIG}")).send().await?;
        assert_eq!(response.status(), 200);
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let (mut received, mut chunks) = (0u64, response.bytes_stream());
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            received += chunk.len() as u64;
            digest.update(&chunk);
        }
        assert_eq!(received, BIG);
        assert_eq!(hex(digest.finish().as_ref()), expected, "the visitor got the same bytes");
        anyhow::Ok(())
    };
    // The relay's RSS is sampled all along, as the bytes pass.
    let mut peak = baseline;
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let transfers = tokio::time::timeout(Duration::from_secs(120), transfers);
    tokio::pin!(transfers);
    loop {
        tokio::select! {
            done = &mut transfers => break done.context("the transfers hung")??,
            _ = pace.tick() => peak = peak.max(relay.relay.process.vm_rss_kib()?),
        }
    }
    eprintln!(
        "2 x {} MiB in {:.1} s; relay RSS baseline {baseline} KiB, peak {peak} KiB",
        BIG >> 20,
        started.elapsed().as_secs_f64()
    );
    assert!(
        peak < baseline + RELAY_GROWTH_LIMIT_KIB,
        "relay RSS grew from {baseline} KiB to {peak} KiB while the bodies passed"
    );
    agent.stop().await
}

#[tokio::test]
async fn websocket_messages_cross_the_tunnel_both_ways() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let local = websocket_echo().await?;
    let (agent, _) = TestAgent::start(relay.plan(vec![http_tunnel("ws", local, Some("chat"))])).await?;

    let tcp = TcpStream::connect(relay.http).await?;
    let url = format!("ws://chat.burrow.test:{}/socket", relay.http.port());
    let (mut ws, response) = tokio::time::timeout(STEP, tokio_tungstenite::client_async(url, tcp)).await??;
    assert_eq!(response.status(), 101);
    // The local server speaks first: the relay does not wait for the visitor to send.
    let greeting = tokio::time::timeout(STEP, ws.next()).await?.context("the socket closed")??;
    assert_eq!(greeting, Message::text("hello from the local server"));

    let binary = testkit::random_bytes(200 * 1024);
    let messages = [Message::text("ping ☂"), Message::binary(binary), Message::text("x".repeat(70_000))];
    for message in messages {
        ws.send(message.clone()).await?;
        let echoed = tokio::time::timeout(STEP, ws.next()).await?.context("the socket closed")??;
        assert!(echoed == message, "the echo of a {}-byte message differs", message.len());
    }
    ws.close(None).await?;
    let closed = tokio::time::timeout(STEP, async {
        while let Some(message) = ws.next().await {
            if matches!(message?, Message::Close(_)) {
                break;
            }
        }
        anyhow::Ok(())
    });
    closed.await??;

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn server_sent_events_arrive_before_the_response_ends() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let app = LocalApp::start("events").await?;
    let (agent, _) = TestAgent::start(relay.plan(vec![http_tunnel("events", app.addr, Some("live"))])).await?;

    let response = relay.client()?.get(relay.https_url("live", "/events")).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let mut received = Vec::new();
    // The local server holds the response open until told; the first event must come now.
    let first = tokio::time::timeout(STEP, async {
        while !received.ends_with(b"\n\n") {
            received.extend_from_slice(&body.next().await.context("the response ended")??);
        }
        anyhow::Ok(())
    });
    first.await.context("the first event was held back")??;
    assert_eq!(received, b"data: first\n\n");

    app.finish_events();
    let rest = tokio::time::timeout(STEP, async {
        while let Some(chunk) = body.next().await {
            received.extend_from_slice(&chunk?);
        }
        anyhow::Ok(())
    });
    rest.await??;
    assert_eq!(received, b"data: first\n\ndata: last\n\n");

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn keep_alive_requests_share_one_local_connection() -> anyhow::Result<()> {
    const REQUESTS: usize = 10;
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let app = LocalApp::start("web").await?;
    let (agent, _) = TestAgent::start(relay.plan(vec![http_tunnel("web", app.addr, Some("myapp"))])).await?;

    let mut visitor = Visitor::connect(relay.http).await?;
    for i in 0..REQUESTS {
        let answer = visitor.get(&host("myapp"), &format!("/{i}"), &[]).await?;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json()?["path"], format!("/{i}"));
    }
    // The agent keeps its connections to the local server for the next request.
    let connections = app.connections();
    assert!((1..REQUESTS).contains(&connections), "{REQUESTS} requests took {connections} local connections");

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn an_upload_that_expects_100_continue_gets_it_and_arrives_whole() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let app = LocalApp::start("web").await?;
    let (agent, _) = TestAgent::start(relay.plan(vec![http_tunnel("web", app.addr, Some("myapp"))])).await?;
    let body = testkit::random_bytes(300 * 1024);

    let mut tcp = TcpStream::connect(relay.http).await?;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: myapp.burrow.test\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    // Nothing of the body is sent until the interim answer comes.
    let interim = testkit::read_head(&mut tcp).await?;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    tcp.write_all(&body).await?;
    let head = testkit::read_head(&mut tcp).await?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .context("a Content-Length")?
        .parse()?;
    let mut answer = vec![0; length];
    tokio::time::timeout(STEP, tcp.read_exact(&mut answer)).await??;
    let uploaded: serde_json::Value = serde_json::from_slice(&answer)?;
    assert_eq!(uploaded["bytes"], body.len());
    assert_eq!(uploaded["sha256"], sha256_hex([bytes::Bytes::from(body)]));

    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn a_tls_tunnel_passes_the_handshake_through_to_the_local_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let local = tls_echo_server(&host("secure")).await?;
    let app = LocalApp::start("web").await?;
    let tunnels = vec![tls_tunnel("secure", local.addr, "secure"), http_tunnel("web", app.addr, Some("myapp"))];
    let (agent, granted) = TestAgent::start(relay.plan(tunnels)).await?;
    assert_eq!(granted[0].urls, [format!("https://secure.burrow.test:{}", relay.https.port())]);

    // Trusting only the local server's certificate: the relay cannot have ended this TLS.
    let message = testkit::random_bytes(100 * 1024);
    let echoed = tls_round_trip(relay.https, &host("secure"), local.cert.clone(), message.clone()).await?;
    assert!(echoed == message, "the echo through the TLS tunnel differs");
    // A client that trusts the relay's certificate instead is refused by the local server's.
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let relay_cert = CertificateDer::from_pem_slice(&relay.https_cert_pem()?)
        .map_err(|e| anyhow::anyhow!("relay certificate: {e}"))?;
    let mismatch = tls_round_trip(relay.https, &host("secure"), relay_cert, b"hi".to_vec()).await;
    assert!(mismatch.is_err(), "the relay answered TLS for a passthrough tunnel");
    // The same port still ends TLS itself for HTTP tunnels.
    let answer = answer(relay.client()?.get(relay.https_url("myapp", "/")).send().await?).await?;
    assert_eq!(answer.json()?["app"], "web");

    agent.stop().await?;
    relay.stop().await
}

/// Sends one request head on a new connection to the relay's HTTP port and returns the status
/// and, unless the connection switched protocols, the body.
async fn ask_to_switch(
    relay: &HttpRelay,
    name: &str,
    path: &str,
    upgrade: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut tcp = TcpStream::connect(relay.http).await?;
    let asking = upgrade.map(|protocol| format!("Connection: Upgrade\r\nUpgrade: {protocol}\r\n")).unwrap_or_default();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {}\r\n{asking}\r\n", host(name)).as_bytes()).await?;
    let head = testkit::read_head(&mut tcp).await?;
    let status = head.split_whitespace().nth(1).context("no status")?.parse()?;
    let length = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|n| n.trim().parse()))
        .transpose()?
        .unwrap_or(0);
    let mut body = vec![0; length];
    tokio::time::timeout(STEP, tcp.read_exact(&mut body)).await??;
    Ok((status, String::from_utf8(body)?))
}

#[tokio::test]
async fn only_websocket_upgrades_switch_protocols() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = HttpRelay::start(dir.path()).await?;
    let app = switching_app().await?;
    let mut allowing = http_tunnel("allowing", app, Some("allowing"));
    allowing.access.upgrades = vec!["h2c".into()];
    let (agent, _) = TestAgent::start(relay.plan(vec![http_tunnel("plain", app, Some("plain")), allowing])).await?;

    // h2c would let a visitor speak HTTP/2 past the relay's routing and checks: the request
    // crosses as a plain one, and the app never sees the ask.
    let (status, seen) = ask_to_switch(&relay, "plain", "/", Some("h2c")).await?;
    assert_eq!(status, 200, "{seen}");
    assert!(!seen.to_ascii_lowercase().contains("upgrade"), "the app saw the ask: {seen}");
    assert_eq!(ask_to_switch(&relay, "plain", "/", Some("websocket")).await?.0, 101);
    assert_eq!(ask_to_switch(&relay, "allowing", "/", Some("h2c")).await?.0, 101, "the tunnel allows h2c");
    // A local server that switches unasked does not get the visitor's connection.
    let (status, page) = ask_to_switch(&relay, "plain", "/switch-anyway", None).await?;
    assert_eq!(status, 502, "{page}");

    agent.stop().await?;
    relay.stop().await
}
