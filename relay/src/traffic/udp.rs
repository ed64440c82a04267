//! What UDP tunnels count beyond bytes (which their flows count as visitors do): datagrams
//! each way and drops by reason, per tunnel, and every drop relay-wide, including those that
//! name no tunnel (a datagram for a flow the relay does not know).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

use super::{Traffic, TunnelBytes};
use crate::{
    claims::TunnelKey,
    metrics::{LOCAL_TO_VISITOR, Reason, VISITOR_TO_LOCAL},
};

/// Why a UDP tunnel's packet was not carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// Larger than the link's datagram room now: never fragmented, never sent on a stream.
    Oversize,
    /// The agent sent it for a flow the relay does not hold (ended, or never opened).
    UnknownFlow,
    /// The flow's queue or the public socket had no room.
    QueueFull,
    /// No session serves the tunnel: its agent is away and the port is kept for it.
    NoSession,
    /// A new flow past the tunnel's or the visitor address's cap.
    FlowLimit,
    /// The agent has not been heard on the flow's link for a second: sent now, the packet
    /// would wait out the outage and arrive stale.
    PathDown,
}

impl Dropped {
    pub(crate) const ALL: [Dropped; 6] = [
        Dropped::Oversize,
        Dropped::UnknownFlow,
        Dropped::QueueFull,
        Dropped::NoSession,
        Dropped::FlowLimit,
        Dropped::PathDown,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Dropped::Oversize => "oversize",
            Dropped::UnknownFlow => "unknown_flow",
            Dropped::QueueFull => "queue_full",
            Dropped::NoSession => "no_session",
            Dropped::FlowLimit => "flow_limit",
            Dropped::PathDown => "path_down",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TunnelDrop {
    token: String,
    tunnel: String,
    reason: &'static str,
}

impl TunnelDrop {
    fn of(key: &TunnelKey, why: Dropped) -> Self {
        Self { token: key.token.clone(), tunnel: key.tunnel.clone(), reason: why.as_str() }
    }
}

/// The UDP series, registered on the metrics page.
#[derive(Default)]
pub(crate) struct UdpSeries {
    pub(crate) datagrams: Family<TunnelBytes, Counter>,
    pub(crate) drops: Family<TunnelDrop, Counter>,
    pub(crate) all_drops: Family<Reason, Counter>,
}

/// One UDP tunnel's counters, handles taken once so the packet path looks nothing up.
#[derive(Clone)]
pub(crate) struct UdpCounts {
    to_local: Counter,
    to_visitor: Counter,
    drops: [Counter; Dropped::ALL.len()],
    all_drops: [Counter; Dropped::ALL.len()],
}

impl UdpCounts {
    pub(crate) fn to_local(&self) {
        self.to_local.inc();
    }

    pub(crate) fn to_visitor(&self) {
        self.to_visitor.inc();
    }

    pub(crate) fn dropped(&self, why: Dropped) {
        self.drops[why as usize].inc();
        self.all_drops[why as usize].inc();
    }
}

impl UdpSeries {
    /// Counts a drop no tunnel can be named for.
    pub(crate) fn dropped(&self, why: Dropped) {
        self.all_drops.get_or_create(&Reason { reason: why.as_str() }).inc();
    }
}

impl Traffic {
    /// The counters of the UDP tunnel `key`.
    pub(crate) fn udp_counts(&self, key: &TunnelKey) -> UdpCounts {
        let series = &self.udp;
        // One statement each: `get_or_create` returns a guard on the family's lock.
        let to_local = series.datagrams.get_or_create(&TunnelBytes::of(key, VISITOR_TO_LOCAL.direction)).clone();
        let to_visitor = series.datagrams.get_or_create(&TunnelBytes::of(key, LOCAL_TO_VISITOR.direction)).clone();
        let drop_of = |why: Dropped| series.drops.get_or_create(&TunnelDrop::of(key, why)).clone();
        let all_of = |why: Dropped| series.all_drops.get_or_create(&Reason { reason: why.as_str() }).clone();
        UdpCounts { to_local, to_visitor, drops: Dropped::ALL.map(drop_of), all_drops: Dropped::ALL.map(all_of) }
    }

    /// Takes a forgotten tunnel's UDP series off the page.
    pub(super) fn forget_udp_series(&self, key: &TunnelKey) {
        for direction in [VISITOR_TO_LOCAL.direction, LOCAL_TO_VISITOR.direction] {
            self.udp.datagrams.remove(&TunnelBytes::of(key, direction));
        }
        for why in Dropped::ALL {
            self.udp.drops.remove(&TunnelDrop::of(key, why));
        }
    }
}
