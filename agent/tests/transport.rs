//! The agent's link over TLS on TCP, against an in-process relay: what crosses it, what the
//! relay counts, and how a bad certificate is told.
//! Run with `cargo test -p burrow-agent --test transport`.

use agent::config::TransportChoice;
use burrow_common::tls::{Fingerprint, Trust};
use testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_tcp_transport_agent_carries_visitors_byte_identical_and_frees_its_port_on_exit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let echo = echo_server().await?;
    let mut plan = relay.plan(vec![tunnel("web", echo)]);
    plan.transport = TransportChoice::Tcp;
    let (agent, tunnels) = TestAgent::start(plan.clone()).await?;
    let public = public_addr(&tunnels[0]);
    settled(&relay, "burrow_links{transport=\"tcp\"}", 4.0).await?;

    // Eight visitors at once, 1 MiB each, over the agent's four TCP links.
    let mut visitors = tokio::task::JoinSet::new();
    for i in 0..8u8 {
        visitors.spawn(async move {
            let sent: Vec<u8> = (0..1 << 20).map(|n: u32| (n as u8).wrapping_mul(31) ^ i).collect();
            let tcp = tokio::net::TcpStream::connect(public).await?;
            let (mut read, mut write) = tcp.into_split();
            let expected = sent.clone();
            let writer = tokio::spawn(async move {
                write.write_all(&sent).await?;
                write.shutdown().await
            });
            let mut echoed = Vec::new();
            read.read_to_end(&mut echoed).await?;
            writer.await??;
            anyhow::ensure!(echoed == expected, "visitor {i}: {} bytes back, not identical", echoed.len());
            Ok(())
        });
    }
    for done in visitors.join_all().await {
        done?;
    }
    let page = metrics(&relay).await?;
    assert_eq!(sample(&page, "burrow_links{transport=\"quic\"}"), Some(0.0), "{page}");
    let admin = relay.admin.expect("tests enable the admin endpoint");
    let (_, agents) = get(admin, "/api/agents", None).await?;
    assert!(agents.contains(r#""transport":"tcp""#), "{agents}");
    let (_, listeners) = get(admin, "/api/listeners", None).await?;
    let agents_addr = relay.relay_addr();
    assert!(listeners.contains(&format!(r#""tcp":"{}:{}""#, agents_addr.host, agents_addr.port)), "{listeners}");

    // Stopping sends the close code over TCP: the relay frees the port at once, so a new
    // agent asking for it gets it.
    agent.stop().await?;
    settled(&relay, "burrow_sessions", 0.0).await?;
    let mut again = relay.plan(vec![tunnel("web", echo)]);
    again.transport = TransportChoice::Tcp;
    again.tunnels[0].remote_port = Some(public.port());
    let (agent, tunnels) = TestAgent::start(again).await?;
    assert_eq!(tunnels[0].port, public.port());
    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn over_tcp_a_relay_with_another_certificate_is_refused_as_untrusted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let echo = echo_server().await?;
    let mut plan = relay.plan(vec![tunnel("web", echo)]);
    plan.transport = TransportChoice::Tcp;
    let other: Fingerprint = format!("sha256:{}", "00".repeat(32)).parse().map_err(anyhow::Error::msg)?;
    plan.trust = Trust::Pinned(other);
    let err = TestAgent::spawn(plan).finished().await?.unwrap_err();
    assert!(format!("{err:#}").contains("does not match --fingerprint"), "{err:#}");
    relay.stop().await
}

#[tokio::test]
async fn garbage_on_the_tcp_agent_port_is_dropped_and_the_relay_serves_on() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let agents_port = relay.relay_addr().port;
    for garbage in [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0][..]] {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", agents_port)).await?;
        tcp.write_all(garbage).await?;
        let mut answer = Vec::new();
        // A TLS alert at most, then the end: never a hang, never a crash.
        let read = tokio::time::timeout(STEP, tcp.read_to_end(&mut answer)).await?;
        assert!(read.is_err() || answer.len() < 64, "{garbage:?} got {} bytes back", answer.len());
    }
    let echo = echo_server().await?;
    let mut plan = relay.plan(vec![tunnel("web", echo)]);
    plan.transport = TransportChoice::Tcp;
    let (agent, tunnels) = TestAgent::start(plan).await?;
    assert_eq!(exchange(public_addr(&tunnels[0]), b"still serving").await?, b"still serving");
    agent.stop().await?;
    relay.stop().await
}
