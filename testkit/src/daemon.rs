//! A program a test environment runs beside the test (Pebble, challtestsrv, etcd): started
//! with its output in a log file, killed (and reaped) when dropped.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::Context;
use tokio::net::TcpListener;

pub(crate) struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `command` as `name`, its output in `dir/NAME.log`.
    pub(crate) fn start(name: &'static str, mut command: Command, dir: &Path) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        Ok(Self { name, child, log })
    }

    /// An error, quoting the log, once the program has exited.
    pub(crate) fn alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => anyhow::bail!("{} exited ({status}):\n{}", self.name, self.log_text()),
        }
    }

    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    pub(crate) fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(unreadable: {e})"));
        format!("{} log ({}):\n{text}", self.name, self.log.display())
    }

    /// How many lines of the log contain `marker`.
    pub(crate) fn lines_with(&self, marker: &str) -> anyhow::Result<usize> {
        let text = std::fs::read_to_string(&self.log).with_context(|| format!("read {}", self.log.display()))?;
        Ok(text.lines().filter(|line| line.contains(marker)).count())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // An error means it has exited already; waiting reaps it either way.
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// How many times a daemon on ports picked free is started: a port picked free is free for
/// anyone until the daemon binds it, and the tests beside this one pick ports too.
const PORT_RACE_ATTEMPTS: usize = 3;

/// Runs `start` (which picks free ports and starts a daemon on them) again, up to
/// [`PORT_RACE_ATTEMPTS`] in all, while it fails because a port it picked was taken before
/// the daemon bound it: its log, quoted in the error, says so.
pub(crate) async fn on_free_ports<T, F, Started>(mut start: F) -> anyhow::Result<T>
where
    F: FnMut() -> Started,
    Started: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut attempt = 1;
    loop {
        match start().await {
            Err(error) if attempt < PORT_RACE_ATTEMPTS && format!("{error:#}").contains("address already in use") => {
                attempt += 1
            }
            started => return started,
        }
    }
}

/// Loopback TCP ports free a moment ago, distinct: all are held until all are picked.
pub(crate) async fn free_tcp_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let mut held = Vec::with_capacity(N);
    for _ in 0..N {
        held.push(TcpListener::bind("127.0.0.1:0").await?);
    }
    let ports: Vec<u16> = held.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?;
    ports.try_into().map_err(|_| anyhow::anyhow!("{N} ports"))
}
