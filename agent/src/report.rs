//! Output for a pipe, a file or a service manager: no redraws, just lines. Stdout gets one
//! line per tunnel, `tunnel NAME: tcp://HOST:PORT -> LOCAL` (`udp://` for a UDP tunnel), which scripts parse; the rest
//! goes to the log (text or JSON), including a traffic summary while traffic flows.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{PublicTunnel, Status, snapshot::Snapshot, stats::Stats};

/// How often a tunnel that carried something since the last summary logs one.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// What the command line set up around the session, for both kinds of output.
pub(crate) struct Setup {
    /// The relay runs inside this agent (no `--relay`).
    pub(crate) embedded: bool,
    /// This machine's LAN addresses, where an embedded relay's ports are reachable too.
    pub(crate) also_on: Vec<IpAddr>,
    /// The inspector's URL, if it is listening.
    pub(crate) inspector: Option<String>,
}

pub(crate) async fn run(mut status: watch::Receiver<Status>, stats: Stats, setup: Setup, done: CancellationToken) {
    if setup.embedded {
        eprintln!("no --relay given: serving the tunnels from this machine (public ports on all interfaces)");
    }
    if let Some(url) = &setup.inspector {
        println!("inspector: {url}");
    }
    let mut shown = Vec::new();
    let mut summary = tokio::time::interval(SUMMARY_EVERY);
    summary.tick().await;
    let mut summarised = HashMap::new();
    loop {
        tokio::select! {
            _ = done.cancelled() => break,
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = status.borrow_and_update().clone();
                if let Status::Online(tunnels) = current {
                    announce(&tunnels, &mut shown, &setup.also_on, &stats.snapshot());
                }
            }
            _ = summary.tick() => summarise(&stats.snapshot(), &mut summarised),
        }
    }
}

/// Prints each tunnel's public address whenever the set of tunnels changes.
fn announce(tunnels: &[PublicTunnel], shown: &mut Vec<PublicTunnel>, also_on: &[IpAddr], now: &Snapshot) {
    let remote = now.path.as_ref().map(|p| p.remote.to_string()).unwrap_or_default();
    let rtt_ms = now.path.as_ref().map_or(0.0, |p| p.rtt_ms);
    tracing::info!(relay = %now.relay, %remote, rtt_ms, tunnels = tunnels.len(), "session online");
    if tunnels == shown.as_slice() {
        tracing::info!("reconnected; same public addresses");
        return;
    }
    for tunnel in tunnels {
        println!("tunnel {}: {tunnel}", tunnel.name);
        for url in tunnel.urls.iter().skip(1) {
            println!("  also reachable at {url}");
        }
        // The LAN addresses of the embedded relay serve its public ports; HTTP tunnels are
        // reached by name.
        for ip in also_on.iter().filter(|_| tunnel.urls.is_empty()) {
            let ip = if ip.is_ipv6() { format!("[{ip}]") } else { ip.to_string() };
            println!("  also reachable at {}://{ip}:{}", tunnel.port_scheme(), tunnel.port);
        }
    }
    *shown = tunnels.to_vec();
}

/// Logs the counters of each tunnel that carried something since the last summary.
fn summarise(now: &Snapshot, last: &mut HashMap<String, (u64, u64, u64)>) {
    for tunnel in &now.tunnels {
        let counts = (tunnel.total, tunnel.to_local, tunnel.to_visitor);
        if last.insert(tunnel.name.clone(), counts).unwrap_or_default() == counts {
            continue;
        }
        let rtt_ms = now.path.as_ref().map_or(0.0, |p| p.rtt_ms);
        let (open, total, failed) = (tunnel.open, tunnel.total, tunnel.failed);
        let (to_local, to_visitor) = (tunnel.to_local, tunnel.to_visitor);
        match &tunnel.udp {
            None => tracing::info!(tunnel = %tunnel.name, open, total, failed, to_local, to_visitor, rtt_ms, "traffic"),
            Some(udp) => {
                let packets = &udp.packets;
                tracing::info!(
                    tunnel = %tunnel.name,
                    flows_open = open,
                    flows_total = total,
                    to_local,
                    to_visitor,
                    packets_to_local = packets.to_local,
                    packets_to_visitor = packets.to_visitor,
                    dropped_oversize = packets.oversize,
                    dropped_queue_full = packets.queue_full,
                    dropped_local_unreachable = packets.local_unreachable,
                    rtt_ms,
                    "traffic"
                );
            }
        }
    }
}
