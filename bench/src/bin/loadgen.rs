//! Load for a running relay: many agents in one process (each the real agent code with its
//! own QUIC session), many held visitor connections, and on request the latency a new
//! connection pays through the tunnel compared with a direct one.
//!
//! `loadgen --relay 127.0.0.1:4443 --fingerprint sha256:... --token ... --agents 250
//!  --connections 5000 --name-prefix shard0` prints one JSON line when its agents are online
//! (with each agent's time from its start to online) and one when its connections are held,
//! then reads commands from stdin: `probe N` measures N new connections each way; anything
//! else or EOF ends it. `bench/scale` and `bench/fleet` run several.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use agent::{
    Plan, Status, TunnelPlan,
    config::{AgentConfig, LocalTarget, RelayAddr},
};
use anyhow::Context;
use burrow_common::{Fingerprint, Secret, tls::Trust};
use clap::Parser;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

/// Hang guard for each phase; the counts bound the work.
const PHASE_LIMIT: Duration = Duration::from_secs(300);

#[derive(Parser)]
struct Args {
    #[arg(long)]
    relay: RelayAddr,
    #[arg(long)]
    fingerprint: Fingerprint,
    #[arg(long)]
    token: Secret,
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    #[arg(long, default_value_t = 20000)]
    connections: usize,
    /// Prefix of the tunnel names, unique per loadgen process sharing one token.
    #[arg(long, default_value = "load")]
    name_prefix: String,
    /// Relays of a fleet each agent keeps a session with, as the agent's `--max-relays`.
    #[arg(long, default_value_t = AgentConfig::default().max_relays)]
    max_relays: u8,
    /// QUIC links each agent keeps to the relay, as the agent's `--links`.
    #[arg(long, default_value_t = AgentConfig::default().links)]
    links: u8,
    /// Agents in their handshake at once: 64 is a crowd arriving together, 1 one at a time.
    #[arg(long, default_value_t = 64)]
    handshakes: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let echo = echo_server().await?;
    let cancel = CancellationToken::new();

    let started = Instant::now();
    let online = tokio::time::timeout(PHASE_LIMIT, start_agents(&args, echo, &cancel)).await.context("agents")??;
    let (ports, online_ms): (Vec<u16>, Vec<f64>) = online.into_iter().unzip();
    event(serde_json::json!({
        "event": "online", "agents": ports.len(), "seconds": started.elapsed().as_secs_f64(), "online_ms": online_ms,
    }));

    let started = Instant::now();
    let held =
        tokio::time::timeout(PHASE_LIMIT, hold_connections(&ports, args.connections)).await.context("hold")??;
    event(serde_json::json!({"event": "held", "connections": held.len(), "seconds": started.elapsed().as_secs_f64()}));

    // The orchestrator measures the relay at each event, then asks one shard to probe.
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    while let Some(command) = commands.next_line().await? {
        let Some(count) = command.strip_prefix("probe ").and_then(|n| n.trim().parse().ok()) else { break };
        let direct = tokio::time::timeout(PHASE_LIMIT, probe(&[echo.port()], count)).await??;
        let tunnel = tokio::time::timeout(PHASE_LIMIT, probe(&ports, count)).await??;
        event(serde_json::json!({
            "event": "probes",
            "direct_p50": direct.0, "direct_p99": direct.1,
            "tunnel_p50": tunnel.0, "tunnel_p99": tunnel.1,
        }));
    }
    drop(held);
    cancel.cancel();
    Ok(())
}

/// One JSON line on stdout per phase, for bench/scale.py.
fn event(value: serde_json::Value) {
    println!("{value}");
}

/// Starts `args.agents` agents with one tunnel each to `echo`; returns each one's public port
/// and the milliseconds from its start to online (its handshake and its tunnel's claim).
async fn start_agents(args: &Args, echo: SocketAddr, cancel: &CancellationToken) -> anyhow::Result<Vec<(u16, f64)>> {
    let config = AgentConfig::default();
    let local = LocalTarget { host: echo.ip().to_string(), port: echo.port() };
    let mut online = JoinSet::new();
    let handshakes = Arc::new(Semaphore::new(args.handshakes));
    for i in 0..args.agents {
        let mut plan = Plan::new(&config, args.relay.clone(), Trust::Pinned(args.fingerprint), args.token.clone());
        let name = format!("{}-{i}", args.name_prefix);
        plan.tunnels = vec![TunnelPlan::tcp(&name, local.clone())];
        plan.max_relays = args.max_relays;
        plan.links = args.links;
        let (status, mut watcher) = watch::channel(Status::Connecting);
        let cancel = cancel.clone();
        let permit = handshakes.clone().acquire_owned().await?;
        // Timed from here: the wait for a permit is the load's pacing, not the agent's.
        let started = Instant::now();
        tokio::spawn(async move {
            if let Err(e) = agent::run(plan, status, cancel).await {
                eprintln!("agent {i}: {e:#}");
            }
        });
        online.spawn(async move {
            let status = watcher.wait_for(|s| matches!(s, Status::Online(_))).await.map(|s| s.clone());
            let took = started.elapsed().as_secs_f64() * 1e3;
            drop(permit);
            match status {
                Ok(Status::Online(tunnels)) => Ok((tunnels.first().map(|t| t.port).context("no tunnel")?, took)),
                _ => anyhow::bail!("agent {i} stopped before coming online"),
            }
        });
    }
    let mut agents = Vec::with_capacity(args.agents);
    while let Some(agent) = online.join_next().await {
        agents.push(agent??);
    }
    Ok(agents)
}

/// Opens `count` visitor connections spread over the tunnels, each verified by an echo.
async fn hold_connections(ports: &[u16], count: usize) -> anyhow::Result<Vec<TcpStream>> {
    let opening = Arc::new(Semaphore::new(256));
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let port = ports[i % ports.len()];
        let permit = opening.clone().acquire_owned().await?;
        tasks.spawn(async move {
            let stream = echo_once(port).await;
            drop(permit);
            stream
        });
    }
    let mut held = Vec::with_capacity(count);
    while let Some(stream) = tasks.join_next().await {
        held.push(stream??);
    }
    Ok(held)
}

async fn echo_once(port: u16) -> anyhow::Result<TcpStream> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(b"x").await?;
    let mut byte = [0u8; 1];
    tcp.read_exact(&mut byte).await?;
    anyhow::ensure!(&byte == b"x", "echo returned other bytes");
    Ok(tcp)
}

/// p50 and p99 (ms) of connect + one echoed byte, sequentially over `ports`.
async fn probe(ports: &[u16], count: usize) -> anyhow::Result<(f64, f64)> {
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let started = Instant::now();
        drop(echo_once(ports[i % ports.len()]).await?);
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    Ok((at(0.5), at(0.99)))
}

async fn echo_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                tokio::io::copy(&mut r, &mut w).await.ok();
            });
        }
    });
    Ok(addr)
}
