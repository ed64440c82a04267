//! The relay's admin endpoint: counters in `/metrics` match what the test did.
//! Run with `cargo test -p burrow-relay --test metrics`.

use burrow_common::Secret;
use testkit::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[tokio::test]
async fn counters_follow_sessions_visitors_refusals_and_auth_failures() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = relay_config(dir.path());
    config.max_visitors_per_tunnel = 1;
    let relay = TestRelay::start_with(config).await?;
    let (agent, tunnels) = TestAgent::start(relay.plan(vec![tunnel("web", echo_server().await?)])).await?;
    let public = public_addr(&tunnels[0]);

    for _ in 0..5 {
        assert_eq!(exchange(public, b"0123456789").await?, b"0123456789");
    }
    // With the tunnel's one place taken, the next visitor is turned away.
    let mut held = TcpStream::connect(public).await?;
    held.write_all(b"x").await?;
    held.read_exact(&mut [0u8; 1]).await?;
    let mut refused = TcpStream::connect(public).await?;
    assert!(!matches!(tokio::time::timeout(STEP, refused.read(&mut [0u8; 1])).await?, Ok(1)));
    let mut wrong = relay.plan(vec![tunnel("other", echo_server().await?)]);
    wrong.token = Secret::new("definitely-not-the-token");
    TestAgent::spawn(wrong).finished().await?.unwrap_err();

    // A finished visitor leaves the gauge just after its last byte; wait for that.
    let page = settled(&relay, "burrow_visitors", 1.0).await?;
    assert_eq!(sample(&page, "burrow_sessions"), Some(1.0), "{page}");
    assert_eq!(sample(&page, "burrow_sessions_admitted_total"), Some(1.0));
    assert_eq!(sample(&page, "burrow_tunnels"), Some(1.0));
    assert_eq!(sample(&page, "burrow_visitors_accepted_total"), Some(6.0));
    assert_eq!(sample(&page, "burrow_visitors"), Some(1.0), "only the held visitor is open");
    assert_eq!(sample(&page, "burrow_visitors_refused_total{reason=\"tunnel_limit\"}"), Some(1.0));
    assert_eq!(sample(&page, "burrow_auth_failures_total"), Some(1.0));
    // Five exchanges, and the held visitor's byte, counted while it is still open.
    assert_eq!(sample(&page, "burrow_bytes_total{direction=\"visitor_to_local\"}"), Some(51.0));
    assert_eq!(sample(&page, "burrow_bytes_total{direction=\"local_to_visitor\"}"), Some(51.0));

    drop((held, refused));
    agent.stop().await?;
    // The relay frees the session as soon as the agent says it is leaving.
    let page = settled(&relay, "burrow_sessions", 0.0).await?;
    assert_eq!(sample(&page, "burrow_tunnels"), Some(0.0));
    relay.stop().await
}

#[tokio::test]
async fn healthz_answers_and_a_token_guards_the_endpoint_when_set() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let open = TestRelay::start(dir.path()).await?;
    assert_eq!(get(open.admin.expect("enabled"), "/healthz", None).await?, (200, "ok\n".into()));
    assert_eq!(get(open.admin.expect("enabled"), "/nope", None).await?.0, 404);
    open.stop().await?;

    let dir = tempfile::tempdir()?;
    let mut config = relay_config(dir.path());
    config.admin_token = Some(Secret::new("admin-token-0123456789"));
    let guarded = TestRelay::start_with(config).await?;
    let admin = guarded.admin.expect("enabled");
    assert_eq!(get(admin, "/metrics", None).await?.0, 401);
    assert_eq!(get(admin, "/metrics", Some("admin-token-wrong-000000")).await?.0, 401);
    let (status, page) = get(admin, "/metrics", Some("admin-token-0123456789")).await?;
    assert_eq!(status, 200);
    assert_eq!(sample(&page, "burrow_sessions"), Some(0.0));
    guarded.stop().await
}
