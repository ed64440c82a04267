//! Limits credential guessing per source address (agent tokens, basic-auth passwords, probed
//! hostnames). Each attempt takes a unit from the address's bucket *before* anything is
//! checked: an address with no unit left is refused without a check, so parallel attempts
//! gain nothing, and a correct guess is no faster than a wrong one. A success gives its unit
//! back, so an agent that reconnects often never runs dry. The price: while an address is over
//! quota, a valid agent behind the same NAT is asked to try again later, and gets in once the
//! bucket refills (one unit a second).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use burrow_common::sync;
use tokio::time::Instant;

use crate::limits::IpKey;

/// Attempts an address may make at once before the steady rate applies.
const BURST: f64 = 10.0;
/// How often an address earns one attempt back; told to clients over quota as Retry-After.
pub(crate) const REFILL_EVERY: Duration = Duration::from_secs(1);
/// Failed attempts from one address that may wait for their paced refusal at once; past it
/// the address is throttled, so a flood cannot park connections on the relay.
const MAX_WAITING_PER_ADDRESS: usize = 4;
/// How long a paced refusal waits: one guess a second for a guesser that waits for its answers.
const PACE: Duration = REFILL_EVERY;

/// The address is over its quota: refuse without checking anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Throttled;

#[derive(Clone, Default)]
pub(crate) struct FailureLimiter {
    buckets: Arc<Mutex<HashMap<IpKey, Bucket>>>,
}

struct Bucket {
    units: f64,
    filled_at: Instant,
    waiting: usize,
}

impl Bucket {
    fn full(now: Instant) -> Self {
        Self { units: BURST, filled_at: now, waiting: 0 }
    }

    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.filled_at).as_secs_f64() / REFILL_EVERY.as_secs_f64();
        self.units = (self.units + earned).min(BURST);
        self.filled_at = now;
    }

    fn throttled(&self) -> bool {
        self.units < 1.0 || self.waiting >= MAX_WAITING_PER_ADDRESS
    }

    /// How long a failure's refusal waits: nothing within the first half of the burst (a
    /// mistyped password retried), then as long as the address takes to earn the attempt back.
    fn pace(&self) -> Duration {
        if self.units >= BURST / 2.0 { Duration::ZERO } else { PACE }
    }
}

/// One attempt's unit, taken before the check. Say how the check went: dropping it counts as
/// a failure that is not paced.
#[must_use = "report the check with succeeded() or failed()"]
pub(crate) struct Attempt {
    key: IpKey,
    limiter: FailureLimiter,
}

impl FailureLimiter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Takes a unit for one attempt from `ip`, or refuses when it has none left or too many
    /// refusals waiting.
    pub(crate) fn attempt(&self, ip: IpAddr) -> Result<Attempt, Throttled> {
        let key = IpKey::from(ip);
        let now = Instant::now();
        let mut buckets = sync::lock(&self.buckets);
        let bucket = buckets.entry(key).or_insert_with(|| Bucket::full(now));
        bucket.refill(now);
        if bucket.throttled() {
            return Err(Throttled);
        }
        bucket.units -= 1.0;
        Ok(Attempt { key, limiter: self.clone() })
    }

    /// Whether `ip` is over its quota now; a peek that takes nothing.
    pub(crate) fn throttled(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut buckets = sync::lock(&self.buckets);
        buckets.get_mut(&IpKey::from(ip)).is_some_and(|bucket| {
            bucket.refill(now);
            bucket.throttled()
        })
    }

    /// Forgets addresses that have been quiet long enough to be back at a full burst.
    pub(crate) fn forget_quiet(&self) {
        let now = Instant::now();
        sync::lock(&self.buckets).retain(|_, bucket| {
            bucket.refill(now);
            bucket.units < BURST || bucket.waiting > 0
        });
    }

    fn with_bucket<T>(&self, key: IpKey, f: impl FnOnce(&mut Bucket) -> T) -> Option<T> {
        let now = Instant::now();
        let mut buckets = sync::lock(&self.buckets);
        let bucket = buckets.get_mut(&key)?;
        bucket.refill(now);
        Some(f(bucket))
    }
}

impl Attempt {
    /// The credential was right: the unit goes back.
    pub(crate) fn succeeded(self) {
        self.limiter.with_bucket(self.key, |bucket| bucket.units = (bucket.units + 1.0).min(BURST));
    }

    /// The credential was wrong: past the first half of the burst, waits a second while holding
    /// one of the address's few waiting places, so one address gets about one answer a second.
    pub(crate) async fn failed(self) {
        let Some(wait) = self.limiter.with_bucket(self.key, |bucket| {
            bucket.waiting += 1;
            bucket.pace()
        }) else {
            return;
        };
        let _place = Waiting { key: self.key, limiter: self.limiter.clone() };
        if !wait.is_zero() {
            tracing::debug!(ip = ?self.key, "repeated failures; pacing the refusal");
            tokio::time::sleep(wait).await;
        }
    }
}

/// A refusal waiting to be sent; frees its place when dropped, even if the wait is abandoned.
struct Waiting {
    key: IpKey,
    limiter: FailureLimiter,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.limiter.with_bucket(self.key, |bucket| bucket.waiting = bucket.waiting.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    fn exhaust(limiter: &FailureLimiter, ip: IpAddr) {
        for _ in 0..BURST as usize {
            drop(limiter.attempt(ip).expect("a fresh address has its burst"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_correct_guess_over_quota_is_refused_without_a_check() {
        let limiter = FailureLimiter::new();
        exhaust(&limiter, HOST);
        assert_eq!(limiter.attempt(HOST).err(), Some(Throttled), "no unit left: refused before any check");
        assert!(limiter.throttled(HOST));
        tokio::time::advance(REFILL_EVERY).await;
        assert!(!limiter.throttled(HOST), "one unit back after a second");
        limiter.attempt(HOST).expect("refilled").succeeded();
    }

    #[tokio::test(start_paused = true)]
    async fn success_refunds_its_unit() {
        let limiter = FailureLimiter::new();
        for _ in 0..100 {
            limiter.attempt(HOST).expect("a success costs nothing").succeeded();
        }
        exhaust(&limiter, HOST);
        assert!(limiter.throttled(HOST));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_refusals_are_capped_per_address() {
        let limiter = FailureLimiter::new();
        let mut waiting = tokio::task::JoinSet::new();
        let mut throttled_after = None;
        for sent in 0..BURST as usize {
            match limiter.attempt(HOST) {
                Ok(attempt) => {
                    waiting.spawn(attempt.failed());
                    tokio::task::yield_now().await;
                }
                Err(Throttled) => {
                    throttled_after = Some(sent);
                    break;
                }
            }
        }
        // The first failures are answered at once; later ones wait, and only a few may wait at
        // the same time: the address is throttled though it still has a unit.
        assert_eq!(throttled_after, Some(BURST as usize / 2 + MAX_WAITING_PER_ADDRESS));
        let bucket_units = sync::lock(&limiter.buckets)[&IpKey::from(HOST)].units;
        assert!(bucket_units >= 1.0, "{bucket_units} units: the cap, not the quota, refused");
        assert_eq!(sync::lock(&limiter.buckets)[&IpKey::from(HOST)].waiting, MAX_WAITING_PER_ADDRESS);
        while waiting.join_next().await.is_some() {}
        assert_eq!(sync::lock(&limiter.buckets)[&IpKey::from(HOST)].waiting, 0, "places are freed after the wait");
    }

    #[tokio::test(start_paused = true)]
    async fn v6_addresses_share_their_64() {
        let limiter = FailureLimiter::new();
        let one: IpAddr = "2001:db8:1:2::1".parse().expect("literal");
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("literal");
        let other_64: IpAddr = "2001:db8:1:3::1".parse().expect("literal");
        exhaust(&limiter, one);
        assert!(limiter.throttled(same_64));
        assert!(!limiter.throttled(other_64));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("literal");
        exhaust(&limiter, mapped);
        assert!(limiter.throttled(HOST), "a v4-mapped address is its v4 address");
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_addresses_are_forgotten() {
        let limiter = FailureLimiter::new();
        exhaust(&limiter, HOST);
        limiter.forget_quiet();
        assert_eq!(sync::lock(&limiter.buckets).len(), 1);
        tokio::time::advance(REFILL_EVERY * BURST as u32).await;
        limiter.forget_quiet();
        assert!(sync::lock(&limiter.buckets).is_empty());
    }
}
