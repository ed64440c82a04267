//! The environment's two programs, as [`Daemon`]s.

use std::{net::SocketAddr, path::Path, process::Command};

use super::PebbleOptions;
use crate::daemon::Daemon;

impl Daemon {
    /// challtestsrv with only its DNS server (every A query answered with 127.0.0.1, no
    /// AAAA so validation stays on IPv4 loopback) and its management API, both on loopback;
    /// its own HTTP-01, HTTPS and TLS-ALPN-01 responders are off (the relay answers those).
    pub(crate) fn challtestsrv(dir: &Path, dns: SocketAddr, api: SocketAddr) -> anyhow::Result<Self> {
        let mut command = Command::new("pebble-challtestsrv");
        command.args(["-dns01", &dns.to_string(), "-management", &api.to_string()]);
        command.args(["-http01", "", "-https01", "", "-tlsalpn01", ""]);
        command.args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]);
        Self::start("pebble-challtestsrv", command, dir)
    }

    /// Pebble resolving through `dns`, validating at once (`PEBBLE_VA_NOSLEEP`) and never
    /// rejecting a good nonce, so a test's timing and request count are its client's own.
    pub(crate) fn pebble(dir: &Path, config: &Path, dns: SocketAddr, options: &PebbleOptions) -> anyhow::Result<Self> {
        let mut command = Command::new("pebble");
        command.arg("-config").arg(config).args(["-dnsserver", &dns.to_string()]);
        command.env("PEBBLE_VA_NOSLEEP", "1").env("PEBBLE_WFE_NONCEREJECT", "0");
        command.env("PEBBLE_AUTHZREUSE", options.authz_reuse_percent.to_string());
        Self::start("pebble", command, dir)
    }
}
