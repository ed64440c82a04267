//! UDP tunnels through the compiled relay and agent, used by real clients against real
//! servers on loopback: `dig` asking a dnsmasq, and `iperf3 -u` at 100 Mbit/s with its loss
//! report. The programs come from `faults/netsim.sh deps`; a missing one skips its test and
//! says so. Run with `cargo build --workspace --bins && cargo test -p burrow-agent --test udp_clients -- --nocapture`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Context;
use testkit::{
    processes::{AgentBinary, RelayBinary, agent_bin},
    udp_tools::{Dnsmasq, Iperf3Server, dig, installed, iperf3_udp_client},
};
use tokio::process::Command;

const RECORD: (&str, IpAddr) = ("game.burrow.test", IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));

/// Queries through a UDP tunnel; each `dig` sends from a fresh port, so each is a new flow.
const QUERIES: usize = 20;

#[tokio::test]
async fn dig_through_a_udp_tunnel_gets_dnsmasqs_answer_every_time() -> anyhow::Result<()> {
    if !installed("dnsmasq") || !installed("dig") {
        return Ok(());
    }
    let dns = Dnsmasq::start(&[RECORD]).await?;
    let relay = RelayBinary::start(&[]).await?;
    let mut command = relay.agent_command(dns.addr)?;
    let agent = AgentBinary::launch(command.args(["--udp", "--name", "dns", "--inspect", "off"])).await?;
    let [tunnel] = agent.ready.tunnels.as_slice() else { anyhow::bail!("one tunnel: {:?}", agent.ready.tunnels) };
    assert_eq!(tunnel.url, format!("udp://127.0.0.1:{}", tunnel.port));
    let public = SocketAddr::from(([127, 0, 0, 1], tunnel.port));

    let direct = dig(dns.addr, RECORD.0).await?;
    let mut slowest = std::time::Duration::ZERO;
    for query in 0..QUERIES {
        let answer = dig(public, RECORD.0).await.with_context(|| format!("query {query} through the tunnel"))?;
        assert_eq!(answer.answers, vec![RECORD.1.to_string()], "query {query}");
        slowest = slowest.max(answer.query_time);
    }
    eprintln!(
        "dig through the tunnel: {QUERIES} of {QUERIES} answered, slowest {slowest:?} (direct {:?})",
        direct.query_time
    );
    let page = relay.metrics().await?;
    let counted = page
        .lines()
        .find(|line| {
            line.starts_with("burrow_udp_datagrams_total{")
                && line.contains("tunnel=\"dns\",direction=\"visitor_to_local\"")
        })
        .and_then(|line| line.split_whitespace().last()?.parse::<f64>().ok());
    assert_eq!(counted, Some(QUERIES as f64), "each query one datagram: {page}");
    Ok(())
}

#[tokio::test]
async fn iperf3_udp_at_100_mbits_crosses_a_udp_tunnel_with_little_loss() -> anyhow::Result<()> {
    if !installed("iperf3") {
        return Ok(());
    }
    let server = Iperf3Server::start(0).await?;
    let relay = RelayBinary::start(&[]).await?;
    // iperf3 takes its control connection over TCP and its data over UDP, on one port
    // number: a TCP and a UDP tunnel asking for the same public port, which the two number
    // spaces allow.
    let port = free_public_port()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "relay = \"{}\"\nfingerprint = \"{}\"\ninspect = \"off\"\n\n\
             [[tunnels]]\nname = \"iperf-control\"\nlocal = {p}\nremote_port = {port}\n\n\
             [[tunnels]]\nname = \"iperf-data\"\nlocal = {p}\nprotocol = \"udp\"\nremote_port = {port}\n",
            relay.addr,
            relay.fingerprint,
            p = server.port
        ),
    )?;
    let mut command = Command::new(agent_bin()?);
    command.env("BURROW_TOKEN", relay.token()?).env("RUST_LOG", "warn").arg("--config").arg(&config);
    let agent = AgentBinary::launch(&mut command).await?;
    let urls: Vec<&str> = agent.ready.tunnels.iter().map(|t| t.url.as_str()).collect();
    assert_eq!(urls, [format!("tcp://127.0.0.1:{port}"), format!("udp://127.0.0.1:{port}")]);

    let report = iperf3_udp_client("127.0.0.1", port, "100M", 3, 1200).await?;
    let page = relay.metrics().await?;
    let udp: Vec<&str> = page.lines().filter(|l| l.starts_with("burrow_udp_")).collect();
    eprintln!("iperf3 -u at 100 Mbit/s through the tunnel: {report:?}; relay: {udp:?}");
    assert!(report.received_bps > 90e6, "{report:?}");
    assert!(report.lost_percent < 2.0, "{report:?}");
    assert_eq!(agent.process.terminate().await?, 0);
    Ok(())
}

/// A port of the relay's default range (20000-29999) free on loopback for TCP and UDP alike.
fn free_public_port() -> anyhow::Result<u16> {
    let start = 20_000 + u16::try_from(std::process::id() % 9_000)?;
    (start..30_000)
        .chain(20_000..start)
        .find(|&port| {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        })
        .context("no port of 20000-29999 free for both TCP and UDP")
}
