//! A relay and agents inside the test's own process, on loopback with ephemeral ports. Tests
//! learn addresses from values the relay and agent publish, never by waiting.

use std::{net::SocketAddr, path::Path, time::Duration};

use agent::{
    Plan, PublicTunnel, Status, TunnelPlan,
    config::{AgentConfig, LocalTarget, RelayAddr},
};
use anyhow::Context;
use burrow_common::{Fingerprint, Refusal, Secret, tls::Trust};
use relay::{Relay, RelayConfig};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::STEP;

pub struct TestRelay {
    pub addr: SocketAddr,
    /// The admin endpoint (`/metrics`, `/healthz`), when enabled.
    pub admin: Option<SocketAddr>,
    pub fingerprint: Fingerprint,
    pub token: Secret,
    pub cancel: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

pub fn relay_config(data_dir: &Path) -> RelayConfig {
    RelayConfig {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        public_bind: "127.0.0.1".parse().expect("literal address"),
        data_dir: data_dir.to_path_buf(),
        token: Some(Secret::new("test-token-0123456789")),
        grace_period: Duration::from_secs(2),
        admin_listen: Some("127.0.0.1:0".parse().expect("literal address")),
        ..RelayConfig::default()
    }
}

impl TestRelay {
    pub async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(relay_config(data_dir)).await
    }

    pub async fn start_with(config: RelayConfig) -> anyhow::Result<Self> {
        let token = config.token.clone().context("test relays have a configured token")?;
        Self::run(Relay::open(config).await?, token)
    }

    /// Runs a relay bound by the caller, who may keep handles to it (its reloader, its HTTP
    /// ports) first.
    pub fn run(relay: Relay, token: Secret) -> anyhow::Result<Self> {
        let cancel = CancellationToken::new();
        Ok(Self {
            addr: relay.local_addr()?,
            admin: relay.admin_addr(),
            fingerprint: relay.fingerprint(),
            token,
            task: tokio::spawn(relay.run(cancel.clone())),
            cancel,
        })
    }

    /// A plan that reaches this relay with the right token and pin.
    pub fn plan(&self, tunnels: Vec<TunnelPlan>) -> Plan {
        let config = AgentConfig { reconnect_max_delay: Duration::from_millis(400), ..AgentConfig::default() };
        let mut plan = Plan::new(&config, self.relay_addr(), Trust::Pinned(self.fingerprint), self.token.clone());
        plan.tunnels = tunnels;
        plan
    }

    pub fn relay_addr(&self) -> RelayAddr {
        RelayAddr { host: self.addr.ip().to_string(), port: self.addr.port() }
    }

    /// Stops the relay and checks that `run` ended cleanly.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        tokio::time::timeout(STEP, self.task).await.context("relay did not stop")???;
        Ok(())
    }
}

pub fn tunnel(name: &str, local: SocketAddr) -> TunnelPlan {
    TunnelPlan::tcp(name, LocalTarget { host: local.ip().to_string(), port: local.port() })
}

/// A UDP tunnel to the local service at `local`, on a port the relay picks.
pub fn udp_tunnel(name: &str, local: SocketAddr) -> TunnelPlan {
    TunnelPlan::udp(name, LocalTarget { host: local.ip().to_string(), port: local.port() })
}

pub struct TestAgent {
    pub status: watch::Receiver<Status>,
    pub cancel: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl TestAgent {
    pub fn spawn(plan: Plan) -> Self {
        let (tx, status) = watch::channel(Status::Connecting);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(agent::run(plan, tx, cancel.clone()));
        Self { status, cancel, task }
    }

    /// Starts an agent and waits until its tunnels are online.
    pub async fn start(plan: Plan) -> anyhow::Result<(Self, Vec<PublicTunnel>)> {
        let mut agent = Self::spawn(plan);
        let tunnels = agent.online().await?;
        Ok((agent, tunnels))
    }

    /// Waits for the next Online status (the current one counts).
    pub async fn online(&mut self) -> anyhow::Result<Vec<PublicTunnel>> {
        let waited = tokio::time::timeout(STEP, self.status.wait_for(|s| matches!(s, Status::Online(_))))
            .await
            .context("agent did not come online")?
            .map(|status| status.clone());
        match waited {
            Ok(Status::Online(tunnels)) => Ok(tunnels),
            Ok(other) => anyhow::bail!("unexpected status {other:?}"),
            // The agent's run ended: report why.
            Err(_) => match (&mut self.task).await? {
                Ok(()) => anyhow::bail!("agent stopped before coming online"),
                Err(e) => Err(e.context("agent stopped before coming online")),
            },
        }
    }

    /// Waits for the agent's run to end and returns its result.
    pub async fn finished(self) -> anyhow::Result<anyhow::Result<()>> {
        Ok(tokio::time::timeout(STEP, self.task).await.context("agent did not finish")??)
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.finished().await?
    }

    /// Ends the agent at once without a word to the relay, as `kill -9` does.
    pub async fn kill(self) {
        self.task.abort();
        // The task's end is known: it was cancelled (or had already returned).
        self.task.await.ok();
    }
}

/// The relay's refusal that ended an agent's run, if that is what ended it.
pub fn refusal(err: &anyhow::Error) -> Option<&Refusal> {
    err.downcast_ref::<Refusal>()
}

pub fn public_addr(tunnel: &PublicTunnel) -> SocketAddr {
    SocketAddr::new(tunnel.host.parse().expect("test relays publish IP hosts"), tunnel.port)
}
