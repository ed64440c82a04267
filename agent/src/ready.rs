//! The agent's `--ready-file`: written once the first session is online (when the
//! `tunnel NAME: ...` lines are printed), and again whenever the set of tunnels changes, so it
//! always lists what this agent serves.

use std::path::PathBuf;

use anyhow::Context;
use burrow_common::ready::{self, AgentReady, TunnelReady};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{PublicTunnel, Status};

/// Keeps the ready file at `path` current until `cancel`. `template` holds everything but
/// the tunnels. A file that cannot be written ends the agent (through `cancel`): whoever asked
/// for it would otherwise wait for it forever.
pub(crate) async fn run(
    path: PathBuf,
    template: AgentReady,
    mut status: watch::Receiver<Status>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut written: Option<Vec<PublicTunnel>> = None;
    loop {
        let online = match &*status.borrow_and_update() {
            Status::Online(tunnels) if written.as_ref() != Some(tunnels) => Some(tunnels.clone()),
            _ => None,
        };
        if let Some(tunnels) = online {
            let contents = AgentReady { tunnels: tunnels.iter().map(describe).collect(), ..template.clone() };
            if let Err(e) = ready::write(&path, &contents) {
                cancel.cancel();
                return Err(e).context("--ready-file");
            }
            written = Some(tunnels);
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            changed = status.changed() => if changed.is_err() { return Ok(()) },
        }
    }
}

fn describe(tunnel: &PublicTunnel) -> TunnelReady {
    TunnelReady {
        name: tunnel.name.clone(),
        local: tunnel.local.to_string(),
        url: tunnel.url(),
        host: tunnel.host.clone(),
        port: tunnel.port,
        urls: tunnel.urls.clone(),
    }
}
