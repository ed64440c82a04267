//! Slows down token guessing: failed handshakes from one address beyond a small burst are
//! answered only at a steady rate. Valid tokens are never delayed, so an agent behind the same
//! NAT as a misconfigured one still connects at once.

use std::{net::IpAddr, num::NonZeroU32, time::Duration};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

const FAILURE_BURST: u32 = 10;
/// A delayed refusal never waits longer than this; past it the caller refuses anyway.
const MAX_DELAY: Duration = Duration::from_secs(10);

pub(crate) struct FailureLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl FailureLimiter {
    pub(crate) fn new() -> Self {
        let one = NonZeroU32::MIN;
        let burst = NonZeroU32::new(FAILURE_BURST).unwrap_or(one);
        Self { limiter: RateLimiter::keyed(Quota::per_second(one).allow_burst(burst)) }
    }

    /// Waits until a refusal to `ip` may be sent.
    pub(crate) async fn before_refusal(&self, ip: IpAddr) {
        if self.limiter.check_key(&ip).is_err() {
            tracing::debug!(%ip, "repeated token failures; delaying refusal");
            tokio::time::timeout(MAX_DELAY, self.limiter.until_key_ready(&ip)).await.ok();
        }
    }

    /// Forgets addresses that have been quiet long enough to be back at a full burst.
    pub(crate) fn forget_quiet(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}
