//! Trusting a relay with a CA-issued certificate, and draining on shutdown.
//! Run with `cargo test -p burrow-agent --test trust_and_shutdown`.

use agent::Status;
use burrow_common::tls::Trust;
use testkit::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Writes a CA and a relay certificate for `localhost` signed by it; returns the CA path.
fn issue_certificate(
    dir: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
    let relay_key = rcgen::KeyPair::generate()?;
    let relay_cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&relay_key, &ca)?;
    let paths = (dir.join("ca.pem"), dir.join("relay.pem"), dir.join("relay.key"));
    std::fs::write(&paths.0, ca.pem())?;
    std::fs::write(&paths.1, relay_cert.pem())?;
    std::fs::write(&paths.2, relay_key.serialize_pem())?;
    Ok(paths)
}

#[tokio::test]
async fn agent_trusts_a_relay_whose_certificate_chains_to_its_ca_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ca, cert, key) = issue_certificate(dir.path())?;
    let mut config = relay_config(&dir.path().join("data"));
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    let relay = TestRelay::start_with(config).await?;
    let echo = echo_server().await?;

    let mut plan = relay.plan(vec![tunnel("web", echo)]);
    plan.relay.host = "localhost".into();
    plan.trust = Trust::CaFile(ca.clone());
    let (agent, tunnels) = TestAgent::start(plan.clone()).await?;
    assert_eq!(exchange(std::net::SocketAddr::from(([127, 0, 0, 1], tunnels[0].port)), b"ca").await?, b"ca");
    agent.stop().await?;

    // The same CA does not vouch for another name.
    plan.relay.host = "127.0.0.1".into();
    let err = TestAgent::spawn(plan).finished().await?.unwrap_err();
    assert!(format!("{err:#}").contains("does not match"), "{err:#}");
    relay.stop().await
}

#[tokio::test]
async fn shutdown_lets_open_visitors_finish_refuses_new_ones_and_tells_agents_to_retry() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let echo = echo_server().await?;
    let (mut agent, tunnels) = TestAgent::start(relay.plan(vec![tunnel("web", echo)])).await?;
    let public = public_addr(&tunnels[0]);

    let mut open = TcpStream::connect(public).await?;
    open.write_all(b"before ").await?;
    let mut buf = [0u8; 7];
    open.read_exact(&mut buf).await?;

    relay.cancel.cancel();
    // Once the listener is closed, new visitors are refused...
    tokio::time::timeout(STEP, async {
        while TcpStream::connect(public).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await?;
    // ...while the open one keeps working until it is done.
    open.write_all(b"during drain").await?;
    let mut buf = [0u8; 12];
    open.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"during drain");
    open.shutdown().await?;
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).await?;

    tokio::time::timeout(STEP, relay.task).await???;
    let status = tokio::time::timeout(STEP, agent.status.wait_for(|s| matches!(s, Status::Retrying { .. }))).await??;
    let Status::Retrying { reason, .. } = &*status else { unreachable!() };
    assert!(reason.contains("relay shutting down"), "{reason}");
    drop(status);
    assert!(!agent.task.is_finished(), "the agent keeps retrying");
    agent.stop().await
}

#[tokio::test]
async fn insecure_connects_to_any_relay_only_when_asked() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let echo = echo_server().await?;
    let mut plan = relay.plan(vec![tunnel("web", echo)]);
    plan.trust = Trust::Insecure;
    let (agent, tunnels) = TestAgent::start(plan.clone()).await?;
    assert_eq!(exchange(public_addr(&tunnels[0]), b"x").await?, b"x");
    agent.stop().await?;

    // Without --insecure, a self-signed relay is not trusted through the public roots.
    plan.trust = Trust::PublicRoots;
    let err = TestAgent::spawn(plan).finished().await?.unwrap_err();
    assert!(format!("{err:#}").contains("does not match"), "{err:#}");
    relay.stop().await
}

#[tokio::test]
async fn stopping_an_agent_that_is_still_connecting_is_immediate() -> anyhow::Result<()> {
    // A UDP socket that never answers: the agent's connect attempt would wait out its timeout.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let mut plan = relay.plan(vec![tunnel("web", echo_server().await?)]);
    plan.relay = agent::config::RelayAddr { host: "127.0.0.1".into(), port: silent.local_addr()?.port() };
    let mut agent = TestAgent::spawn(plan);
    agent.status.wait_for(|s| matches!(s, Status::Connecting)).await?;
    let asked = std::time::Instant::now();
    agent.stop().await?;
    let took = asked.elapsed();
    assert!(took < std::time::Duration::from_secs(1), "stopping took {took:?} while connecting");
    relay.stop().await
}
