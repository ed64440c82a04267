//! The `agent` command line.

use std::{net::IpAddr, path::PathBuf};

use burrow_common::Secret;
use clap::{Args, Parser};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    Plan, Status,
    config::{AgentConfig, LocalTarget, TunnelConfig},
    embedded,
};

/// burrow agent: makes a local server reachable through a burrow relay.
///
/// With no --relay, a relay runs inside the agent and the local server becomes reachable on
/// this machine's addresses.
#[derive(Debug, Parser)]
#[command(name = "agent", version)]
pub struct Cli {
    /// Local server to expose: PORT or HOST:PORT (host defaults to 127.0.0.1)
    #[arg(long, value_name = "PORT|HOST:PORT")]
    pub local: Option<LocalTarget>,
    /// Public port to ask the relay for [default: one the relay picks]
    #[arg(long, value_name = "PORT", requires = "local")]
    pub remote_port: Option<u16>,
    /// Tunnel name; keeps the same public port across reconnects [default: tcp-<local port>]
    #[arg(long, requires = "local")]
    pub name: Option<String>,
    /// TOML config file with [[tunnels]] (see deploy/agent.toml)
    #[arg(long, short, env = "BURROW_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub flags: Flags,
}

/// Flags that override the config file and environment (same key names).
#[derive(Debug, Default, Args, Serialize)]
pub struct Flags {
    /// Relay address: HOST or HOST:PORT [default port: 4443]
    #[arg(long, value_name = "HOST[:PORT]")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// Agent token (prefer BURROW_TOKEN or the config file: arguments are visible to other users)
    #[arg(long, value_name = "TOKEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Trust the relay whose certificate has this fingerprint (as the relay prints it)
    #[arg(long, value_name = "sha256:HEX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Trust relays whose certificate chains to a CA in this PEM file
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Do not check the relay's certificate at all (local experiments only)
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = AgentConfig::load(cli.config.as_deref(), &cli.flags)?;
    if let Some(local) = cli.local {
        config.tunnels.push(TunnelConfig { name: cli.name, local, remote_port: cli.remote_port });
    }
    let cancel = CancellationToken::new();
    burrow_common::signal::cancel_on_signal(cancel.clone());
    let (status, watcher) = watch::channel(Status::Connecting);
    match config.relay.clone() {
        Some(relay) => {
            let plan = Plan::for_relay(&config, relay)?;
            tokio::spawn(print_status(watcher, Vec::new()));
            crate::run(plan, status, cancel).await
        }
        None => run_embedded(&config, status, watcher, cancel).await,
    }
}

async fn run_embedded(
    config: &AgentConfig,
    status: watch::Sender<Status>,
    watcher: watch::Receiver<Status>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let (plan, relay) = embedded::prepare(config, embedded::default_data_dir())?;
    eprintln!("no --relay given: serving the tunnels from this machine (public ports on all interfaces)");
    tokio::spawn(print_status(watcher, embedded::lan_addresses()));
    let relay_task = tokio::spawn(relay.run(cancel.clone()));
    let result = crate::run(plan, status, cancel.clone()).await;
    cancel.cancel();
    relay_task.await??;
    result
}

/// Prints each tunnel's public address whenever the set of tunnels changes.
async fn print_status(mut watcher: watch::Receiver<Status>, also_on: Vec<IpAddr>) {
    let mut shown = Vec::new();
    while watcher.changed().await.is_ok() {
        let Status::Online(tunnels) = &*watcher.borrow_and_update() else {
            continue;
        };
        if *tunnels == shown {
            tracing::info!("reconnected; same public addresses");
            continue;
        }
        for tunnel in tunnels {
            println!("tunnel {}: {tunnel}", tunnel.name);
            for ip in &also_on {
                let ip = if ip.is_ipv6() { format!("[{ip}]") } else { ip.to_string() };
                println!("  also reachable at tcp://{ip}:{}", tunnel.port);
            }
        }
        shown = tunnels.clone();
    }
}
