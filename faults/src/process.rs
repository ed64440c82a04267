//! The compiled relay and agent, run inside the simulation as a user runs them, through the
//! shared launchers: each says what it serves in its `--ready-file`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::Context;
use testkit::processes::{AgentBinary, RelayBinary, binary_path};
use tokio::process::Command;

pub use testkit::processes::Binary;

use crate::sim::{Host, RELAY_IP, Sim};

/// The token every simulated agent uses.
pub const TOKEN: &str = "fault-suite-token-0123456789";

/// UDP port the simulated relay listens on.
pub const RELAY_PORT: u16 = 4443;

/// Where the relay's admin endpoint listens, inside the relay's namespace.
pub const ADMIN: &str = "127.0.0.1:9470";

/// A relay on the simulated VPS.
pub struct RelayProcess {
    pub daemon: Binary,
    pub fingerprint: String,
    /// Where agents reach it (UDP, and TCP on the same port).
    pub addr: SocketAddr,
}

/// Where a relay serves on the VPS: agents and public ports on `ip`, its admin endpoint
/// (on the VPS's loopback) at `admin`.
#[derive(Clone, Copy, Debug)]
pub struct RelayPlace {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub admin: SocketAddr,
}

impl RelayProcess {
    /// Starts the relay binary with its data in `data_dir`; `env` adds configuration.
    pub async fn start(sim: &Sim, data_dir: &Path, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_on(sim, data_dir, env, RELAY_PORT, &[]).await
    }

    /// Starts the relay with agents' UDP (and, unless `args` says otherwise, TCP) on `port`
    /// and `args` added.
    pub async fn start_on(
        sim: &Sim,
        data_dir: &Path,
        env: &[(&str, &str)],
        port: u16,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let place = RelayPlace { ip: RELAY_IP, port, admin: ADMIN.parse()? };
        Self::start_at(sim, place, data_dir, env, args).await
    }

    /// Starts the relay at `place` (one of a fleet on the VPS) with `args` added.
    pub async fn start_at(
        sim: &Sim,
        place: RelayPlace,
        data_dir: &Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let RelayPlace { ip, port, admin } = place;
        let mut command = sim.command(Host::Relay, &binary("relay")?);
        command
            .env("BURROW_RELAY_TOKEN", TOKEN)
            .envs(env.iter().copied())
            .args(["--listen", &format!("{ip}:{port}"), "--public-bind", &ip.to_string()])
            .args(["--admin-listen", &admin.to_string(), "--data-dir"])
            .arg(data_dir)
            .args(args);
        let relay = RelayBinary::launch(&mut command).await?;
        let addr = SocketAddr::from((ip, port));
        Ok(Self { fingerprint: relay.fingerprint.to_string(), daemon: relay.process, addr })
    }
}

/// An agent on the home host exposing `local` (an address on the home host's loopback); the
/// public address is a TCP port, or with [`AgentProcess::start_udp`] a UDP port.
pub struct AgentProcess {
    pub daemon: Binary,
    /// The public address the relay granted, as a client reaches it.
    pub public: SocketAddr,
}

impl AgentProcess {
    pub async fn start(sim: &Sim, fingerprint: &str, local: SocketAddr, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::launch(&mut Self::command(sim, fingerprint, local, env)?).await
    }

    /// An agent publishing `local`, a UDP service, on a public UDP port of the relay.
    pub async fn start_udp(
        sim: &Sim,
        fingerprint: &str,
        local: SocketAddr,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::launch(Self::command(sim, fingerprint, local, env)?.arg("--udp")).await
    }

    async fn launch(command: &mut Command) -> anyhow::Result<Self> {
        let mut agent = AgentBinary::launch(command).await?;
        let port = agent.tunnel("app").await?.port;
        Ok(Self { daemon: agent.process, public: SocketAddr::from((RELAY_IP, port)) })
    }

    /// The agent's command line, for tests that start it their own way; `env` may replace
    /// the token (`BURROW_TOKEN`) and add flags' equivalents.
    pub fn command(sim: &Sim, fingerprint: &str, local: SocketAddr, env: &[(&str, &str)]) -> anyhow::Result<Command> {
        let relay = SocketAddr::from((RELAY_IP, RELAY_PORT));
        let mut command = Self::command_to(sim, relay, fingerprint, env)?;
        command.args(["--local", &local.to_string(), "--name", "app"]);
        Ok(command)
    }

    /// The agent's command line against the relay at `relay`, before its tunnel's flags.
    pub fn command_to(
        sim: &Sim,
        relay: SocketAddr,
        fingerprint: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Command> {
        let mut command = sim.command(Host::Home, &binary("agent")?);
        command.env("BURROW_TOKEN", TOKEN).envs(env.iter().copied()).args([
            "--relay",
            &relay.to_string(),
            "--fingerprint",
            fingerprint,
        ]);
        Ok(command)
    }
}

/// A binary built by `cargo build --workspace --bins`.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    binary_path(name).context("the fault suite runs the compiled binaries")
}
