//! Where the relay keeps what must outlive a session or the relay itself: which tokens are
//! valid, and which place is reserved for which tunnel. Everything above reaches it through
//! [`Store`], never under a lock, so a store on the network (etcd, for a fleet of relays)
//! replaces the files in the data directory without touching the session or claims code.

mod acme_share;
mod config;
#[cfg(test)]
mod contract;
#[cfg(feature = "etcd")]
mod etcd;
mod file;
mod reservations;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use burrow_common::{Fingerprint, FleetMember};

pub(crate) use self::acme_share::{AcmeShare, ChallengeKey, SharedCertificate};
pub use self::config::{StoreConfig, StoreUrl};
#[cfg(feature = "etcd")]
pub(crate) use self::etcd::{Etcd, EtcdStore, EtcdTokens};
pub(crate) use self::file::FileStore;
use crate::{
    BindError, RelayConfig,
    claims::{Place, TunnelKey},
    tokens::{Grant, TokenRecord},
};

/// Why an etcd store cannot be used by a relay built without it.
#[cfg(not(feature = "etcd"))]
pub(crate) const NO_ETCD: &str = "built without the etcd store (cargo feature `etcd`: \
     cargo build --release --features burrow-relay/etcd, which needs protoc)";

/// The store `config.store.url` names, when it is not the data directory's files (which
/// [`crate::Relay::bind`] opens itself).
#[cfg_attr(not(feature = "etcd"), expect(unused_variables, reason = "the fingerprint is for the fleet's roster"))]
pub(crate) async fn open_shared(
    config: &RelayConfig,
    fingerprint: &Fingerprint,
) -> Result<Option<Arc<dyn Store>>, BindError> {
    let url = &config.store.url;
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| BindError::Store { url: url.to_string(), source };
    match url {
        StoreUrl::File => Ok(None),
        #[cfg(feature = "etcd")]
        StoreUrl::Etcd { .. } => {
            let store = EtcdStore::open(&config.store, config.reservation_ttl, &member(config, fingerprint)).await;
            Ok(Some(Arc::new(store.map_err(|e| failed(e.into()))?)))
        }
        #[cfg(not(feature = "etcd"))]
        StoreUrl::Etcd { .. } => Err(failed(NO_ETCD.into())),
    }
}

/// This relay as the fleet's roster lists it.
#[cfg(feature = "etcd")]
fn member(config: &RelayConfig, fingerprint: &Fingerprint) -> etcd::Member {
    let agent_port = config.listen.port();
    let by_name = config.hostname.first().filter(|_| agent_port != 0).map(|host| format!("{host}:{agent_port}"));
    etcd::Member {
        hostname: config.hostname.clone(),
        started: crate::tokens::now(),
        agents: config.store.advertise.clone().or(by_name),
        fingerprint: fingerprint.to_string(),
        zone: config.store.zone.clone(),
    }
}

/// A claim of another place for a tunnel that relays of the fleet serve at `0` now: every
/// relay serving one tunnel serves it at one place, so the claim waits for the agent to ask
/// this relay for that one.
#[derive(Debug, thiserror::Error)]
#[error("this tunnel is served at {0} through another relay of the fleet, and can open here only there")]
pub(crate) struct ServedElsewhere(pub(crate) Place);

/// Places one token may keep reserved, held or released within the TTL. An agent that opens
/// and closes tunnels under new names (a config reloaded in a loop) would otherwise reserve
/// a new one each time, for a day each; past this its oldest released ones are forgotten.
const MAX_RESERVATIONS_PER_TOKEN: usize = 1024;

/// What every [`Store`] method returns: a boxed future, so the trait stays usable as `dyn`.
pub(crate) type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Tokens and reservations, as one relay (or every relay of a fleet) shares them.
///
/// The contract, which the files meet for one relay and a distributed store must meet for
/// many:
/// - **A claim is one atomic compare-and-set.** [`Store::claim`] succeeds only if no other
///   tunnel holds or has an unexpired reservation on the place, and records in the same step
///   that the claimant holds it (moving the claimant's own reservation there). Two relays
///   racing for one place cannot both succeed. The relay decides a claim in its own table
///   first, marks the place as being claimed, calls `claim` outside any lock, then finishes
///   or undoes its decision.
/// - **A live claim is bound to a lease its holder renews.** Each store handle holds one
///   lease for as long as it lives (the relay process); every claim made through it is
///   bound to that lease. [`Store::release`] turns a held claim into a reservation that
///   expires `reservation_ttl` later. When the lease is lost (the relay crashed or was cut
///   off), its held claims become reservations whose TTL starts then: the same token and
///   tunnel name get their place back within the TTL, from whichever relay they reach.
///   The files meet this by turning claims still held at the relay's start into
///   reservations that expire a TTL after it.
/// - **A token keeps [`MAX_RESERVATIONS_PER_TOKEN`] places at most**, held or reserved: past
///   it, a claim forgets the token's reservations released longest ago (never a held place).
/// - **Revocations are watched.** [`Store::token_changes`] completes after the set of valid
///   tokens has changed, within about a second of the change, so the relay can close the
///   sessions of revoked tokens at once rather than at their next reconnect.
/// - **A Welcome follows durability.** [`Store::durable`] waits, for `within` at most,
///   until every change made so far would survive a crash of this relay.
pub(crate) trait Store: Send + Sync {
    /// The grant of a token known by its SHA-256, if the token is valid now.
    fn verify_token(&self, digest: [u8; 32]) -> StoreFuture<'_, anyhow::Result<Option<Grant>>>;

    /// The tokens kept in the store; never the tokens themselves, only what they grant.
    fn list_tokens(&self) -> StoreFuture<'_, anyhow::Result<Vec<TokenRecord>>>;

    /// Completes once the set of valid tokens has changed since the last time it completed
    /// (or since the store was opened). Cancel-safe only between changes: keep one such
    /// future alive while waiting.
    fn token_changes(&self) -> StoreFuture<'_, ()>;

    /// The place reserved for `key`, unless its reservation expired.
    fn reserved_for<'a>(&'a self, key: &'a TunnelKey) -> StoreFuture<'a, anyhow::Result<Option<Place>>>;

    /// The tunnel that holds `place` or has an unexpired reservation on it.
    fn owner_of<'a>(&'a self, place: &'a Place) -> StoreFuture<'a, anyhow::Result<Option<TunnelKey>>>;

    /// Compare-and-set: `key` holds `place` from now on if no other tunnel holds or reserves
    /// it; returns whether it does.
    fn claim<'a>(&'a self, key: &'a TunnelKey, place: &'a Place) -> StoreFuture<'a, anyhow::Result<bool>>;

    /// `key` stopped holding `place`; the reservation expires a TTL from now. Releasing a
    /// place `key` does not hold changes nothing.
    fn release<'a>(&'a self, key: &'a TunnelKey, place: &'a Place) -> StoreFuture<'a, anyhow::Result<()>>;

    /// Waits until every change made so far is stored durably, for `within` at most; says
    /// whether it is.
    fn durable(&self, within: Duration) -> StoreFuture<'_, bool>;

    /// Completes when this relay's lease is next lost: the claims it held are no longer
    /// provably its own, so its sessions must end and claim again. Never, for a store that
    /// has no lease (the files of one relay).
    fn lease_lost(&self) -> StoreFuture<'_, ()> {
        Box::pin(std::future::pending())
    }

    /// Ends this relay's use of the store at a clean stop, once its sessions are closed: what
    /// it still holds becomes reserved (as after a release) and other relays see it gone at
    /// once, rather than when its lease would have expired.
    fn close(&self) -> StoreFuture<'_, anyhow::Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// The other relays sharing this store, as agents reach them; none for the files of one
    /// relay.
    fn fleet(&self) -> StoreFuture<'_, Vec<FleetMember>> {
        Box::pin(std::future::ready(Vec::new()))
    }

    /// Where the relays of a fleet share their ACME certificates and challenge answers;
    /// `None` for the files of one relay, which keeps its own in its data directory.
    fn acme_share(&self) -> Option<&dyn AcmeShare> {
        None
    }
}

#[cfg(all(test, not(feature = "etcd")))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_etcd_url_without_the_feature_names_the_feature() -> anyhow::Result<()> {
        let mut config = RelayConfig::default();
        config.store.url = "etcd://127.0.0.1:2379".parse().map_err(anyhow::Error::msg)?;
        let fingerprint = "sha256:".to_string() + &"0".repeat(64);
        let err = open_shared(&config, &fingerprint.parse().map_err(anyhow::Error::msg)?)
            .await
            .err()
            .map(|e| format!("{:#}", anyhow::Error::from(e)));
        let err = err.unwrap_or_default();
        assert!(err.contains("store.url = etcd://127.0.0.1:2379") && err.contains("cargo feature `etcd`"), "{err}");
        Ok(())
    }
}
