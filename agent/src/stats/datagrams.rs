//! A UDP flow's packets and the ones it lost, counted where they cross; its bytes are in its
//! record's [`Progress`](burrow_common::splice::Progress), as a TCP visitor's are.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// Counters of one open flow, or of a tunnel's ended flows.
#[derive(Debug, Default)]
pub(crate) struct Datagrams {
    to_local: AtomicU64,
    to_visitor: AtomicU64,
    oversize: AtomicU64,
    queue_full: AtomicU64,
    local_unreachable: AtomicU64,
}

/// Why a flow's packet did not cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// The local service's packet is larger than a link datagram takes now: it would have
    /// to be fragmented, which a tunnel never does.
    Oversize,
    /// The local socket's send buffer was full: the local service does not keep up.
    QueueFull,
    /// Nothing listens at the local port (ICMP port unreachable); the flow goes on, as the
    /// service may be restarting.
    LocalUnreachable,
}

impl Datagrams {
    pub(crate) fn to_local(&self) {
        self.to_local.fetch_add(1, Relaxed);
    }

    pub(crate) fn to_visitor(&self) {
        self.to_visitor.fetch_add(1, Relaxed);
    }

    pub(crate) fn dropped(&self, why: Dropped) {
        let counter = match why {
            Dropped::Oversize => &self.oversize,
            Dropped::QueueFull => &self.queue_full,
            Dropped::LocalUnreachable => &self.local_unreachable,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Moves an ended flow's counts into its tunnel's.
    pub(crate) fn add_to(&self, total: &Datagrams) {
        for (from, to) in [
            (&self.to_local, &total.to_local),
            (&self.to_visitor, &total.to_visitor),
            (&self.oversize, &total.oversize),
            (&self.queue_full, &total.queue_full),
            (&self.local_unreachable, &total.local_unreachable),
        ] {
            to.fetch_add(from.load(Relaxed), Relaxed);
        }
    }

    pub(crate) fn view(&self) -> DatagramsView {
        DatagramsView {
            to_local: self.to_local.load(Relaxed),
            to_visitor: self.to_visitor.load(Relaxed),
            oversize: self.oversize.load(Relaxed),
            queue_full: self.queue_full.load(Relaxed),
            local_unreachable: self.local_unreachable.load(Relaxed),
        }
    }
}

/// Packets of a UDP flow or tunnel, as the console and the inspector show them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatagramsView {
    /// Packets from visitors delivered to the local service.
    pub to_local: u64,
    /// Packets from the local service sent on to visitors.
    pub to_visitor: u64,
    /// Dropped: larger than a link datagram takes now.
    pub oversize: u64,
    /// Dropped: the local socket's send buffer was full.
    pub queue_full: u64,
    /// Dropped: nothing listened at the local port.
    pub local_unreachable: u64,
}

impl DatagramsView {
    pub fn dropped(&self) -> u64 {
        self.oversize + self.queue_full + self.local_unreachable
    }

    pub(crate) fn plus(self, other: Self) -> Self {
        Self {
            to_local: self.to_local + other.to_local,
            to_visitor: self.to_visitor + other.to_visitor,
            oversize: self.oversize + other.oversize,
            queue_full: self.queue_full + other.queue_full,
            local_unreachable: self.local_unreachable + other.local_unreachable,
        }
    }
}
