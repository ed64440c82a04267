//! Cubic's window arithmetic (RFC 9438), as quinn's `Cubic` does it, on plain durations so
//! that a controller can decide *whether* to react to a loss before this reacts to it.

use std::time::{Duration, Instant};

/// Multiplicative decrease at a congestion event (RFC 9438 section 4.6).
const BETA: f64 = 0.7;
/// How fast the window grows away from the last congestion event (RFC 9438 section 5).
const C: f64 = 0.4;

#[derive(Debug, Clone)]
pub(super) struct CubicWindow {
    window: u64,
    ssthresh: u64,
    /// When the current recovery period began; losses of packets sent before it belong to
    /// the congestion event already reacted to.
    recovery_start: Option<Instant>,
    /// The window before the last reduction, and the time Cubic takes to grow back to it.
    w_max: f64,
    k: f64,
    /// Growth earned but not yet applied: the window grows one datagram at a time.
    pending_growth: u64,
    mtu: u64,
}

impl CubicWindow {
    pub(super) fn new(initial_window: u64, mtu: u16) -> Self {
        Self {
            window: initial_window,
            ssthresh: u64::MAX,
            recovery_start: None,
            w_max: 0.0,
            k: 0.0,
            pending_growth: 0,
            mtu: u64::from(mtu),
        }
    }

    pub(super) fn window(&self) -> u64 {
        self.window
    }

    pub(super) fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    pub(super) fn minimum_window(&self) -> u64 {
        2 * self.mtu
    }

    pub(super) fn on_mtu_update(&mut self, mtu: u16) {
        self.mtu = u64::from(mtu);
        self.window = self.window.max(self.minimum_window());
    }

    /// Whether a packet sent at `sent` was sent before the current recovery period began.
    pub(super) fn sent_before_recovery(&self, sent: Instant) -> bool {
        self.recovery_start.is_some_and(|start| sent <= start)
    }

    pub(super) fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, srtt: Duration) {
        if app_limited || self.sent_before_recovery(sent) {
            return;
        }
        if self.window < self.ssthresh {
            self.window += bytes;
            return;
        }
        let epoch_start = *self.recovery_start.get_or_insert_with(|| {
            // Congestion avoidance reached without a loss: the curve starts here.
            self.w_max = self.window as f64;
            self.k = 0.0;
            now
        });
        let target = self.target(now - epoch_start, srtt);
        self.pending_growth += target.saturating_sub(self.window);
        // At most one datagram per acknowledgement (RFC 9002 section 7.3.3).
        if self.pending_growth >= self.mtu {
            self.window += self.mtu;
            self.pending_growth = 0;
        }
    }

    /// Ends slow start at the current window: round trips show the path is full.
    pub(super) fn end_slow_start(&mut self) {
        if self.window < self.ssthresh {
            self.ssthresh = self.window;
        }
    }

    /// Grows the window in congestion avoidance by `bytes` on top of Cubic's own growth.
    pub(super) fn grow_beyond_cubic(&mut self, bytes: u64) {
        if self.window >= self.ssthresh {
            self.window += bytes;
        }
    }

    /// The window Cubic aims for `t` after the start of the epoch.
    fn target(&self, t: Duration, srtt: Duration) -> u64 {
        let mtu = self.mtu as f64;
        let w_max = self.w_max / mtu;
        let w_cubic = (C * (t.as_secs_f64() + srtt.as_secs_f64() - self.k).powi(3) + w_max) * mtu;
        let reno_friendly =
            (w_max * BETA + 3.0 * (1.0 - BETA) / (1.0 + BETA) * t.as_secs_f64() / srtt.as_secs_f64()) * mtu;
        if w_cubic < reno_friendly {
            self.window.max(reno_friendly as u64)
        } else if (self.window as f64) < w_cubic {
            let increment = (w_cubic - self.window as f64) / self.window as f64 * mtu;
            // After a long lossless period the curve passes u64::MAX.
            self.window.saturating_add(increment as u64)
        } else {
            self.window
        }
    }

    /// Reacts to a congestion event whose newest lost packet was sent at `sent`.
    pub(super) fn on_congestion(&mut self, now: Instant, sent: Instant, persistent: bool) {
        if self.sent_before_recovery(sent) && !persistent {
            return;
        }
        self.recovery_start = Some(now);
        let window = self.window as f64;
        // Fast convergence (RFC 9438 section 4.7): yield sooner to a newcomer.
        self.w_max = if window < self.w_max { window * (1.0 + BETA) / 2.0 } else { window };
        self.ssthresh = self.decreased(self.window);
        self.window = self.ssthresh;
        self.k = (self.w_max / self.mtu as f64 * (1.0 - BETA) / C).cbrt();
        self.pending_growth = (self.pending_growth as f64 * BETA) as u64;
        if persistent {
            // RFC 9002 section 7.6.2: back to the minimum window; slow start up to half.
            self.recovery_start = None;
            self.w_max = self.window as f64;
            self.ssthresh = self.decreased(self.window);
            self.pending_growth = 0;
            self.window = self.minimum_window();
        }
    }

    /// `window` after one multiplicative decrease, never under the minimum window.
    fn decreased(&self, window: u64) -> u64 {
        ((window as f64 * BETA) as u64).max(self.minimum_window())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u16 = 1200;
    const RTT: Duration = Duration::from_millis(50);

    #[test]
    fn slow_start_grows_by_what_is_acknowledged() {
        let now = Instant::now();
        let mut cubic = CubicWindow::new(12_000, MTU);
        cubic.on_ack(now + RTT, now, 1200, false, RTT);
        assert_eq!(cubic.window(), 13_200);
        cubic.on_ack(now + RTT, now, 1200, true, RTT);
        assert_eq!(cubic.window(), 13_200, "an application-limited ack proves nothing about the path");
    }

    /// A window of `window` bytes just after one congestion event, and when it happened.
    fn cut_once(window: u64, persistent: bool) -> (CubicWindow, Instant) {
        let now = Instant::now();
        let mut cubic = CubicWindow::new(window, MTU);
        cubic.on_congestion(now, now, persistent);
        (cubic, now)
    }

    #[test]
    fn a_congestion_event_cuts_once_per_recovery_period() {
        let (mut cubic, now) = cut_once(100_000, false);
        assert_eq!(cubic.window(), 70_000);
        cubic.on_congestion(now + RTT / 2, now - RTT, false);
        assert_eq!(cubic.window(), 70_000, "a packet sent before the recovery began is the same event");
        cubic.on_congestion(now + RTT * 2, now + RTT, false);
        assert_eq!(cubic.window(), 49_000);
    }

    #[test]
    fn persistent_congestion_falls_to_the_minimum_window() {
        let (cubic, _) = cut_once(100_000, true);
        assert_eq!(cubic.window(), cubic.minimum_window());
        assert_eq!(cubic.ssthresh(), 49_000);
    }

    #[test]
    fn congestion_avoidance_climbs_back_toward_the_old_window() {
        let (mut cubic, start) = cut_once(120_000, false);
        let cut = cubic.window();
        let mut now = start;
        for _ in 0..2000 {
            now += Duration::from_millis(1);
            cubic.on_ack(now, now - RTT, 1200, false, RTT);
        }
        assert!(cubic.window() > cut, "{} after 2 s", cubic.window());
        assert!(cubic.window() <= 120_000 + 20 * 1200, "{} after 2 s", cubic.window());
    }
}
