//! What the admin API shows of the traffic: computed when asked for, under one short lock.

use std::{collections::HashMap, net::SocketAddr, sync::atomic::Ordering};

use serde::Serialize;

use super::Traffic;
use crate::claims::{ClaimState, TunnelKey};

#[derive(Serialize)]
pub(crate) struct TunnelView {
    pub(crate) name: String,
    pub(crate) token: String,
    pub(crate) port: u16,
    /// An HTTP or TLS tunnel's public address; its port is 0.
    pub(crate) url: Option<String>,
    pub(crate) state: &'static str,
    pub(crate) open_visitors: usize,
    pub(crate) visitors_total: u64,
    pub(crate) bytes_visitor_to_local: u64,
    pub(crate) bytes_local_to_visitor: u64,
}

#[derive(Serialize)]
pub(crate) struct VisitorView {
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) token: String,
    pub(crate) tunnel: String,
    pub(crate) port: u16,
    pub(crate) opened_at: u64,
    /// Carried so far.
    pub(crate) bytes_visitor_to_local: u64,
    pub(crate) bytes_local_to_visitor: u64,
}

impl Traffic {
    /// The tunnels the claims table holds now (`claimed`), by token and name, with the
    /// bytes their open visitors have carried so far.
    pub(crate) fn tunnels(&self, claimed: &[(TunnelKey, ClaimState)]) -> Vec<TunnelView> {
        let mut state = self.state();
        self.catch_up_in(&mut state);
        let mut open = HashMap::<&TunnelKey, usize>::new();
        for visitor in state.open.values() {
            *open.entry(&visitor.tunnel.key).or_default() += 1;
        }
        // A tunnel that moved to another kind of place may be parked on the old one while it
        // serves on the new: it is serving.
        let mut claims = HashMap::<&TunnelKey, ClaimState>::new();
        for (key, claim) in claimed {
            let now = claims.entry(key).or_insert(*claim);
            *now = (*now).max(*claim);
        }
        let mut views: Vec<_> = claims
            .into_iter()
            .filter_map(|(key, claim)| {
                let held = state.tunnels.get(key)?;
                Some(TunnelView {
                    name: key.tunnel.clone(),
                    token: key.token.clone(),
                    port: held.port,
                    url: held.url.clone(),
                    state: claim.as_str(),
                    open_visitors: open.get(key).copied().unwrap_or(0),
                    visitors_total: held.tunnel.visitors.load(Ordering::Relaxed),
                    bytes_visitor_to_local: held.tunnel.bytes.to_local.get(),
                    bytes_local_to_visitor: held.tunnel.bytes.to_visitor.get(),
                })
            })
            .collect();
        views.sort_by(|a, b| (&a.token, &a.name).cmp(&(&b.token, &b.name)));
        views
    }

    /// Visitors being carried now, oldest first.
    pub(crate) fn visitors(&self) -> Vec<VisitorView> {
        let state = self.state();
        let mut views: Vec<_> = state
            .open
            .iter()
            .map(|(id, v)| {
                let (to_local, to_visitor) = v.progress.moved();
                VisitorView {
                    id: *id,
                    peer: v.peer,
                    token: v.tunnel.key.token.clone(),
                    tunnel: v.tunnel.key.tunnel.clone(),
                    port: v.port,
                    opened_at: v.opened_at,
                    bytes_visitor_to_local: to_local,
                    bytes_local_to_visitor: to_visitor,
                }
            })
            .collect();
        views.sort_by_key(|v| v.id);
        views
    }
}
