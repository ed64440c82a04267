//! Telling a random loss from a congestion loss.
//!
//! A bottleneck drops packets when its queue is full, and a full queue shows as round trips
//! above the path's floor. A loss while the round trips sit at the floor (no standing queue)
//! came from elsewhere: a radio, a lossy link. Cubic halves its window at either, so on a
//! path losing 1 % of packets it never gets past a few Mbit/s however fast the path is.
//!
//! A loss counts as random only while both hold:
//! - the smallest round trip of the last two rounds is within [`queue_tolerance`] of the
//!   floor, the smallest smoothed round trip of the last 10 to 20 s;
//! - the last two rounds lost at most [`LOSS_RATE_CAP`] of their bytes, or at most
//!   [`FEW_LOSSES`] datagrams. On a bottleneck whose queue is too short to show in the round
//!   trips, this still makes the sender back off once it causes more loss than the path had.
//!
//! Persistent congestion forgets the floor (RFC 9002 section 5.2): a path that got slower
//! for good is then judged by its new round trips, not by the old minimum.

use std::time::{Duration, Instant};

/// The share of a round's bytes that may be lost at random before losses count as
/// congestion whatever the round trips say.
pub(super) const LOSS_RATE_CAP: f64 = 0.03;
/// Losses in two rounds that never count as a high loss rate: a small window loses whole
/// percents to a single datagram. At 1 % random loss, two rounds of 100 datagrams lose more
/// than 4 once in 300 tries; with 2, a window cut to a few dozen datagrams was cut again
/// and again by chance (measured: 100 Mbit/s down to 4 within seconds).
pub(super) const FEW_LOSSES: u64 = 4;
/// How long a floor sample lasts: long enough to outlive a standing queue's swings, short
/// enough that a path whose round trip grew is judged by its new one within a minute.
pub(super) const FLOOR_WINDOW: Duration = Duration::from_secs(10);

/// The standing queue that still counts as none: the larger of 2 ms (timer and scheduling
/// noise) and an eighth of the floor (jitter grows with distance).
pub(super) fn queue_tolerance(floor: Duration) -> Duration {
    (floor / 8).max(Duration::from_millis(2))
}

#[derive(Debug, Clone, Copy, Default)]
struct Round {
    min_rtt: Option<Duration>,
    acked: u64,
    lost: u64,
}

#[derive(Debug, Clone, Default)]
pub(super) struct RandomLossFilter {
    /// The smallest round trip of the current and the previous [`FLOOR_WINDOW`].
    floor: [Option<Duration>; 2],
    floor_window_start: Option<Instant>,
    /// The current and the previous round (one smoothed round trip each).
    rounds: [Round; 2],
    round_start: Option<Instant>,
}

fn min_of(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl RandomLossFilter {
    /// Takes the acknowledgement of `bytes` sent at `sent`, and the smoothed round trip.
    ///
    /// The floor is the smallest *smoothed* round trip: quinn stamps a whole batch of
    /// received datagrams with the time the batch began, so on a busy host single samples
    /// come out short, and one such sample (37 ms on a 50 ms path) as the floor made every
    /// later round trip look like a queue for as long as the floor lasted. The recent round
    /// trip is the smallest single sample of two rounds: a queue that stands delays them all,
    /// while jitter of the path or of a busy host does not.
    pub(super) fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, srtt: Duration) {
        self.advance(now, srtt);
        let sample = now.saturating_duration_since(sent);
        self.rounds[0].min_rtt = min_of(self.rounds[0].min_rtt, Some(sample));
        self.rounds[0].acked += bytes;
        self.floor[0] = min_of(self.floor[0], Some(srtt));
    }

    /// Takes a loss of `lost_bytes` and says whether it looks random. A loss of nothing is
    /// an ECN congestion mark, never random.
    pub(super) fn is_random(&mut self, lost_bytes: u64, mtu: u64) -> bool {
        self.rounds[0].lost += lost_bytes;
        let random = lost_bytes > 0 && self.queue_is_empty() && !self.loss_rate_is_high(mtu);
        tracing::trace!(
            random,
            floor = ?self.floor(),
            recent = ?min_of(self.rounds[0].min_rtt, self.rounds[1].min_rtt),
            lost = self.rounds[0].lost + self.rounds[1].lost,
            acked = self.rounds[0].acked + self.rounds[1].acked,
            "loss"
        );
        random
    }

    /// After persistent congestion: the old floor may belong to a path that is gone.
    pub(super) fn forget_floor(&mut self) {
        self.floor = [None, None];
        self.floor_window_start = None;
        self.rounds = Default::default();
        self.round_start = None;
    }

    pub(super) fn floor(&self) -> Option<Duration> {
        min_of(self.floor[0], self.floor[1])
    }

    /// Whether the last two rounds' round trips show no standing queue.
    pub(super) fn queue_is_empty(&self) -> bool {
        let recent = min_of(self.rounds[0].min_rtt, self.rounds[1].min_rtt);
        match (self.floor(), recent) {
            (Some(floor), Some(recent)) => recent <= floor + queue_tolerance(floor),
            _ => false,
        }
    }

    fn loss_rate_is_high(&self, mtu: u64) -> bool {
        let lost: u64 = self.rounds.iter().map(|r| r.lost).sum();
        let sent = lost + self.rounds.iter().map(|r| r.acked).sum::<u64>();
        lost > FEW_LOSSES * mtu && lost as f64 > LOSS_RATE_CAP * sent as f64
    }

    fn advance(&mut self, now: Instant, srtt: Duration) {
        let round_start = *self.round_start.get_or_insert(now);
        if now.saturating_duration_since(round_start) >= srtt {
            // A round with no acknowledgement at all left nothing worth keeping.
            let idle = now.saturating_duration_since(round_start) >= 2 * srtt;
            self.rounds = [Round::default(), if idle { Round::default() } else { self.rounds[0] }];
            self.round_start = Some(now);
        }
        let window_start = *self.floor_window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(window_start);
        if elapsed >= FLOOR_WINDOW {
            self.floor = [None, if elapsed >= 2 * FLOOR_WINDOW { None } else { self.floor[0] }];
            self.floor_window_start = Some(now);
        }
    }
}
