//! The other relays of the dialed relay's fleet. Its Welcome lists them; the agent keeps a
//! session with each as well, up to `max_relays` in all, asking each for the same tunnels:
//! the relays share one store, so each finds the tunnel's port or name there and opens it
//! too. A visitor is carried by the relay it reached, so losing a relay loses only the
//! visitors it carried, and the others go on serving while it comes back.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use burrow_common::{FleetMember, tls::Trust};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{FirstContact, Plan, Status, config::RelayAddr, keep_up};

/// Where the dialed relay's Welcomes publish the others.
pub type Roster = Arc<watch::Sender<Vec<FleetMember>>>;

/// The sessions with the fleet's other relays, one task each.
pub(crate) struct Members {
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Members {
    /// Gives `plan` a roster its Welcomes fill, and follows it until [`Members::stop`].
    pub(crate) fn start(plan: &mut Plan, cancel: &CancellationToken) -> Self {
        let members = Self { tasks: TaskTracker::new(), cancel: cancel.child_token() };
        if plan.max_relays > 1 {
            let (roster, listed) = watch::channel(Vec::new());
            plan.roster = Some(Arc::new(roster));
            let follow = follow(plan.clone(), listed, members.tasks.clone(), members.cancel.clone());
            members.tasks.spawn(follow);
        }
        members
    }

    /// Ends every member session, each telling its relay the agent left.
    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Starts a session with each relay the roster lists, as far as `max_relays` goes, and ends
/// those it no longer lists: the dialed relay may now be one of them (a name that resolves to
/// any relay of the fleet), or they left the fleet.
async fn follow(
    plan: Plan,
    mut listed: watch::Receiver<Vec<FleetMember>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
) {
    let mut running: HashMap<FleetMember, CancellationToken> = HashMap::new();
    let others = usize::from(plan.max_relays.saturating_sub(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = listed.changed() => if changed.is_err() { return },
        }
        let chosen = choose(&listed.borrow_and_update(), others);
        running.retain(|member, session| {
            let kept = chosen.contains(member);
            if !kept {
                tracing::info!(relay = %member.addr, "no longer in the fleet the relay lists; ending its session");
                session.cancel();
            }
            kept
        });
        for member in chosen {
            if running.contains_key(&member) {
                continue;
            }
            let Some(member_plan) = plan_for(&plan, &member) else { continue };
            tracing::info!(relay = %member.addr, "the relay's fleet lists this relay too; opening a session with it");
            let session = cancel.child_token();
            tasks.spawn(keep_member(member_plan, session.clone()));
            running.insert(member, session);
        }
    }
}

/// Up to `max` of `members`, one per zone before a second in any: with fewer sessions than
/// relays, losing one data centre then loses as few of them as it can.
fn choose(members: &[FleetMember], max: usize) -> Vec<FleetMember> {
    let mut by_zone: BTreeMap<Option<&str>, Vec<&FleetMember>> = BTreeMap::new();
    for member in members {
        by_zone.entry(member.zone.as_deref()).or_default().push(member);
    }
    let mut queues: Vec<_> = by_zone
        .into_values()
        .map(|mut zone| {
            zone.sort_by(|a, b| a.addr.cmp(&b.addr));
            zone.into_iter()
        })
        .collect();
    let mut chosen = Vec::new();
    while chosen.len() < max {
        let round: Vec<_> = queues.iter_mut().filter_map(Iterator::next).collect();
        if round.is_empty() {
            break;
        }
        chosen.extend(round.into_iter().take(max - chosen.len()).cloned());
    }
    chosen
}

/// The dialed relay's plan, pointed at `member`: trusted by the fingerprint its fleet gave
/// when the dialed relay was pinned, by the same CA otherwise.
fn plan_for(plan: &Plan, member: &FleetMember) -> Option<Plan> {
    let relay: RelayAddr = match member.addr.parse() {
        Ok(relay) => relay,
        Err(e) => {
            tracing::warn!("the relay's fleet lists a relay the agent cannot dial: {e}");
            return None;
        }
    };
    let trust = match &plan.trust {
        Trust::Pinned(_) => match member.fingerprint.parse() {
            Ok(fingerprint) => Trust::Pinned(fingerprint),
            Err(e) => {
                tracing::warn!(relay = %member.addr, "the relay's fleet lists a relay with {e}");
                return None;
            }
        },
        other => other.clone(),
    };
    let stats = plan.stats.for_member(&member.addr);
    Some(Plan { relay, trust, stats, roster: None, max_relays: 1, ..plan.clone() })
}

/// One member's session, dialed again with backoff whenever it ends. Nothing it meets ends
/// the agent: the dialed relay decides that (a revoked token reaches it too).
async fn keep_member(plan: Plan, cancel: CancellationToken) {
    let relay = plan.relay.to_string();
    let stats = plan.stats.clone();
    let (status, statuses) = watch::channel(Status::Connecting);
    tokio::select! {
        () = keep_member_up(&plan, &status, &cancel) => {}
        never = report_online(statuses, &relay) => match never {},
    }
    stats.stopped(None);
}

/// Says when the tunnels are served through the member too, as the dialed relay's session
/// prints its addresses.
async fn report_online(mut statuses: watch::Receiver<Status>, relay: &str) -> std::convert::Infallible {
    while statuses.changed().await.is_ok() {
        if let Status::Online(tunnels) = &*statuses.borrow_and_update() {
            tracing::info!(relay, tunnels = tunnels.len(), "serving through this relay of the fleet too");
        }
    }
    std::future::pending().await
}

async fn keep_member_up(plan: &Plan, status: &watch::Sender<Status>, cancel: &CancellationToken) {
    let relay = plan.relay.to_string();
    loop {
        let span = tracing::info_span!("fleet", relay = %relay);
        let kept = keep_up(plan.clone(), status.clone(), cancel.clone(), FirstContact::Retries).instrument(span).await;
        let Err(e) = kept else { break };
        let retry_in = plan.reconnect_max_delay.max(Duration::from_secs(1));
        tracing::warn!(relay = %relay, "the session with this relay of the fleet ended: {e:#}; trying it again in {retry_in:?}");
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(retry_in) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(addr: &str, zone: Option<&str>) -> FleetMember {
        FleetMember { addr: addr.into(), fingerprint: String::new(), zone: zone.map(Into::into) }
    }

    #[test]
    fn members_are_chosen_across_zones_before_a_second_in_any() {
        let members = [
            member("a1:1", Some("a")),
            member("a2:1", Some("a")),
            member("a3:1", Some("a")),
            member("b1:1", Some("b")),
            member("c1:1", Some("c")),
        ];
        let addrs = |chosen: Vec<FleetMember>| chosen.into_iter().map(|m| m.addr).collect::<Vec<_>>();
        assert_eq!(addrs(choose(&members, 3)), ["a1:1", "b1:1", "c1:1"]);
        assert_eq!(addrs(choose(&members, 4)), ["a1:1", "b1:1", "c1:1", "a2:1"]);
        assert_eq!(addrs(choose(&members, 10)).len(), 5);
        assert!(choose(&members, 0).is_empty());
    }

    #[test]
    fn unlabelled_members_are_chosen_in_address_order() {
        let members = [member("r3:1", None), member("r1:1", None), member("r2:1", None)];
        let chosen: Vec<_> = choose(&members, 2).into_iter().map(|m| m.addr).collect();
        assert_eq!(chosen, ["r1:1", "r2:1"]);
    }
}
