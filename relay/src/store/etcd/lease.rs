//! This relay's lease in etcd: every claim it makes is held under it, and its member key
//! lives with it. Renewed every third of its TTL; when it is lost (etcd says it expired, or
//! no renewal was confirmed before its deadline) a new one is taken, and what stopped
//! relays held becomes reserved.

use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{
    Etcd,
    error::{Call, StoreError, within},
    places,
};

/// Backoff between attempts to take a new lease or reopen the renewal stream.
const RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Whether this relay holds a lease now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseState {
    Live(i64),
    /// Expired; claims are refused until a new one is taken.
    Lost,
}

/// Grants a lease of `ttl` and registers this relay under it as `member`.
pub(super) async fn grant(etcd: &Etcd, ttl: Duration, member: &[u8]) -> Result<i64, StoreError> {
    let seconds = ttl.as_secs().max(1) as i64;
    let lease = within(etcd.timeout, Call::Plain, etcd.client.lease_client().grant(seconds, None)).await?.id();
    let mut kv = etcd.client.kv_client();
    let put = kv.put(etcd.keys.member(lease), member, Some(PutOptions::new().with_lease(lease)));
    within(etcd.timeout, Call::UnderLease, put).await?;
    Ok(lease)
}

/// Ends `lease` at once: its `held/` keys and its `members/` key go with it. A lease that
/// has expired already is gone as asked.
pub(super) async fn revoke(etcd: &Etcd, lease: i64) -> Result<(), StoreError> {
    match within(etcd.timeout, Call::UnderLease, etcd.client.lease_client().revoke(lease)).await {
        Ok(_) | Err(StoreError::LeaseLost) => Ok(()),
        Err(e) => Err(e),
    }
}

/// What the renewal task needs to take a new lease.
pub(super) struct Renewal {
    pub(super) etcd: Etcd,
    pub(super) ttl: Duration,
    pub(super) member: Vec<u8>,
    pub(super) reservation_ttl: Duration,
}

impl Renewal {
    /// Keeps the lease in `state` alive until `stop`; replaces it when it is lost.
    pub(super) async fn run(self, state: watch::Sender<LeaseState>, stop: CancellationToken) {
        loop {
            let LeaseState::Live(lease) = *state.borrow() else { return };
            tokio::select! {
                _ = stop.cancelled() => return,
                () = self.keep_alive(lease) => {}
            }
            tracing::warn!(lease = format_args!("{lease:x}"), "this relay's etcd lease was lost; taking a new one");
            state.send_replace(LeaseState::Lost);
            tokio::select! {
                _ = stop.cancelled() => return,
                lease = self.grant_again() => { state.send_replace(LeaseState::Live(lease)); }
            }
        }
    }

    /// Renews `lease` until it is lost: expired in etcd, or not confirmed before the end of
    /// the last TTL etcd granted. That deadline counts from when the renewal was *sent*, and
    /// etcd starts its own count on receipt, so ours never ends after etcd's.
    async fn keep_alive(&self, lease: i64) {
        let mut proven_until = Instant::now() + self.ttl;
        let mut delay = RETRY.0;
        loop {
            let sent = Instant::now();
            let mut client = self.etcd.client.lease_client();
            let opened = within(self.etcd.timeout, Call::UnderLease, client.keep_alive(lease));
            match tokio::time::timeout_at(proven_until, opened).await {
                Err(_) | Ok(Err(StoreError::LeaseLost)) => return,
                Ok(Err(e)) => tracing::debug!("renewing the etcd lease failed: {e:#}"),
                Ok(Ok((keeper, stream))) => {
                    proven_until = sent + self.ttl;
                    delay = RETRY.0;
                    if !self.renew(keeper, stream, &mut proven_until).await {
                        return;
                    }
                }
            }
            let wake = (Instant::now() + delay).min(proven_until);
            tokio::time::sleep_until(wake).await;
            if Instant::now() >= proven_until {
                return;
            }
            delay = (delay * 2).min(RETRY.1);
        }
    }

    /// Renews over one keep-alive stream; returns `false` once the lease is lost, `true`
    /// when the stream broke and should be reopened.
    async fn renew(
        &self,
        mut keeper: LeaseKeeper,
        mut stream: LeaseKeepAliveStream,
        proven_until: &mut Instant,
    ) -> bool {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.tick().await;
        let mut sent = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    sent = Instant::now();
                    if keeper.keep_alive().await.is_err() {
                        return true;
                    }
                }
                answer = stream.message() => match answer {
                    Ok(Some(answer)) if answer.ttl() > 0 => {
                        *proven_until = sent + Duration::from_secs(answer.ttl() as u64);
                    }
                    Ok(Some(_)) => return false,
                    Ok(None) | Err(_) => return true,
                },
                () = tokio::time::sleep_until(*proven_until) => return false,
            }
        }
    }

    /// Takes a new lease, retrying until etcd grants one, and turns what relays that stopped
    /// (this one's old lease included) held into reservations.
    async fn grant_again(&self) -> i64 {
        let mut delay = RETRY.0;
        loop {
            match grant(&self.etcd, self.ttl, &self.member).await {
                Ok(lease) => {
                    if let Err(e) = places::sweep_orphans(&self.etcd, self.reservation_ttl, None).await {
                        tracing::warn!("turning orphaned claims into reservations failed: {e:#}");
                    }
                    tracing::info!(lease = format_args!("{lease:x}"), "this relay has a new etcd lease");
                    return lease;
                }
                Err(e) => tracing::debug!("taking a new etcd lease failed: {e:#}"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY.1);
        }
    }
}
