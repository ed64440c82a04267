//! Networks that block UDP: the agent reaches its relay over TLS on TCP instead of QUIC,
//! from the start, in the middle of a session, through an HTTP proxy, and on the relay's
//! shared HTTPS port.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use burrow_faults::{
    process::{AgentProcess, Binary, RelayProcess, binary},
    sim::{Host, Impairment, RELAY_IP, ROUTER_LAN_IP, Sim},
    traffic::{Progress, echo_server, echo_transfer, metric_until, timed_round_trip},
};
use tempfile::TempDir;

use crate::SCENARIO;
use testkit::processes::AgentBinary;

/// The bound: online over TCP this soon after the agent starts.
const ONLINE_OVER_TCP: Duration = Duration::from_millis(1500);

/// An agent command whose memory of blocked relays starts empty, in `cache`.
fn agent_command(
    sim: &Sim,
    relay: &RelayProcess,
    echo: SocketAddr,
    cache: &TempDir,
    env: &[(&str, &str)],
) -> anyhow::Result<tokio::process::Command> {
    let mut command = AgentProcess::command(sim, &relay.fingerprint, echo, env)?;
    command.env("XDG_CACHE_HOME", cache.path());
    Ok(command)
}

async fn echo_through(sim: &Sim, public: SocketAddr, message: &[u8]) -> anyhow::Result<Duration> {
    let mut tcp = sim.connect(Host::Client, public).await?;
    timed_round_trip(&mut tcp, message).await
}

fn public(port: u16) -> SocketAddr {
    SocketAddr::from((RELAY_IP, port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_udp_blocked_from_the_start_the_agent_is_online_over_tcp_within_a_second_and_a_half() -> anyhow::Result<()>
{
    let Some(sim) = Sim::up("noudp")? else {
        return Ok(());
    };
    let data = tempfile::tempdir()?;
    let relay = RelayProcess::start(&sim, data.path(), &[]).await?;
    let echo = echo_server(&sim)?;
    sim.block_udp()?;
    let cache = tempfile::tempdir()?;
    let started = Instant::now();
    let mut agent = AgentBinary::launch(&mut agent_command(&sim, &relay, echo, &cache, &[])?).await?;
    let online = started.elapsed();
    let ready = agent.until(|ready| !ready.transport.is_empty()).await?.clone();
    let port = agent.tunnel("app").await?.port;
    let answered = echo_through(&sim, public(port), b"over TCP").await?;
    eprintln!("UDP blocked: online after {online:?} ({}); a visitor answered in {answered:?}", ready.transport);
    assert_eq!(ready.transport, "TCP: no QUIC answer in 300 ms");
    assert!(online <= ONLINE_OVER_TCP, "online over TCP only after {online:?}");

    // The next start remembers that this relay's UDP is blocked and does not wait.
    agent.process.terminate().await?;
    let started = Instant::now();
    let mut again = AgentBinary::launch(&mut agent_command(&sim, &relay, echo, &cache, &[])?).await?;
    let second = started.elapsed();
    let ready = again.until(|ready| !ready.transport.is_empty()).await?.clone();
    eprintln!("second start: online after {second:?} ({})", ready.transport);
    assert_eq!(ready.transport, "TCP: UDP was blocked last time");
    again.process.terminate().await?;

    // With QUIC only, the agent keeps retrying and says why.
    let mut quic_only = agent_command(&sim, &relay, echo, &cache, &[("BURROW_TRANSPORT", "quic")])?;
    let quic_only = Binary::start(&mut quic_only)?;
    let why = tokio::time::timeout(Duration::from_secs(30), quic_only.stderr_line_with("no answer from the relay"))
        .await
        .context("the QUIC-only agent never said why it is not online")??;
    eprintln!("--transport quic: {why}");
    assert!(why.contains("UDP 4443"), "{why}");
    Ok(())
}

/// Timeouts short enough that the lost QUIC session is noticed within seconds.
const QUICK_LOSS_RELAY: &[(&str, &str)] = &[("BURROW_RELAY_IDLE_TIMEOUT", "6s")];
const QUICK_LOSS_AGENT: &[(&str, &str)] =
    &[("BURROW_IDLE_TIMEOUT", "6s"), ("BURROW_KEEP_ALIVE", "2s"), ("BURROW_RECONNECT_MAX_DELAY", "4s")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_udp_is_blocked_mid_session_the_agent_comes_back_over_tcp_and_parked_visitors_are_served()
-> anyhow::Result<()> {
    let Some(sim) = Sim::up("midudp")? else {
        return Ok(());
    };
    let data = tempfile::tempdir()?;
    let relay = RelayProcess::start(&sim, data.path(), QUICK_LOSS_RELAY).await?;
    let echo = echo_server(&sim)?;
    let cache = tempfile::tempdir()?;
    let mut agent = AgentBinary::launch(&mut agent_command(&sim, &relay, echo, &cache, QUICK_LOSS_AGENT)?).await?;
    assert_eq!(agent.until(|ready| !ready.transport.is_empty()).await?.transport, "QUIC");
    let port = agent.tunnel("app").await?.port;
    echo_through(&sim, public(port), b"over QUIC").await?;

    sim.block_udp()?;
    let blocked = Instant::now();
    metric_until(&sim, "burrow_sessions", Duration::from_secs(15), |open| open == 0.0).await?;
    let mut parked = sim.connect(Host::Client, public(port)).await?;
    let answer = tokio::spawn(async move { timed_round_trip(&mut parked, b"parked while UDP went away").await });
    let ready = tokio::time::timeout(Duration::from_secs(20), agent.until(|ready| ready.transport.starts_with("TCP")))
        .await
        .context("the agent did not come back over TCP")??
        .clone();
    let back = blocked.elapsed();
    tokio::time::timeout(Duration::from_secs(10), answer).await???;
    eprintln!("UDP blocked mid-session: serving again over TCP ({}) {back:?} later", ready.transport);
    assert_eq!(agent.tunnel("app").await?.port, port, "the tunnel kept its port");
    // The idle timeout (6 s) to notice, then at most the reconnect delay cap (4 s) and a
    // start over TCP.
    assert!(back <= Duration::from_secs(12), "serving again only {back:?} after UDP was blocked");
    assert_eq!(relay_metric(&sim, "burrow_visitors_unparked_total").await?, 1.0);
    // The session's further links follow its first onto TCP.
    metric_until(&sim, "burrow_links{transport=\"tcp\"}", Duration::from_secs(10), |links| links == 4.0).await?;
    Ok(())
}

/// Visitors carried by the session's links of `transport` (`quic` or `tcp`), from the admin API.
async fn visitors_over(sim: &Sim, transport: &str) -> anyhow::Result<u64> {
    let page = burrow_faults::traffic::admin_get(sim, "/api/agents").await?;
    let body = page.split_once("\r\n\r\n").map(|(_, body)| body).context("no body from /api/agents")?;
    let agents: serde_json::Value = serde_json::from_str(body).with_context(|| format!("/api/agents: {body}"))?;
    let links =
        agents.as_array().into_iter().flatten().flat_map(|agent| agent["links"].as_array().into_iter().flatten());
    Ok(links.filter(|link| link["transport"] == transport).filter_map(|link| link["visitors"].as_u64()).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_udp_comes_back_new_visitors_move_to_quic_and_a_transfer_on_tcp_completes() -> anyhow::Result<()> {
    let Some(sim) = Sim::up("backudp")? else {
        return Ok(());
    };
    let data = tempfile::tempdir()?;
    let relay = RelayProcess::start(&sim, data.path(), &[]).await?;
    let echo = echo_server(&sim)?;
    sim.block_udp()?;
    let cache = tempfile::tempdir()?;
    // A slow uplink, so the transfer is still running when the agent moves.
    sim.impair(&Impairment { rate: Some("40mbit"), ..Impairment::default() })?;
    let probe_every = Duration::from_secs(3);
    let env = [("BURROW_QUIC_PROBE_INTERVAL", "3s")];
    let mut agent = AgentBinary::launch(&mut agent_command(&sim, &relay, echo, &cache, &env)?).await?;
    assert!(agent.until(|ready| !ready.transport.is_empty()).await?.transport.starts_with("TCP"));
    let port = agent.tunnel("app").await?.port;
    let progress = Progress::default();
    let transfer =
        tokio::spawn(echo_transfer(sim.connect(Host::Client, public(port)).await?, 50 << 20, progress.clone()));
    progress.reached(2 << 20, Duration::from_secs(20)).await.context("the transfer over TCP never started")?;

    sim.open_egress()?;
    let opened = Instant::now();
    // Probes come 3, 6, 12 s apart: UDP is found within two intervals of opening.
    tokio::time::timeout(Duration::from_secs(25), agent.until(|ready| ready.transport == "QUIC (moved from TCP)"))
        .await
        .context("the agent did not move back to QUIC")??;
    let moved = opened.elapsed();
    let echoed_when_moved = progress.bytes();
    let over_quic = visitors_over(&sim, "quic").await?;
    for i in 0..5 {
        echo_through(&sim, public(port), format!("new visitor {i}").as_bytes()).await?;
    }
    let new_over_quic = visitors_over(&sim, "quic").await? - over_quic;
    tokio::time::timeout(SCENARIO, transfer).await???;
    eprintln!(
        "UDP back: on QUIC {moved:?} later (probe every {probe_every:?}, doubling); {new_over_quic} of 5 new \
         visitors over QUIC; the 50 MB transfer begun on TCP finished intact {:?} after UDP came back",
        opened.elapsed()
    );
    assert_eq!(new_over_quic, 5, "new visitors must take the QUIC link");
    assert!(echoed_when_moved < 50 << 20, "the transfer was over before the move; it proves nothing");
    assert_eq!(relay_metric(&sim, "burrow_visitors_refused_total").await?, 0.0);
    Ok(())
}

async fn relay_metric(sim: &Sim, series: &str) -> anyhow::Result<f64> {
    Ok(burrow_faults::traffic::sample(&burrow_faults::traffic::metrics(sim).await?, series))
}

/// A tinyproxy on the home router, logging to `dir`, that may CONNECT only to the relay's port.
async fn start_tinyproxy(sim: &Sim, dir: &Path, port: u16) -> anyhow::Result<(Binary, std::path::PathBuf)> {
    let log = dir.join("tinyproxy.log");
    let config = dir.join("tinyproxy.conf");
    std::fs::write(
        &config,
        format!(
            "Port 8888\nListen {ROUTER_LAN_IP}\nTimeout 60\nLogFile \"{}\"\nLogLevel Connect\nConnectPort {port}\n",
            log.display()
        ),
    )?;
    let proxy = Binary::start(sim.command(Host::Router, Path::new("tinyproxy")).arg("-d").arg("-c").arg(&config))?;
    let addr = SocketAddr::from((ROUTER_LAN_IP, 8888));
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.connect(Host::Home, addr).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "tinyproxy did not listen on {addr} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((proxy, log))
}

/// Whether `program` is installed; where the suite must run (`FAULTS_REQUIRE_NETNS`) its
/// absence is an error, elsewhere the scenario says it is skipped.
fn needs(program: &str) -> anyhow::Result<bool> {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        anyhow::ensure!(std::env::var_os("FAULTS_REQUIRE_NETNS").is_none(), "{program} is not installed");
        eprintln!("SKIPPED: {program} is not installed (faults/netsim.sh deps installs it)");
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_only_an_http_proxy_gets_out_the_agent_is_online_through_it() -> anyhow::Result<()> {
    if !needs("tinyproxy")? {
        return Ok(());
    }
    let Some(sim) = Sim::up("proxy")? else {
        return Ok(());
    };
    let data = tempfile::tempdir()?;
    let relay = RelayProcess::start(&sim, data.path(), &[]).await?;
    let echo = echo_server(&sim)?;
    sim.only_proxy()?;
    let logs = tempfile::tempdir()?;
    let (_proxy, log) = start_tinyproxy(&sim, logs.path(), burrow_faults::process::RELAY_PORT).await?;
    let cache = tempfile::tempdir()?;
    let proxy_url = format!("http://{ROUTER_LAN_IP}:8888");
    let mut command = agent_command(&sim, &relay, echo, &cache, &[("HTTPS_PROXY", &proxy_url)])?;
    let mut agent = tokio::time::timeout(Duration::from_secs(20), AgentBinary::launch(&mut command))
        .await
        .context("the agent did not come online through the proxy")??;
    let ready = agent.until(|ready| !ready.transport.is_empty()).await?.clone();
    let port = agent.tunnel("app").await?.port;
    echo_through(&sim, public(port), b"through the proxy").await?;
    let logged = std::fs::read_to_string(&log)?;
    let connect = format!("CONNECT {RELAY_IP}:{}", burrow_faults::process::RELAY_PORT);
    eprintln!(
        "through tinyproxy ({}); its log: {}",
        ready.transport,
        logged.lines().find(|l| l.contains("CONNECT")).unwrap_or("")
    );
    assert!(ready.transport.starts_with("TCP"), "{}", ready.transport);
    assert!(logged.contains(&connect), "the proxy's log shows no {connect}:\n{logged}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_port_serves_an_https_tunnel_and_an_agent_over_tcp() -> anyhow::Result<()> {
    if !needs("curl")? {
        return Ok(());
    }
    let Some(sim) = Sim::up("oneport")? else {
        return Ok(());
    };
    let data = tempfile::tempdir()?;
    let https = format!("{RELAY_IP}:443");
    let args = ["--tcp-listen", "off", "--domain", "t.test", "--https-listen", &https, "--http-listen", "off"];
    let relay = RelayProcess::start_on(&sim, data.path(), &[], 443, &args).await?;
    // The local web server at home, with a page to fetch.
    let site = tempfile::tempdir()?;
    let page: String = (0..2000).map(|i| format!("line {i} of the page\n")).collect();
    std::fs::write(site.path().join("page.txt"), &page)?;
    let mut server = sim.command(Host::Home, Path::new("python3"));
    server.args(["-m", "http.server", "8000", "--bind", "127.0.0.1", "--directory"]).arg(site.path());
    let _server = Binary::start(&mut server)?;
    let cache = tempfile::tempdir()?;
    let mut agent = sim.command(Host::Home, &binary("agent")?);
    agent
        .env("BURROW_TOKEN", burrow_faults::process::TOKEN)
        .env("XDG_CACHE_HOME", cache.path())
        .args(["--relay", &https, "--fingerprint", &relay.fingerprint, "--transport", "tcp"])
        .args(["--local", "127.0.0.1:8000", "--http", "app"]);
    let mut agent = AgentBinary::launch(&mut agent).await?;
    let ready = agent.until(|ready| !ready.transport.is_empty()).await?.clone();
    assert!(ready.transport.starts_with("TCP"), "{}", ready.transport);
    let url = agent.tunnel("app").await?.urls.first().cloned().context("no URL for the HTTP tunnel")?;
    eprintln!("agent over TCP on {https}; tunnel at {url}");
    // The visitor's HTTPS request, on the same port the agent's link came in on.
    let mut fetched = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetched.is_none() && Instant::now() < deadline {
        let output = sim
            .command(Host::Client, Path::new("curl"))
            .args(["-sS", "-k", "--max-time", "5", "--resolve", &format!("app.t.test:443:{RELAY_IP}")])
            .arg("https://app.t.test/page.txt")
            .output()
            .await?;
        // The local server may still be starting: its first answers are 502s from the relay.
        if output.status.success() && output.stdout == page.as_bytes() {
            fetched = Some(output.stdout);
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(fetched.is_some(), "no byte-identical page over HTTPS on port 443 within 10 s");
    metric_until(&sim, "burrow_links{transport=\"tcp\"}", Duration::from_secs(10), |links| links == 4.0).await?;
    Ok(())
}
