//! Bytes per second, from the change of the totals between two snapshots at least a second
//! apart, so a redraw soon after another does not show a jittery rate.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::snapshot::Snapshot;

const WINDOW: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(crate) struct Rates {
    /// Totals at the start of the current window.
    base: Option<(Instant, Totals)>,
    tunnels: HashMap<String, (f64, f64)>,
    path: (f64, f64),
}

#[derive(Default)]
struct Totals {
    tunnels: HashMap<String, (u64, u64)>,
    path: (u64, u64),
}

impl Totals {
    fn of(now: &Snapshot) -> Self {
        Self {
            tunnels: now.tunnels.iter().map(|t| (t.name.clone(), (t.to_local, t.to_visitor))).collect(),
            path: now.path.as_ref().map_or((0, 0), |p| (p.sent_bytes, p.received_bytes)),
        }
    }
}

impl Rates {
    pub(crate) fn update(&mut self, now: &Snapshot, at: Instant) {
        let totals = Totals::of(now);
        let Some((since, base)) = &self.base else {
            self.base = Some((at, totals));
            return;
        };
        let elapsed = at.saturating_duration_since(*since);
        if elapsed < WINDOW {
            return;
        }
        let per_second = |before: u64, after: u64| after.saturating_sub(before) as f64 / elapsed.as_secs_f64();
        let pair =
            |before: (u64, u64), after: (u64, u64)| (per_second(before.0, after.0), per_second(before.1, after.1));
        self.tunnels = totals
            .tunnels
            .iter()
            .map(|(name, after)| (name.clone(), pair(base.tunnels.get(name).copied().unwrap_or(*after), *after)))
            .collect();
        // A new session starts its counters at zero; that is no negative rate.
        self.path = pair(base.path, totals.path);
        self.base = Some((at, totals));
    }

    /// Bytes per second to the local server and to visitors.
    pub(crate) fn tunnel(&self, name: &str) -> (f64, f64) {
        self.tunnels.get(name).copied().unwrap_or_default()
    }

    /// UDP bytes per second sent to and received from the relay.
    pub(crate) fn path(&self) -> (f64, f64) {
        self.path
    }
}
