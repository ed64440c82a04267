//! Reconnect delays: exponential, capped, with jitter so agents that lost the same relay do
//! not all return in the same instant.

use std::time::Duration;

use rand::Rng;

const FIRST_DELAY: Duration = Duration::from_millis(500);

pub(crate) struct Backoff {
    attempt: u32,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(max: Duration) -> Self {
        Self { attempt: 0, max: max.max(Duration::from_millis(1)) }
    }

    /// Starts over after a session that got online.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The next delay: half of the capped exponential step, plus a random part of the rest.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = FIRST_DELAY.saturating_mul(1 << self.attempt.min(16)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_stays_capped_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_secs(30));
        let delays: Vec<_> = (0..40).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(250) && delays[0] <= FIRST_DELAY);
        assert!(delays[3] >= Duration::from_secs(2) && delays[3] <= Duration::from_secs(4));
        for d in &delays[10..] {
            assert!(*d >= Duration::from_secs(15) && *d <= Duration::from_secs(30), "{d:?}");
        }
        assert!(delays[10..].windows(2).any(|w| w[0] != w[1]), "delays must be jittered");
        backoff.reset();
        assert!(backoff.next_delay() <= FIRST_DELAY);
    }
}
