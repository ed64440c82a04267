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

use std::{path::Path, process::Command, time::Duration};

use anyhow::Context;
use tempfile::TempDir;

use crate::{
    STEP,
    daemon::{Daemon, free_tcp_ports},
    processes::required,
};

/// How often readiness is polled while etcd starts.
const POLL: Duration = Duration::from_millis(50);

pub struct Etcd {
    daemon: Option<Daemon>,
    dir: TempDir,
    client: u16,
    peer: u16,
}

impl Etcd {
    /// Whether etcd is installed; says so on stdout when it is not, or is an error where the
    /// environment requires it ([`crate::processes::REQUIRE_ENV`]).
    pub fn available() -> anyhow::Result<bool> {
        required("etcd")
    }

    /// Starts etcd and returns once it has a leader.
    pub async fn start() -> anyhow::Result<Self> {
        let shm = Path::new("/dev/shm");
        let builder = tempfile::Builder::new().prefix("burrow-etcd-").to_owned();
        let dir = if shm.is_dir() { builder.tempdir_in(shm)? } else { builder.tempdir()? };
        let [client, peer] = free_tcp_ports().await?;
        let mut etcd = Self { daemon: None, dir, client, peer };
        etcd.restart().await?;
        Ok(etcd)
    }

    /// `127.0.0.1:PORT`, where clients connect.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
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
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let mut command = Command::new("etcd");
        command.args(["--name", "burrow-test", "--data-dir"]).arg(self.dir.path().join("data"));
        command.args(["--listen-client-urls", &client, "--advertise-client-urls", &client]);
        command.args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer]);
        command.args(["--initial-cluster", &format!("burrow-test={peer}")]);
        command.args(["--logger", "zap", "--log-level", "warn"]);
        let daemon = self.daemon.insert(Daemon::start("etcd", command, self.dir.path())?);
        let ready = tokio::time::timeout(STEP, ready(daemon, &client)).await;
        ready.context("etcd not ready in time").and_then(|ready| ready).with_context(|| daemon.log_text())
    }
}

/// Polls `/health` until it says `true`, which it does only once the cluster has a leader.
async fn ready(daemon: &mut Daemon, client: &str) -> anyhow::Result<()> {
    let health = format!("{client}/health");
    loop {
        daemon.alive()?;
        if let Ok(answer) = reqwest::get(&health).await
            && let Ok(body) = answer.bytes().await
            && serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|health| health["health"] == "true")
        {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}
