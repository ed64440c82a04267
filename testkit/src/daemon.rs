//! One of the environment's two programs: started with its output in a log file, killed
//! (and reaped) when dropped.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::Context;

use super::PebbleOptions;

pub(super) struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// challtestsrv with only its DNS server (every A query answered with 127.0.0.1, no
    /// AAAA so validation stays on IPv4 loopback) and its management API, both on loopback;
    /// its own HTTP-01, HTTPS and TLS-ALPN-01 responders are off (the relay answers those).
    pub(super) fn challtestsrv(dir: &Path, dns: SocketAddr, api: SocketAddr) -> anyhow::Result<Self> {
        let mut command = Command::new("pebble-challtestsrv");
        command.args(["-dns01", &dns.to_string(), "-management", &api.to_string()]);
        command.args(["-http01", "", "-https01", "", "-tlsalpn01", ""]);
        command.args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]);
        Self::start("pebble-challtestsrv", command, dir)
    }

    /// Pebble resolving through `dns`, validating at once (`PEBBLE_VA_NOSLEEP`) and never
    /// rejecting a good nonce, so a test's timing and request count are its client's own.
    pub(super) fn pebble(dir: &Path, config: &Path, dns: SocketAddr, options: &PebbleOptions) -> anyhow::Result<Self> {
        let mut command = Command::new("pebble");
        command.arg("-config").arg(config).args(["-dnsserver", &dns.to_string()]);
        command.env("PEBBLE_VA_NOSLEEP", "1").env("PEBBLE_WFE_NONCEREJECT", "0");
        command.env("PEBBLE_AUTHZREUSE", options.authz_reuse_percent.to_string());
        Self::start("pebble", command, dir)
    }

    fn start(name: &'static str, mut command: Command, dir: &Path) -> anyhow::Result<Self> {
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
    pub(super) fn alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => anyhow::bail!("{} exited ({status}):\n{}", self.name, self.log_text()),
        }
    }

    pub(super) fn log(&self) -> &Path {
        &self.log
    }

    pub(super) fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(unreadable: {e})"));
        format!("{} log ({}):\n{text}", self.name, self.log.display())
    }

    /// How many lines of the log contain `marker`.
    pub(super) fn lines_with(&self, marker: &str) -> anyhow::Result<usize> {
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
