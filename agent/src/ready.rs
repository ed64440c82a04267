//! The agent's `--ready-file`: written once the first session is online (when the
//! `tunnel NAME: ...` lines are printed), and again whenever the set of tunnels or the number
//! of links up changes, so it always lists what this agent serves and how.

use std::path::PathBuf;

use anyhow::Context;
use burrow_common::ready::{self, AgentReady, TunnelReady};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{PublicTunnel, Status, stats::LinkCount};

/// What the file says beyond the template: the tunnels, and the links up of those wanted.
type Contents = (Vec<PublicTunnel>, LinkCount);

/// Keeps the ready file at `path` current until `cancel`. `template` holds everything but
/// the tunnels and links. A first file that cannot be written ends the agent (through
/// `cancel`): whoever asked for it would otherwise wait for it forever. A later rewrite that
/// fails (its directory removed by whoever read it, say) is only a warning: the agent is
/// serving, and the file is tried again at the next change.
pub(crate) async fn run(
    path: PathBuf,
    template: AgentReady,
    mut status: watch::Receiver<Status>,
    mut links: watch::Receiver<LinkCount>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut written: Option<Contents> = None;
    loop {
        let tunnels = match (&*status.borrow_and_update(), &written) {
            (Status::Online(tunnels), _) => Some(tunnels.clone()),
            // Between sessions the file keeps the last tunnels, with the links as they are.
            (_, Some((tunnels, _))) => Some(tunnels.clone()),
            (_, None) => None,
        };
        let current = tunnels.map(|tunnels| (tunnels, links.borrow_and_update().clone()));
        if let Some(current) = current.filter(|current| written.as_ref() != Some(current)) {
            match ready::write(&path, &contents(&template, &current)) {
                Ok(()) => written = Some(current),
                Err(e) if written.is_none() => {
                    cancel.cancel();
                    return Err(e).context("--ready-file");
                }
                Err(e) => tracing::warn!("--ready-file {} not rewritten: {e:#}", path.display()),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            changed = status.changed() => if changed.is_err() { return Ok(()) },
            changed = links.changed() => if changed.is_err() { return Ok(()) },
        }
    }
}

fn contents(template: &AgentReady, (tunnels, links): &Contents) -> AgentReady {
    AgentReady {
        tunnels: tunnels.iter().map(describe).collect(),
        links_up: links.up,
        links_wanted: links.wanted,
        transport: links.transport.clone(),
        ..template.clone()
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
