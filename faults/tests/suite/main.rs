//! The fault suite: each scenario builds its own simulated internet, runs the compiled relay
//! and agent in it, injects one fault and measures what a user would see.
//! Run with `cargo build --workspace --bins && cargo test -p burrow-faults -- --test-threads 8`
//! (as root); the scenarios mostly wait on the network, so they run side by side.

mod fallback;
mod fleet;
mod lossy;
mod nat;
mod outages;
mod restarts;
mod udp;

use std::{net::SocketAddr, time::Duration};

use burrow_faults::{
    process::{AgentProcess, RelayProcess},
    sim::{Host, Sim},
    traffic::{self, echo_server},
};
use tempfile::TempDir;

/// A whole-scenario hang guard; each scenario states its own tighter bounds.
const SCENARIO: Duration = Duration::from_secs(240);

/// A relay on the VPS and an agent at home exposing an echo server, through the NAT.
struct World {
    sim: Sim,
    data: TempDir,
    relay: RelayProcess,
    agent: AgentProcess,
    echo: SocketAddr,
}

impl World {
    /// `None` when this machine cannot run the simulation (the reason is printed).
    async fn build(name: &str, relay_env: &[(&str, &str)], agent_env: &[(&str, &str)]) -> anyhow::Result<Option<Self>> {
        let Some(sim) = Sim::up(name)? else {
            return Ok(None);
        };
        let data = tempfile::tempdir()?;
        let relay = RelayProcess::start(&sim, data.path(), relay_env).await?;
        let echo = echo_server(&sim)?;
        let agent = AgentProcess::start(&sim, &relay.fingerprint, echo, agent_env).await?;
        Ok(Some(Self { sim, data, relay, agent, echo }))
    }

    /// A visitor's connection from the outside client to the tunnel's public port.
    async fn visit(&self) -> anyhow::Result<tokio::net::TcpStream> {
        self.sim.connect(Host::Client, self.agent.public).await
    }

    /// One fresh visitor, one small echo; how long it took.
    async fn one_echo(&self) -> anyhow::Result<Duration> {
        let started = std::time::Instant::now();
        let mut tcp = self.visit().await?;
        traffic::timed_round_trip(&mut tcp, b"are you there?").await?;
        Ok(started.elapsed())
    }

    async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        Ok(traffic::sample(&traffic::metrics(&self.sim).await?, series))
    }
}
