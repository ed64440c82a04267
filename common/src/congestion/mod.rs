//! The congestion controller of every link: Cubic that does not back off at random loss.
//!
//! One link carries all of an agent's visitors under one congestion window. With plain Cubic
//! every loss halves it, congestion or not, so on a path losing 1 % of packets a whole
//! session got what one TCP connection gets (a few Mbit/s at 50 ms), shared by all its
//! visitors. [`TolerantCubic`] is Cubic whose window is not cut for a loss that
//! [`random_loss`] judges random: one taken while the round trips show no standing queue
//! and the loss rate stays low. Congestion still cuts: a filling queue raises the round
//! trips first. Slow start ends when the round trips rise (as in HyStart), not at the
//! first random loss, and while they show no queue the window grows faster than Cubic's
//! curve. Persistent congestion collapses the window as in Cubic and forgets the
//! round-trip floor, so a path that became slower is judged by its new round trips.
//!
//! quinn's BBR, the other controller that ignores random loss, never recovers when the
//! round trip grows during a connection: it re-reads its minimum RTT from quinn's
//! estimator, whose minimum never rises, so its window stays one old, tiny
//! bandwidth-delay product.

mod cubic;
mod random_loss;

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};

use cubic::CubicWindow;
use random_loss::RandomLossFilter;

/// While the round trips show no queue, the window grows by at least 1/this of itself per
/// round trip, whatever Cubic's curve says: after a cut the path is known to be emptier than
/// the window, and Cubic's curve takes seconds to climb back (the idea of quicly's ABBA).
/// The queue this overshoot builds is an eighth of a window at most before the round trips
/// show it and the growth stops.
const EMPTY_QUEUE_GROWTH: u64 = 8;

/// Builds a [`TolerantCubic`] for each connection.
#[derive(Debug, Clone)]
pub struct TolerantCubicConfig {
    initial_window: u64,
}

impl TolerantCubicConfig {
    /// A controller starting with `initial_window` bytes allowed in flight.
    pub fn new(initial_window: u64) -> Self {
        Self { initial_window }
    }
}

impl ControllerFactory for TolerantCubicConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(TolerantCubic::new(self.initial_window, now, current_mtu))
    }
}

/// Cubic that keeps its window through losses that look random (see the module's doc).
#[derive(Debug, Clone)]
pub struct TolerantCubic {
    initial_window: u64,
    cubic: CubicWindow,
    losses: RandomLossFilter,
    mtu: u64,
    /// Losses let pass without a cut, for tests and diagnosis.
    random_losses: u64,
}

impl TolerantCubic {
    fn new(initial_window: u64, _now: Instant, mtu: u16) -> Self {
        Self {
            initial_window,
            cubic: CubicWindow::new(initial_window, mtu),
            losses: RandomLossFilter::default(),
            mtu: u64::from(mtu),
            random_losses: 0,
        }
    }

    /// Losses this controller judged random and did not cut the window for.
    pub fn random_losses(&self) -> u64 {
        self.random_losses
    }

    /// The smallest recent round trip, the floor losses are judged against.
    pub fn rtt_floor(&self) -> Option<Duration> {
        self.losses.floor()
    }

    fn acked(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, srtt: Duration) {
        self.losses.on_ack(now, sent, bytes, srtt);
        self.cubic.on_ack(now, sent, bytes, app_limited, srtt);
        if app_limited || self.cubic.sent_before_recovery(sent) || self.losses.floor().is_none() {
            return;
        }
        if self.losses.queue_is_empty() {
            self.cubic.grow_beyond_cubic(bytes / EMPTY_QUEUE_GROWTH);
        } else {
            self.cubic.end_slow_start();
        }
    }

    fn lost(&mut self, now: Instant, sent: Instant, persistent: bool, lost_bytes: u64) {
        if persistent {
            self.losses.forget_floor();
        } else if self.losses.is_random(lost_bytes, self.mtu) {
            self.random_losses += 1;
            return;
        }
        self.cubic.on_congestion(now, sent, persistent);
    }
}

impl Controller for TolerantCubic {
    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &quinn_proto::RttEstimator) {
        self.acked(now, sent, bytes, app_limited, rtt.get());
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, persistent: bool, lost_bytes: u64) {
        self.lost(now, sent, persistent, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu);
        self.cubic.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.cubic.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = ControllerMetrics::default();
        metrics.congestion_window = self.cubic.window();
        metrics.ssthresh = Some(self.cubic.ssthresh());
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.initial_window
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests;
