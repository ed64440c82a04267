//! A fleet of three relays on the simulated VPS, sharing tokens and claims through one etcd
//! that runs there too. Each relay reaches etcd at a client port of its own, so that one relay
//! alone can be cut off from the store ([`Fleet::cut_from_store`]) while the others keep it.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Output,
    sync::Arc,
};

use anyhow::Context;
use tempfile::TempDir;
use testkit::etcd::Etcd;
use tokio::process::Command;

use crate::{
    process::{AgentProcess, RELAY_PORT, RelayPlace, RelayProcess, binary},
    sim::{FLEET_IPS, Host, Sim},
    traffic,
};

/// The domain the fleet serves HTTP tunnels at.
pub const DOMAIN: &str = "fleet.test";

/// The port of the fleet's shared HTTP listener, on each relay's address.
pub const HTTP_PORT: u16 = 8880;

/// The etcd key prefix of the fleet (the relays' default).
pub const PREFIX: &str = "/burrow/";

/// Where relay `n` reaches etcd: its own client port on the VPS's loopback.
fn store_addr(n: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 23790 + n as u16))
}

/// Where relay `n` serves on the VPS.
pub fn place(n: usize) -> RelayPlace {
    RelayPlace { ip: FLEET_IPS[n], port: RELAY_PORT, admin: SocketAddr::from((Ipv4Addr::LOCALHOST, 9470 + n as u16)) }
}

pub struct Fleet {
    /// Shared, so that a scenario's load can go on while it stops and starts relays.
    pub sim: Arc<Sim>,
    pub etcd: Etcd,
    /// The relays by number; `None` while one is down.
    relays: Vec<Option<RelayProcess>>,
    data: Vec<TempDir>,
    env: Vec<(String, String)>,
}

impl Fleet {
    /// Three relays on one etcd, each configured further by `env`; `None` when this machine
    /// cannot run the simulation or has no etcd (the reason is printed).
    pub async fn up(name: &str, env: &[(&str, &str)]) -> anyhow::Result<Option<Self>> {
        if !Etcd::available()? {
            return Ok(None);
        }
        let Some(sim) = Sim::up(name)? else {
            return Ok(None);
        };
        let clients: Vec<SocketAddr> = (0..FLEET_IPS.len()).map(store_addr).collect();
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 23800));
        let etcd = Etcd::start_in(&sim.namespace(Host::Relay), &clients, peer).await?;
        let data = (0..FLEET_IPS.len()).map(|_| tempfile::tempdir()).collect::<Result<Vec<_>, _>>()?;
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut fleet = Self { sim: Arc::new(sim), etcd, relays: Vec::new(), data, env };
        for n in 0..FLEET_IPS.len() {
            let relay = match fleet.start_relay(n).await {
                // What the relay prints when its build has no etcd store (`scripts/test`
                // leaves it out where protoc is missing, and says so).
                Err(e) if format!("{e:#}").contains("built without the etcd store") => {
                    println!("SKIPPED: the relay was built without the etcd store (--features burrow-relay/etcd)");
                    return Ok(None);
                }
                started => started?,
            };
            fleet.relays.push(Some(relay));
        }
        Ok(Some(fleet))
    }

    /// Relay `n`, which must be running.
    pub fn relay(&self, n: usize) -> &RelayProcess {
        self.relays[n].as_ref().expect("the scenario stopped relay n and did not start it again")
    }

    /// Kills relay `n` at once (SIGKILL), as a crash would.
    pub async fn kill(&mut self, n: usize) -> anyhow::Result<()> {
        let relay = self.relays[n].take().with_context(|| format!("relay {n} is not running"))?;
        relay.daemon.kill_hard().await
    }

    /// Starts relay `n` again on its data directory.
    pub async fn restart(&mut self, n: usize) -> anyhow::Result<()> {
        let relay = self.start_relay(n).await?;
        self.relays[n] = Some(relay);
        Ok(())
    }

    async fn start_relay(&self, n: usize) -> anyhow::Result<RelayProcess> {
        let place = place(n);
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let store = self.etcd.url_at(n)?;
        let http = SocketAddr::from((place.ip, HTTP_PORT)).to_string();
        // Each relay offers itself to the agents of the others, as a deployed fleet does.
        let advertise = SocketAddr::from((place.ip, place.port)).to_string();
        let mut args = vec!["--store", &store, "--advertise", &advertise];
        args.extend(["--domain", DOMAIN, "--http-listen", &http, "--https-listen", "off"]);
        let relay = RelayProcess::start_at(&self.sim, place, self.data[n].path(), &env, &args).await;
        relay.with_context(|| format!("start relay {n}"))
    }

    /// `relay ARGS` run as an operator runs it on relay `n`'s machine, against its store.
    pub async fn relay_command(&self, n: usize, args: &[&str]) -> anyhow::Result<Output> {
        let mut command = self.sim.command(Host::Relay, &binary("relay")?);
        command.args(["--store", &self.etcd.url_at(n)?]).arg("--data-dir").arg(self.data[n].path()).args(args);
        Ok(command.output().await?)
    }

    /// Creates a token named `name` through relay `n`'s store; returns it.
    pub async fn add_token(&self, n: usize, name: &str) -> anyhow::Result<String> {
        let output = self.relay_command(n, &["token", "add", name]).await?;
        anyhow::ensure!(output.status.success(), "relay token add: {}", String::from_utf8_lossy(&output.stderr));
        Ok(String::from_utf8(output.stdout)?.trim().to_string())
    }

    /// An agent's command against relay `n` with `token`, kept to that one relay, before its
    /// tunnel's flags.
    pub fn agent_command(&self, n: usize, token: &str, env: &[(&str, &str)]) -> anyhow::Result<Command> {
        let mut command = self.fleet_agent_command(n, token, env)?;
        command.args(["--max-relays", "1"]);
        Ok(command)
    }

    /// An agent's command that dials relay `n` with `token` and links to the whole fleet its
    /// Welcome lists, before its tunnel's flags.
    pub fn fleet_agent_command(&self, n: usize, token: &str, env: &[(&str, &str)]) -> anyhow::Result<Command> {
        let relay = self.relay(n);
        let mut command = AgentProcess::command_to(&self.sim, relay.addr, &relay.fingerprint, env)?;
        command.env("BURROW_TOKEN", token).args(["--inspect", "off"]);
        Ok(command)
    }

    /// Relay `n`'s `/metrics` page.
    pub async fn metrics(&self, n: usize) -> anyhow::Result<String> {
        traffic::admin_get_at(&self.sim, place(n).admin, "/metrics").await
    }

    /// Cuts relay `n` (alone) off from etcd: its packets to and from the store are dropped.
    pub fn cut_from_store(&self, n: usize) -> anyhow::Result<()> {
        self.sim.cut_port(store_addr(n).port())
    }

    /// `etcdctl ARGS` on the VPS through relay `n`'s client port; returns its stdout.
    pub async fn etcdctl(&self, n: usize, args: &[&str]) -> anyhow::Result<String> {
        let mut command = self.sim.command(Host::Relay, std::path::Path::new("etcdctl"));
        let output = command.args(["--endpoints", &store_addr(n).to_string()]).args(args).output().await?;
        anyhow::ensure!(output.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        Ok(String::from_utf8(output.stdout)?)
    }
}
