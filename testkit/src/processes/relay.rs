//! The compiled relay, launched and known by its ready file.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Context;
use burrow_common::{Fingerprint, ready::RelayReady};
use tokio::process::Command;

use super::{AgentBinary, Binary, ReadyFile, agent_bin, relay_bin};
use crate::{STEP, admin};

pub struct RelayBinary {
    pub process: Binary,
    /// Everything the relay said in its ready file.
    pub ready: RelayReady,
    pub addr: SocketAddr,
    pub fingerprint: Fingerprint,
    _ready_file: ReadyFile,
    _data_dir: Option<tempfile::TempDir>,
}

impl RelayBinary {
    /// `relay` serving on loopback ephemeral ports with its data in `data_dir`, logging
    /// warnings only; add flags (`--admin-listen`, `--domain`, ...) and start it with
    /// [`RelayBinary::launch`].
    pub fn loopback_command(data_dir: &Path) -> anyhow::Result<Command> {
        let mut command = Command::new(relay_bin()?);
        command.env("RUST_LOG", "warn").args(["--listen", "127.0.0.1:0", "--public-bind", "127.0.0.1"]);
        command.arg("--data-dir").arg(data_dir);
        Ok(command)
    }

    /// Starts `command` (the relay serving, flags but no subcommand) with a ready file, and
    /// returns once the relay has written it.
    pub async fn launch(command: &mut Command) -> anyhow::Result<Self> {
        let ready_file = ReadyFile::new()?;
        let mut process = Binary::start(command.arg("--ready-file").arg(ready_file.path()))?;
        let ready: RelayReady = ready_file.wait(&mut process).await?;
        let (addr, fingerprint) = (ready.quic, ready.fingerprint);
        Ok(Self { process, ready, addr, fingerprint, _ready_file: ready_file, _data_dir: None })
    }

    /// Starts `relay` on loopback with a fresh data directory and its admin endpoint on;
    /// `env` sets further keys, such as `BURROW_RELAY_MAX_VISITORS_PER_IP`.
    pub async fn start(env: &[(&str, String)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut command = Self::loopback_command(dir.path())?;
        command.envs(env.iter().map(|(k, v)| (k, v))).args(["--admin-listen", "127.0.0.1:0"]);
        let relay = Self::launch(&mut command).await?;
        Ok(Self { _data_dir: Some(dir), ..relay })
    }

    /// The token the relay made at this start (a fresh data directory and no configured
    /// token).
    pub fn token(&self) -> anyhow::Result<&str> {
        self.ready.token.as_deref().context("this relay made no token at its start")
    }

    pub fn admin(&self) -> anyhow::Result<SocketAddr> {
        self.ready.admin.context("this relay's admin endpoint is off")
    }

    /// `agent` against this relay with its new token, exposing `local`, logging warnings.
    pub fn agent_command(&self, local: SocketAddr) -> anyhow::Result<Command> {
        let mut command = Command::new(agent_bin()?);
        command.env("BURROW_TOKEN", self.token()?).env("RUST_LOG", "warn");
        command.args(["--relay", &self.addr.to_string(), "--fingerprint", &self.fingerprint.to_string()]);
        command.args(["--local", &local.to_string()]);
        Ok(command)
    }

    /// Starts an `agent` exposing `local` through this relay, over QUIC only; returns it and
    /// the public address of its tunnel. The tests that use it count QUIC's work (Retries,
    /// session budgets) with the relay under load, where the agent's race could go to TLS
    /// over TCP; that race has tests of its own (agent/tests/transport.rs, the fault suite).
    pub async fn agent(&self, local: SocketAddr) -> anyhow::Result<(AgentBinary, SocketAddr)> {
        let mut command = self.agent_command(local)?;
        let agent = AgentBinary::launch(command.args(["--inspect", "off", "--transport", "quic"])).await?;
        let public = agent.public_addr()?;
        Ok((agent, public))
    }

    /// The relay's memory (KiB) once it is at most `bound`, or when `within` ends: the
    /// allocator returns freed pages about a second after the load that used them.
    pub async fn memory_back_under(&self, bound: u64, within: Duration) -> anyhow::Result<u64> {
        let deadline = std::time::Instant::now() + within;
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        loop {
            pace.tick().await;
            let rss = self.process.vm_rss_kib()?;
            if rss <= bound || std::time::Instant::now() > deadline {
                return Ok(rss);
            }
        }
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = admin::get(self.admin()?, "/metrics", None).await?;
        anyhow::ensure!(status == 200, "metrics answered {status}");
        Ok(body)
    }

    /// The metrics page once `series` reads `value`.
    pub async fn settled(&self, series: &str, value: f64) -> anyhow::Result<String> {
        self.until(series, |v| v == value).await.with_context(|| format!("{series} did not settle at {value}"))
    }

    /// The metrics page once the value of `series` passes `test`.
    pub async fn until(&self, series: &str, test: impl Fn(f64) -> bool) -> anyhow::Result<String> {
        let wait = async {
            loop {
                let page = self.metrics().await?;
                if admin::sample(&page, series).is_some_and(&test) {
                    return anyhow::Ok(page);
                }
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(STEP, wait).await.with_context(|| format!("waiting on {series}"))?
    }
}
