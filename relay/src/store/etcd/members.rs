//! The fleet's members: each relay registers itself under its lease (so a relay that stops or
//! is cut off leaves the roster with its lease), and each Welcome lists the others, for the
//! agent to open a session with every one of them.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use burrow_common::{FleetMember, sync};
use etcd_client::GetOptions;
use serde::{Deserialize, Serialize};

use super::{Etcd, error::StoreError};

/// How long a read of the roster serves Welcomes before it is read again: relays join and
/// leave in minutes, and a burst of reconnecting agents then costs one read, not thousands.
const FRESH_FOR: Duration = Duration::from_secs(2);

/// A relay as it registers itself in `members/<lease>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Member {
    /// Its DNS names, for people reading etcd.
    pub(crate) hostname: Vec<String>,
    /// Unix seconds it started at.
    pub(crate) started: u64,
    /// Where agents reach it; `None` keeps it out of Welcomes.
    pub(crate) agents: Option<String>,
    pub(crate) fingerprint: String,
    pub(crate) zone: Option<String>,
}

impl Member {
    /// A member that offers no agent address, named `hostname`.
    #[cfg(test)]
    pub(crate) fn named(hostname: &str) -> Self {
        Self { hostname: vec![hostname.into()], started: 0, agents: None, fingerprint: String::new(), zone: None }
    }

    pub(super) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn offered(self) -> Option<FleetMember> {
        Some(FleetMember { addr: self.agents?, fingerprint: self.fingerprint, zone: self.zone })
    }
}

/// The members with an agent address, by lease.
type Listed = Vec<(i64, FleetMember)>;

/// The last roster read, shared by the Welcomes of a few seconds.
#[derive(Default)]
pub(super) struct Roster {
    last: Mutex<Option<(Instant, Listed)>>,
}

impl Roster {
    /// The members agents may link to besides the relay holding `own` lease. An unreadable
    /// roster gives the last one read: a Welcome never fails for it.
    pub(super) async fn others(&self, etcd: &Etcd, own: Option<i64>) -> Vec<FleetMember> {
        let cached = sync::lock(&self.last).as_ref().filter(|(at, _)| at.elapsed() < FRESH_FOR).map(|(_, m)| m.clone());
        let members = match cached {
            Some(members) => members,
            None => match read(etcd).await {
                Ok(members) => {
                    *sync::lock(&self.last) = Some((Instant::now(), members.clone()));
                    members
                }
                Err(e) => {
                    tracing::debug!("reading the fleet's members failed: {e:#}");
                    sync::lock(&self.last).as_ref().map(|(_, m)| m.clone()).unwrap_or_default()
                }
            },
        };
        members.into_iter().filter(|(lease, _)| Some(*lease) != own).map(|(_, member)| member).collect()
    }
}

/// Every registered member with an agent address, by lease.
async fn read(etcd: &Etcd) -> Result<Listed, StoreError> {
    let records = etcd.get_prefix(&etcd.keys.members(), GetOptions::new()).await?;
    Ok(records
        .iter()
        .filter_map(|kv| {
            let member: Member = serde_json::from_slice(kv.value()).ok()?;
            Some((kv.lease(), member.offered()?))
        })
        .collect())
}
