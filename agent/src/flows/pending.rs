//! Datagrams for flows not known yet. The relay opens a flow's stream and sends its first
//! datagram at once; the datagram can arrive first (it is not held behind the stream's
//! handshake, and may come on another link), so it waits here a little for its flow.

use std::{collections::VecDeque, time::Duration};

use bytes::Bytes;
use tokio::time::Instant;

/// Datagrams kept for one flow: enough for a handshake's first flight (a DTLS or QUIC
/// client's first packets, a WireGuard initiation and its retry).
pub(crate) const PER_FLOW: usize = 8;
/// Datagrams kept for all flows: a burst of new visitors, not a flood of strays.
pub(crate) const IN_ALL: usize = 256;
/// A stream later than this is not coming; the visitor's client will retry anyway.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(2);

/// Oldest first, so expiry and eviction take from the front.
#[derive(Default)]
pub(crate) struct Pending {
    waiting: VecDeque<Waiting>,
}

struct Waiting {
    flow: u64,
    arrived: Instant,
    payload: Bytes,
}

impl Pending {
    /// Keeps `payload` for `flow`; returns how many datagrams were dropped to stay within
    /// bounds (expired ones, the oldest, or this one when its flow has its share already).
    pub(crate) fn push(&mut self, flow: u64, payload: Bytes, now: Instant) -> usize {
        let mut dropped = self.expire(now);
        if self.waiting.iter().filter(|w| w.flow == flow).count() >= PER_FLOW {
            return dropped + 1;
        }
        if self.waiting.len() >= IN_ALL {
            self.waiting.pop_front();
            dropped += 1;
        }
        self.waiting.push_back(Waiting { flow, arrived: now, payload });
        dropped
    }

    /// Takes the datagrams that waited for `flow`, oldest first, and how many expired
    /// datagrams (of any flow) were dropped meanwhile.
    pub(crate) fn take(&mut self, flow: u64, now: Instant) -> (Vec<Bytes>, usize) {
        let expired = self.expire(now);
        let mut taken = Vec::new();
        self.waiting.retain_mut(|w| {
            let ours = w.flow == flow;
            if ours {
                taken.push(std::mem::take(&mut w.payload));
            }
            !ours
        });
        (taken, expired)
    }

    fn expire(&mut self, now: Instant) -> usize {
        let before = self.waiting.len();
        while self.waiting.front().is_some_and(|w| now.saturating_duration_since(w.arrived) > MAX_AGE) {
            self.waiting.pop_front();
        }
        before - self.waiting.len()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(n: usize) -> Bytes {
        Bytes::from(n.to_string())
    }

    #[test]
    fn a_flow_gets_its_own_datagrams_in_order() {
        let (mut pending, now) = (Pending::default(), Instant::now());
        for n in 0..3 {
            assert_eq!(pending.push(7, payload(n), now), 0);
            assert_eq!(pending.push(9, payload(10 + n), now), 0);
        }
        assert_eq!(pending.take(7, now), (vec![payload(0), payload(1), payload(2)], 0));
        assert_eq!(pending.take(7, now), (Vec::new(), 0), "taken once");
        assert_eq!(pending.len(), 3, "the other flow's stay");
    }

    #[test]
    fn a_flow_keeps_at_most_its_share_the_first_ones() {
        let (mut pending, now) = (Pending::default(), Instant::now());
        let dropped: usize = (0..PER_FLOW + 3).map(|n| pending.push(1, payload(n), now)).sum();
        assert_eq!(dropped, 3);
        assert_eq!(pending.take(1, now).0, (0..PER_FLOW).map(payload).collect::<Vec<_>>());
    }

    #[test]
    fn many_flows_share_the_bound_and_the_oldest_go_first() {
        let (mut pending, now) = (Pending::default(), Instant::now());
        let flows = (IN_ALL + 10) as u64;
        let dropped: usize = (1..=flows).map(|flow| pending.push(flow, payload(flow as usize), now)).sum();
        assert_eq!((dropped, pending.len()), (10, IN_ALL));
        assert_eq!(pending.take(1, now).0, Vec::<Bytes>::new(), "the oldest was evicted");
        assert_eq!(pending.take(flows, now).0, vec![payload(flows as usize)]);
    }

    #[test]
    fn datagrams_older_than_the_limit_are_dropped_not_delivered() {
        let (mut pending, start) = (Pending::default(), Instant::now());
        pending.push(1, payload(1), start);
        pending.push(2, payload(2), start + Duration::from_secs(1));
        let later = start + MAX_AGE + Duration::from_millis(1);
        assert_eq!(pending.take(1, later), (Vec::new(), 1), "flow 1's came too long ago");
        assert_eq!(pending.push(3, payload(3), later + Duration::from_secs(1)), 1, "flow 2's expires on the next push");
        assert_eq!(pending.len(), 1);
    }
}
