//! etcd for the tests of a fleet of relays: Debian's etcd as a one-node cluster on free
//! loopback ports, killed when the [`Etcd`] value is dropped. Its data lives in `/dev/shm`
//! where there is one: etcd 3.4 cannot skip its fsyncs, and a disk makes them slow.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use testkit::etcd::Etcd;
//! if !Etcd::available()? {
//!     return Ok(()); // said why on stdout
//! }
//! let etcd = Etcd::start().await?;
//! // A relay's store: `store.url = etcd.url()`.
//! # Ok(()) }
//! ```
//!
//! [`Etcd::start_in`] runs it inside a network namespace instead (the fault suite's VPS),
//! answering on several client addresses, so that each client can be cut off on its own.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use anyhow::Context;
use tempfile::TempDir;

use crate::{
    STEP,
    daemon::{Daemon, free_tcp_ports, on_free_ports},
    processes::required,
};

/// How often readiness is polled while etcd starts.
const POLL: Duration = Duration::from_millis(50);

pub struct Etcd {
    daemon: Option<Daemon>,
    dir: TempDir,
    /// Where clients connect; the first is [`Etcd::endpoint`].
    clients: Vec<SocketAddr>,
    peer: SocketAddr,
    /// The network namespace etcd runs in, or `None` for this one.
    namespace: Option<String>,
}

impl Etcd {
    /// Whether etcd is installed; says so on stdout when it is not, or is an error where the
    /// environment requires it ([`crate::processes::REQUIRE_ENV`]).
    pub fn available() -> anyhow::Result<bool> {
        required("etcd")
    }

    /// Starts etcd on free loopback ports and returns once it has a leader; on new ports
    /// when a test beside this one took one between the pick and etcd's bind.
    pub async fn start() -> anyhow::Result<Self> {
        on_free_ports(|| async {
            let dir = tempfile::Builder::new().prefix("burrow-etcd-").tempdir_in(data_root())?;
            let [client, peer] = free_tcp_ports().await?;
            let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
            Self::launch(dir, vec![loopback(client)], loopback(peer), None).await
        })
        .await
    }

    /// Starts etcd inside the network namespace `namespace` (`/run/netns/NAME`), answering
    /// on each of `clients`, and returns once it has a leader (checked with `curl` there).
    pub async fn start_in(namespace: &str, clients: &[SocketAddr], peer: SocketAddr) -> anyhow::Result<Self> {
        anyhow::ensure!(!clients.is_empty(), "etcd needs a client address");
        let dir = tempfile::Builder::new().prefix("burrow-etcd-").tempdir_in(data_root())?;
        Self::launch(dir, clients.to_vec(), peer, Some(namespace.to_string())).await
    }

    async fn launch(
        dir: TempDir,
        clients: Vec<SocketAddr>,
        peer: SocketAddr,
        namespace: Option<String>,
    ) -> anyhow::Result<Self> {
        let mut etcd = Self { daemon: None, dir, clients, peer, namespace };
        etcd.restart().await?;
        Ok(etcd)
    }

    /// `IP:PORT`, where clients connect (the first address etcd answers on).
    pub fn endpoint(&self) -> String {
        self.clients[0].to_string()
    }

    /// The relay's `store.url` for this etcd's `n`th client address.
    pub fn url_at(&self, n: usize) -> anyhow::Result<String> {
        let client = self.clients.get(n).with_context(|| format!("etcd has no client address {n}"))?;
        Ok(format!("etcd://{client}"))
    }

    /// The relay's `store.url` for this etcd.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoint())
    }

    /// Kills etcd at once (SIGKILL), keeping its data.
    pub fn kill(&mut self) {
        self.daemon.take();
    }

    /// Starts etcd again on its data and ports (or for the first time), and returns once it
    /// has a leader.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let client = format!("http://{}", self.endpoint());
        let clients: Vec<String> = self.clients.iter().map(|c| format!("http://{c}")).collect();
        let peer = format!("http://{}", self.peer);
        let mut command = self.command("etcd");
        command.args(["--name", "burrow-test", "--data-dir"]).arg(self.dir.path().join("data"));
        command.args(["--listen-client-urls", &clients.join(","), "--advertise-client-urls", &client]);
        command.args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer]);
        command.args(["--initial-cluster", &format!("burrow-test={peer}")]);
        command.args(["--logger", "zap", "--log-level", "warn"]);
        let daemon = self.daemon.insert(Daemon::start("etcd", command, self.dir.path())?);
        let health = format!("{client}/health");
        let probe = match &self.namespace {
            None => Probe::Http,
            Some(namespace) => Probe::Curl(namespace.clone()),
        };
        let ready = tokio::time::timeout(STEP, ready(daemon, &health, &probe)).await;
        ready.context("etcd not ready in time").and_then(|ready| ready).with_context(|| daemon.log_text())
    }

    /// `program` run where etcd runs.
    fn command(&self, program: &str) -> Command {
        match &self.namespace {
            None => Command::new(program),
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace, program]);
                command
            }
        }
    }
}

/// Where etcd's data goes: memory where there is some, since etcd 3.4 cannot skip its fsyncs.
fn data_root() -> std::path::PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() }
}

/// How etcd's health page is read: from this network namespace, or with `curl` run inside
/// etcd's own.
enum Probe {
    Http,
    Curl(String),
}

impl Probe {
    async fn healthy(&self, health: &str) -> bool {
        let body = match self {
            Probe::Http => match reqwest::get(health).await {
                Ok(answer) => answer.bytes().await.ok().map(|b| b.to_vec()),
                Err(_) => None,
            },
            Probe::Curl(namespace) => tokio::process::Command::new("ip")
                .args(["netns", "exec", namespace, "curl", "-s", "--max-time", "1", health])
                .output()
                .await
                .ok()
                .filter(|out| out.status.success())
                .map(|out| out.stdout),
        };
        body.and_then(|body| serde_json::from_slice::<serde_json::Value>(&body).ok())
            .is_some_and(|health| health["health"] == "true")
    }
}

/// Polls `/health` until it says `true`, which it does only once the cluster has a leader.
async fn ready(daemon: &mut Daemon, health: &str, probe: &Probe) -> anyhow::Result<()> {
    loop {
        daemon.alive()?;
        if probe.healthy(health).await {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}
