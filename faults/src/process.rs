//! The compiled relay and agent, run inside the simulation as a user runs them.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

use crate::sim::{Host, RELAY_IP, Sim};

/// Upper bound for a process to print what a test waits for; a hang guard only.
const STARTUP: Duration = Duration::from_secs(30);

/// The token every simulated agent uses.
pub const TOKEN: &str = "fault-suite-token-0123456789";

/// UDP port the simulated relay listens on.
pub const RELAY_PORT: u16 = 4443;

/// Where the relay's admin endpoint listens, inside the relay's namespace.
pub const ADMIN: &str = "127.0.0.1:9470";

/// A process with its stdout lines on a channel and its stderr kept, timestamped, for the
/// assertions that only the process itself can answer (the agent has no metrics endpoint).
pub struct Daemon {
    child: Child,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<Vec<(Instant, String)>>>,
    stderr_reader: tokio::task::JoinHandle<()>,
}

impl Daemon {
    pub fn start(mut command: Command) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start process")?;
        let (lines, stdout) = mpsc::unbounded_channel();
        let out = child.stdout.take().context("stdout is piped")?;
        tokio::spawn(each_line(out, move |line| drop(lines.send(line))));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let log = stderr.clone();
        let err = child.stderr.take().context("stderr is piped")?;
        let stderr_reader = tokio::spawn(each_line(err, move |line| {
            if let Ok(mut log) = log.lock() {
                log.push((Instant::now(), line));
            }
        }));
        Ok(Self { child, stdout, stderr, stderr_reader })
    }

    /// Waits for a stdout line containing `marker` and returns it.
    pub async fn line_with(&mut self, marker: &str) -> anyhow::Result<String> {
        let found = tokio::time::timeout(STARTUP, async {
            while let Some(line) = self.stdout.recv().await {
                if line.contains(marker) {
                    return Some(line);
                }
            }
            None
        });
        match found.await {
            Ok(Some(line)) => Ok(line),
            Ok(None) => anyhow::bail!("stdout ended before a line with {marker:?}; stderr:\n{}", self.stderr_text()),
            Err(_) => anyhow::bail!("no line with {marker:?} in {STARTUP:?}; stderr:\n{}", self.stderr_text()),
        }
    }

    /// Stderr lines containing `marker`, with when they were printed.
    pub fn stderr_lines_with(&self, marker: &str) -> Vec<(Instant, String)> {
        let log = self.stderr.lock().map(|log| log.clone()).unwrap_or_default();
        log.into_iter().filter(|(_, line)| line.contains(marker)).collect()
    }

    pub fn stderr_text(&self) -> String {
        let log = self.stderr.lock().map(|log| log.clone()).unwrap_or_default();
        log.into_iter().map(|(_, line)| line + "\n").collect()
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("the process has exited")
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?))?;
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat.rsplit_once(')').context("stat format")?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11).context("utime")?.parse::<u64>()? + fields.get(12).context("stime")?.parse::<u64>()?;
        let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.context("CLK_TCK")?;
        Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
    }

    /// Ends the process with SIGKILL, as a crash or the OOM killer would.
    pub async fn kill_hard(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("kill -9")
    }

    /// Waits for the process to exit by itself; returns its exit code and all of its stderr.
    pub async fn exit(mut self, within: Duration) -> anyhow::Result<(i32, String)> {
        let status = tokio::time::timeout(within, self.child.wait()).await.context("still running")??;
        tokio::time::timeout(within, &mut self.stderr_reader).await.context("stderr still open")??;
        Ok((status.code().context("ended by a signal")?, self.stderr_text()))
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

async fn each_line(stream: impl AsyncRead + Unpin, mut handle: impl FnMut(String)) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        handle(line);
    }
}

/// A relay on the simulated VPS.
pub struct RelayProcess {
    pub daemon: Daemon,
    pub fingerprint: String,
}

impl RelayProcess {
    /// Starts the relay binary with its data in `data_dir`; `env` adds configuration.
    pub async fn start(sim: &Sim, data_dir: &Path, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut command = sim.command(Host::Relay, &binary("relay")?);
        command
            .env("BURROW_RELAY_TOKEN", TOKEN)
            .envs(env.iter().copied())
            .args(["--listen", &format!("{RELAY_IP}:{RELAY_PORT}"), "--public-bind", &RELAY_IP.to_string()])
            .args(["--admin-listen", ADMIN, "--data-dir"])
            .arg(data_dir);
        let mut daemon = Daemon::start(command)?;
        let line = daemon.line_with("fingerprint").await?;
        let fingerprint = line.split_whitespace().last().context("fingerprint value")?.to_string();
        daemon.line_with("metrics").await?;
        Ok(Self { daemon, fingerprint })
    }
}

/// An agent on the home host exposing `local` (an address on the home host's loopback).
pub struct AgentProcess {
    pub daemon: Daemon,
    /// The public address the relay granted, as a client reaches it.
    pub public: SocketAddr,
}

impl AgentProcess {
    pub async fn start(sim: &Sim, fingerprint: &str, local: SocketAddr, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut daemon = Daemon::start(Self::command(sim, fingerprint, local, env)?)?;
        let line = daemon.line_with("tunnel app:").await?;
        let port = public_port(&line)?;
        Ok(Self { daemon, public: SocketAddr::from((RELAY_IP, port)) })
    }

    /// The agent's command line, for tests that start it their own way; `env` may replace
    /// the token (`BURROW_TOKEN`) and add flags' equivalents.
    pub fn command(sim: &Sim, fingerprint: &str, local: SocketAddr, env: &[(&str, &str)]) -> anyhow::Result<Command> {
        let mut command = sim.command(Host::Home, &binary("agent")?);
        command
            .env("BURROW_TOKEN", TOKEN)
            .envs(env.iter().copied())
            .args(["--relay", &format!("{RELAY_IP}:{RELAY_PORT}"), "--fingerprint", fingerprint])
            .args(["--local", &local.to_string(), "--name", "app"]);
        Ok(command)
    }
}

/// The port in an agent line like `tunnel app: tcp://10.80.0.1:20417 -> 127.0.0.1:8080`.
fn public_port(line: &str) -> anyhow::Result<u16> {
    let address = line.split("tcp://").nth(1).and_then(|rest| rest.split_whitespace().next());
    let port = address.and_then(|a| a.rsplit_once(':')).map(|(_, port)| port);
    port.context("public address in the agent's output")?.parse().with_context(|| format!("port in {line:?}"))
}

/// A binary built by `cargo build --workspace --bins`, next to this test's own directory.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // Test binaries live in target/<profile>/deps; the workspace's binaries one level up.
    let dir = exe.parent().and_then(Path::parent).context("target directory")?;
    let path = dir.join(name);
    anyhow::ensure!(path.exists(), "{} is missing: run `cargo build --workspace --bins` first", path.display());
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_public_port_from_the_agent_line() {
        let line = "tunnel app: tcp://10.80.0.1:20417 -> 127.0.0.1:8080";
        assert_eq!(public_port(line).unwrap(), 20417);
        assert!(public_port("tunnel app: nothing here").is_err());
    }
}
