//! Tunnels changed while the agent runs: the config file is watched (and re-read on SIGHUP),
//! and each new tunnel list is applied to the live session as one update, so the tunnels that
//! stay keep their visitors.

use std::path::PathBuf;

use anyhow::Context;
use burrow_common::{
    Granted,
    protocol::conversation::{AgentControl, UpdateAnswer},
    reload::ConfigWatch,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

use crate::{Plan, Status, TunnelPlan, forward::Targets, session};

/// The live tunnels to close and the wanted ones to open; a tunnel whose settings changed is
/// both, since the relay grants a tunnel as a whole.
pub(crate) fn diff(live: &[(TunnelPlan, Granted)], wanted: &[TunnelPlan]) -> (Vec<u32>, Vec<TunnelPlan>) {
    let remove = live.iter().filter(|(tunnel, _)| !wanted.contains(tunnel)).map(|(_, granted)| granted.id).collect();
    let add = wanted.iter().filter(|tunnel| !live.iter().any(|(open, _)| open == *tunnel)).cloned().collect();
    (remove, add)
}

/// Applies every new tunnel list to the session; returns only if the control stream fails.
pub(crate) async fn follow<W, R>(
    plan: &Plan,
    control: &mut AgentControl<W, R>,
    targets: &Targets,
    live: &mut Vec<(TunnelPlan, Granted)>,
    status: &watch::Sender<Status>,
) -> anyhow::Error
where
    W: AsyncWrite + Unpin + Send,
    R: AsyncRead + Unpin + Send,
{
    let Some(mut reloads) = plan.reloads.clone() else {
        return std::future::pending().await;
    };
    // A list that changed while the session was being set up is applied at once.
    reloads.mark_changed();
    loop {
        if reloads.changed().await.is_err() {
            return std::future::pending().await;
        }
        let wanted = reloads.borrow_and_update().clone();
        if let Err(e) = apply(plan, control, targets, live, &wanted).await {
            return e;
        }
        plan.stats.publish(status, Status::Online(session::public(plan, live)));
    }
}

async fn apply<W, R>(
    plan: &Plan,
    control: &mut AgentControl<W, R>,
    targets: &Targets,
    live: &mut Vec<(TunnelPlan, Granted)>,
    wanted: &[TunnelPlan],
) -> anyhow::Result<()>
where
    W: AsyncWrite + Unpin + Send,
    R: AsyncRead + Unpin + Send,
{
    let (remove, add) = diff(live, wanted);
    if remove.is_empty() && add.is_empty() {
        return Ok(());
    }
    // Closed here first, so no new stream reaches a tunnel that is on its way out.
    for id in &remove {
        targets.remove(*id);
    }
    live.retain(|(_, granted)| !remove.contains(&granted.id));
    let UpdateAnswer { granted, refused } =
        control.update(add.iter().map(TunnelPlan::spec).collect(), remove.clone()).await.context("tunnel update")?;
    let opened = granted.len();
    for granted in granted {
        let Some(tunnel) = add.iter().find(|t| t.name == granted.name) else { continue };
        targets.insert(granted.id, session::target(plan, tunnel, &granted, targets));
        live.push((tunnel.clone(), granted));
    }
    for (name, refusal) in &refused {
        tracing::warn!("config reload: tunnel {name:?} not opened: {refusal}");
    }
    tracing::info!(closed = remove.len(), opened, refused = refused.len(), "config reloaded; other tunnels untouched");
    Ok(())
}

/// Re-reads the config file with `load` when it changes or on SIGHUP, and publishes each new
/// tunnel list. A file that no longer loads is reported and the running tunnels are kept.
pub(crate) async fn watch_config(
    path: PathBuf,
    watch: ConfigWatch,
    load: impl Fn() -> anyhow::Result<Vec<TunnelPlan>>,
    lists: watch::Sender<Vec<TunnelPlan>>,
    cancel: CancellationToken,
) {
    watch
        .run(&cancel, || match load() {
            Ok(tunnels) if tunnels.is_empty() => {
                tracing::warn!("{} lists no tunnels now; keeping the running ones", path.display());
            }
            Ok(tunnels) => {
                let changed = lists.send_if_modified(|current| {
                    let differs = *current != tunnels;
                    *current = tunnels;
                    differs
                });
                if !changed {
                    tracing::info!("{} re-read; its tunnels are unchanged", path.display());
                }
            }
            Err(e) => tracing::warn!("config reload failed, running tunnels kept: {e:#}"),
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LocalTarget;

    fn plan(name: &str, port: u16) -> TunnelPlan {
        TunnelPlan::tcp(name, LocalTarget { host: "127.0.0.1".into(), port })
    }

    fn granted(id: u32, name: &str) -> Granted {
        Granted { id, name: name.into(), port: 20000 + id as u16, host: None, urls: Vec::new() }
    }

    #[test]
    fn only_changed_tunnels_are_closed_and_opened() {
        let live = vec![(plan("web", 8080), granted(0, "web")), (plan("ssh", 22), granted(1, "ssh"))];
        let (remove, add) = diff(&live, &[plan("web", 8080), plan("db", 5432)]);
        assert_eq!((remove, add), (vec![1], vec![plan("db", 5432)]));
        let (remove, add) = diff(&live, &[plan("web", 8081), plan("ssh", 22)]);
        assert_eq!((remove, add), (vec![0], vec![plan("web", 8081)]), "a changed tunnel is replaced");
        let (remove, add) = diff(&live, &[plan("ssh", 22), plan("web", 8080)]);
        assert!(remove.is_empty() && add.is_empty(), "order does not matter");
    }
}
