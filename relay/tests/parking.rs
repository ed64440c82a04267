//! Visitors that arrive while an agent's session is lost wait for the agent to come back,
//! instead of being refused; a clean agent exit still frees the port at once.
//! Run with `cargo test -p burrow-relay --test parking`.

use std::{
    io::ErrorKind,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use agent::{Plan, TunnelPlan};
use burrow_common::Refusal;
use relay::RelayConfig;
use testkit::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A relay that notices a lost session within about a second.
fn quick_config(dir: &Path) -> RelayConfig {
    RelayConfig { idle_timeout: Duration::from_secs(1), ..relay_config(dir) }
}

/// An agent serving `tunnel`, with keep-alives frequent enough for the relay's short idle
/// timeout.
fn plan_for(relay: &TestRelay, tunnel: TunnelPlan) -> Plan {
    let mut plan = relay.plan(vec![tunnel]);
    plan.keep_alive = Duration::from_millis(200);
    plan
}

/// An agent serving `local` as tunnel "web".
fn web_plan(relay: &TestRelay, local: SocketAddr) -> Plan {
    plan_for(relay, tunnel("web", local))
}

/// The public address of an echoing tunnel whose session the relay has just lost: its
/// agent's path went silent and the agent died without a word, then the relay's idle
/// timeout ran out.
async fn lost_tunnel(relay: &TestRelay) -> anyhow::Result<SocketAddr> {
    let proxy = UdpProxy::start(relay.addr).await?;
    let mut plan = web_plan(relay, echo_server().await?);
    plan.relay.port = proxy.addr.port();
    let (agent, tunnels) = TestAgent::start(plan).await?;
    proxy.cut();
    agent.kill().await;
    settled(relay, "burrow_sessions", 0.0).await?;
    Ok(public_addr(&tunnels[0]))
}

async fn refuses(addr: SocketAddr) -> anyhow::Result<bool> {
    match tokio::time::timeout(STEP, TcpStream::connect(addr)).await? {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// What a visitor reads next: Ok(0) is a clean end of stream.
async fn next_read(visitor: &mut TcpStream) -> anyhow::Result<std::io::Result<usize>> {
    Ok(tokio::time::timeout(STEP, visitor.read(&mut [0u8; 64])).await?)
}

#[tokio::test]
async fn a_visitor_parked_during_a_lost_session_is_served_by_the_agent_that_comes_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start_with(quick_config(dir.path())).await?;
    let public = lost_tunnel(&relay).await?;

    let mut visitor = TcpStream::connect(public).await?;
    let data = random_bytes(16 * 1024);
    visitor.write_all(&data).await?;
    settled(&relay, "burrow_parked_visitors", 1.0).await?;

    let (new, tunnels) = TestAgent::start(web_plan(&relay, echo_server().await?)).await?;
    assert_eq!(tunnels[0].port, public.port(), "the agent must get its parked port back");
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(STEP, visitor.read_exact(&mut back)).await??;
    assert!(back == data, "the parked visitor's bytes must arrive intact");
    visitor.shutdown().await?;
    assert_eq!(next_read(&mut visitor).await??, 0, "the echo server's FIN comes back");

    let page = settled(&relay, "burrow_visitors_unparked_total", 1.0).await?;
    assert_eq!(sample(&page, "burrow_parked_visitors"), Some(0.0), "{page}");
    assert!(sample(&page, "burrow_runtime_tasks").is_some_and(|n| n > 0.0), "{page}");
    assert_eq!(exchange(public, b"after").await?, b"after", "new visitors go to the new session");

    new.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn no_other_tunnel_can_take_a_parked_port() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start_with(quick_config(dir.path())).await?;
    let public = lost_tunnel(&relay).await?;
    let mut visitor = TcpStream::connect(public).await?;
    settled(&relay, "burrow_parked_visitors", 1.0).await?;

    let echo = echo_server().await?;
    let mut asking = tunnel("other", echo);
    asking.remote_port = Some(public.port());
    let err = TestAgent::spawn(plan_for(&relay, asking)).finished().await?.unwrap_err();
    assert_eq!(refusal(&err), Some(&Refusal::PortTaken { port: public.port() }), "{err:#}");
    let (other, tunnels) = TestAgent::start(plan_for(&relay, tunnel("other", echo))).await?;
    assert_ne!(tunnels[0].port, public.port(), "a parked port is not free");
    assert_eq!(sample(&metrics(&relay).await?, "burrow_parked_visitors"), Some(1.0));

    let (web, _) = TestAgent::start(web_plan(&relay, echo)).await?;
    visitor.write_all(b"still here").await?;
    let mut back = [0u8; 10];
    tokio::time::timeout(STEP, visitor.read_exact(&mut back)).await??;
    assert_eq!(&back, b"still here");

    web.stop().await?;
    other.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn past_the_deadline_parked_visitors_get_a_clean_end_and_the_port_is_released() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let park_for = Duration::from_secs(1);
    let relay = TestRelay::start_with(RelayConfig { park_visitors_for: park_for, ..quick_config(dir.path()) }).await?;
    let public = lost_tunnel(&relay).await?;
    let lost = Instant::now();

    let mut visitor = TcpStream::connect(public).await?;
    // Unread bytes must not turn the relay's close into a reset.
    visitor.write_all(b"anyone there?").await?;
    settled(&relay, "burrow_parked_visitors", 1.0).await?;
    let read = next_read(&mut visitor).await?;
    assert!(matches!(read, Ok(0)), "expected end of stream, got {read:?}");
    assert!(lost.elapsed() < park_for + Duration::from_secs(1), "closed after {:?}", lost.elapsed());
    assert!(refuses(public).await?, "a released port refuses connections");
    assert_eq!(sample(&metrics(&relay).await?, "burrow_parked_visitors"), Some(0.0));
    relay.stop().await
}

#[tokio::test]
async fn past_max_parked_visitors_a_visitor_is_reset_and_shutdown_closes_the_parked_ones() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start_with(RelayConfig { max_parked_visitors: 2, ..quick_config(dir.path()) }).await?;
    let public = lost_tunnel(&relay).await?;

    let mut first = TcpStream::connect(public).await?;
    let mut second = TcpStream::connect(public).await?;
    settled(&relay, "burrow_parked_visitors", 2.0).await?;
    let mut third = TcpStream::connect(public).await?;
    let read = next_read(&mut third).await?;
    assert!(matches!(&read, Err(e) if e.kind() == ErrorKind::ConnectionReset), "expected a reset, got {read:?}");
    let page = settled(&relay, "burrow_visitors_refused_total{reason=\"park_full\"}", 1.0).await?;
    assert_eq!(sample(&page, "burrow_parked_visitors"), Some(2.0), "{page}");

    relay.stop().await?;
    for visitor in [&mut first, &mut second] {
        let read = next_read(visitor).await?;
        assert!(matches!(read, Ok(0)), "a relay shutdown ends parked visitors cleanly, got {read:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_clean_agent_exit_frees_the_port_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start_with(quick_config(dir.path())).await?;
    let (agent, tunnels) = TestAgent::start(web_plan(&relay, echo_server().await?)).await?;
    agent.stop().await?;
    let page = settled(&relay, "burrow_sessions", 0.0).await?;
    assert!(refuses(public_addr(&tunnels[0])).await?, "the user chose to stop: visitors are refused");
    assert_eq!(sample(&page, "burrow_parked_visitors"), Some(0.0));
    relay.stop().await
}

#[tokio::test]
async fn with_parking_off_a_lost_session_frees_the_port_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = RelayConfig { park_visitors_for: Duration::ZERO, ..quick_config(dir.path()) };
    let relay = TestRelay::start_with(config).await?;
    let public = lost_tunnel(&relay).await?;
    assert!(refuses(public).await?, "park_visitors_for = 0s refuses visitors after a loss");
    relay.stop().await
}
