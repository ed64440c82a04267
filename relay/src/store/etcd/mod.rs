//! The fleet's store: tokens, claims and reservations in etcd, shared by every relay started
//! with the same `store.url` and `store.prefix`.
//!
//! A claim is one etcd transaction that compares the place's record and writes it together
//! with this relay's `held/` key under its lease, so two relays can never grant one place to
//! two tokens. Expiry is etcd's: a released place's record moves onto a lease of
//! `reservation_ttl`, and a crashed relay's `held/` keys go with its lease. The key layout
//! is in [`keys`].

mod acme_share;
mod error;
mod keys;
mod lease;
mod members;
mod places;
mod reservation_cap;
mod token_cache;
mod tokens;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use burrow_common::FleetMember;
use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, KeyValue, TlsOptions};
use tokio::sync::{Notify, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

pub(crate) use self::{error::StoreError, members::Member, tokens::EtcdTokens};
use self::{
    error::{Call, within},
    keys::Keys,
    lease::LeaseState,
    token_cache::{TokenFeed, Tokens},
};
use super::{StoreConfig, StoreUrl};
use crate::{
    claims::{Place, TunnelKey},
    tokens::{Grant, TokenRecord},
};

/// How long a connection attempt to one etcd endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// HTTP/2 pings on the connection to etcd, so a silent partition breaks it (and its watch)
/// within seconds instead of at the next request.
const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(3));

/// The longest time between sweeps for the places of stopped relays.
const MAX_SWEEP_PERIOD: Duration = Duration::from_secs(60);

/// A connection to the fleet's etcd: the client, the fleet's keys, and how long one call may
/// take. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Etcd {
    client: Client,
    keys: Keys,
    timeout: Duration,
}

impl Etcd {
    /// Connects to the endpoints of `config.url`. The client connects lazily: this succeeds
    /// while etcd is down, and calls then fail as [`StoreError::Unavailable`] or time out.
    pub(crate) async fn connect(config: &StoreConfig) -> anyhow::Result<Self> {
        let StoreUrl::Etcd { endpoints, .. } = &config.url else {
            anyhow::bail!("store.url = {} is not an etcd store", config.url)
        };
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(config.request_timeout)
            .with_keep_alive(KEEP_ALIVE.0, KEEP_ALIVE.1)
            // A member cut off from its leader fails requests rather than answering stale.
            .with_require_leader(true);
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.with_user(user.clone(), password.expose());
        }
        if let Some(tls) = tls_options(config)? {
            options = options.with_tls(tls);
        }
        let connect = Client::connect(endpoints, Some(options));
        let client = within(config.request_timeout, Call::Plain, connect).await.context("connect to etcd")?;
        Ok(Self { client, keys: Keys::new(&config.prefix), timeout: config.request_timeout })
    }

    /// The one record at `key`, if any.
    async fn get_one(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut answer = within(self.timeout, Call::Plain, self.client.kv_client().get(key, None)).await?;
        Ok(answer.take_kvs().into_iter().next())
    }

    /// Every record under `prefix`.
    async fn get_prefix(&self, prefix: &str, options: GetOptions) -> Result<Vec<KeyValue>, StoreError> {
        let mut kv = self.client.kv_client();
        Ok(within(self.timeout, Call::Plain, kv.get(prefix, Some(options.with_prefix()))).await?.take_kvs())
    }
}

/// TLS for `etcds://`: the CA etcd's servers are trusted by, and a client certificate if set.
fn tls_options(config: &StoreConfig) -> anyhow::Result<Option<TlsOptions>> {
    let StoreUrl::Etcd { tls: true, .. } = config.url else { return Ok(None) };
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("read store.{key} = {}", path.display()))
    };
    let mut tls = TlsOptions::new();
    if let Some(ca) = &config.ca {
        tls = tls.ca_certificate(Certificate::from_pem(read("ca", ca)?));
    }
    if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
        tls = tls.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
    }
    Ok(Some(tls))
}

/// Tokens, claims and reservations in etcd, for one relay of a fleet.
pub(crate) struct EtcdStore {
    etcd: Etcd,
    reservation_ttl: Duration,
    /// Places one token may keep: [`super::MAX_RESERVATIONS_PER_TOKEN`] but in tests.
    reservation_cap: usize,
    /// What this relay writes in its `held/` keys: its public name, for people reading etcd.
    holder: String,
    lease: watch::Receiver<LeaseState>,
    /// Every valid token, kept current by the watch of [`TokenFeed`].
    tokens: watch::Receiver<Tokens>,
    /// One permit: "the tokens changed since [`Store::token_changes`](super::Store::token_changes) last completed".
    tokens_changed: Arc<Notify>,
    roster: members::Roster,
    /// Stops the lease and watch tasks at [`EtcdStore::close`].
    stop: CancellationToken,
    /// Stops them when the store is dropped.
    _stop: DropGuard,
}

impl EtcdStore {
    /// Connects, reads the tokens, takes this relay's lease and registers it as a member of
    /// the fleet, turns what crashed relays held into reservations, and starts renewing the
    /// lease and watching the tokens.
    pub(crate) async fn open(config: &StoreConfig, reservation_ttl: Duration, me: &Member) -> anyhow::Result<Self> {
        let etcd = Etcd::connect(config).await?;
        let (tokens, tokens_read_at) = token_cache::load(&etcd).await.context("read the tokens in etcd")?;
        let (tokens, tokens_rx) = watch::channel(tokens);
        let member = me.to_json();
        let lease = lease::grant(&etcd, config.lease_ttl, &member).await.context("take this relay's lease in etcd")?;
        let (state, lease_rx) = watch::channel(LeaseState::Live(lease));
        let stop = CancellationToken::new();
        let holder = me.hostname.first().cloned().unwrap_or_else(|| "relay".into());
        let store = Self {
            etcd: etcd.clone(),
            reservation_ttl,
            reservation_cap: super::MAX_RESERVATIONS_PER_TOKEN,
            holder,
            lease: lease_rx,
            tokens: tokens_rx,
            tokens_changed: Arc::new(Notify::new()),
            roster: members::Roster::default(),
            stop: stop.clone(),
            _stop: stop.clone().drop_guard(),
        };
        places::sweep_orphans(&etcd, reservation_ttl, None)
            .await
            .context("turn what stopped relays held into reservations")?;
        let renewal = lease::Renewal { etcd: etcd.clone(), ttl: config.lease_ttl, member, reservation_ttl };
        tokio::spawn(renewal.run(state, stop.clone()));
        let period = config.lease_ttl.min(MAX_SWEEP_PERIOD);
        tokio::spawn(places::sweep_periodically(etcd.clone(), reservation_ttl, period, stop.clone()));
        let feed = TokenFeed { etcd, tokens, changed: store.tokens_changed.clone() };
        tokio::spawn(feed.run(tokens_read_at + 1, stop));
        Ok(store)
    }

    /// Stops renewing the lease and watching, turns what this relay holds alone into
    /// reservations, then revokes its lease. The lease is revoked even when the reservations
    /// failed: a place left held by no relay is reserved by the next sweep or claim.
    async fn close(&self) -> Result<(), StoreError> {
        self.stop.cancel();
        let LeaseState::Live(lease) = *self.lease.borrow() else { return Ok(()) };
        let reserved = places::sweep_orphans(&self.etcd, self.reservation_ttl, Some(lease)).await;
        let revoked = lease::revoke(&self.etcd, lease).await;
        let reserved = reserved?;
        revoked?;
        tracing::info!(reserved, "this relay left the fleet's store");
        Ok(())
    }

    /// This relay's lease, or [`StoreError::LeaseLost`] while it is being taken again.
    fn live_lease(&self) -> Result<i64, StoreError> {
        match *self.lease.borrow() {
            LeaseState::Live(id) => Ok(id),
            LeaseState::Lost => Err(StoreError::LeaseLost),
        }
    }
}

impl super::Store for EtcdStore {
    fn verify_token(&self, digest: [u8; 32]) -> super::StoreFuture<'_, anyhow::Result<Option<Grant>>> {
        Box::pin(std::future::ready(Ok(EtcdStore::verify_token(self, digest))))
    }

    fn list_tokens(&self) -> super::StoreFuture<'_, anyhow::Result<Vec<TokenRecord>>> {
        Box::pin(std::future::ready(Ok(EtcdStore::list_tokens(self))))
    }

    fn token_changes(&self) -> super::StoreFuture<'_, ()> {
        Box::pin(self.tokens_changed.notified())
    }

    fn reserved_for<'a>(&'a self, key: &'a TunnelKey) -> super::StoreFuture<'a, anyhow::Result<Option<Place>>> {
        Box::pin(async move { Ok(EtcdStore::reserved_for(self, key).await?) })
    }

    fn owner_of<'a>(&'a self, place: &'a Place) -> super::StoreFuture<'a, anyhow::Result<Option<TunnelKey>>> {
        Box::pin(async move { Ok(EtcdStore::owner_of(self, place).await?) })
    }

    fn claim<'a>(&'a self, key: &'a TunnelKey, place: &'a Place) -> super::StoreFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            // Unwrapped, so the claimant can tell it from an unreachable store by its type.
            EtcdStore::claim(self, key, place).await.map_err(|e| match e {
                StoreError::ServedElsewhere(elsewhere) => anyhow::Error::new(elsewhere),
                other => other.into(),
            })
        })
    }

    fn release<'a>(&'a self, key: &'a TunnelKey, place: &'a Place) -> super::StoreFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { Ok(EtcdStore::release(self, key, place).await?) })
    }

    /// etcd answers a write only once a quorum has it in its write-ahead log, and every
    /// claim and release awaited its write.
    fn durable(&self, _within: Duration) -> super::StoreFuture<'_, bool> {
        Box::pin(async { true })
    }

    fn fleet(&self) -> super::StoreFuture<'_, Vec<FleetMember>> {
        Box::pin(self.roster.others(&self.etcd, self.live_lease().ok()))
    }

    fn close(&self) -> super::StoreFuture<'_, anyhow::Result<()>> {
        Box::pin(async move { Ok(EtcdStore::close(self).await?) })
    }

    fn acme_share(&self) -> Option<&dyn super::AcmeShare> {
        Some(self)
    }

    fn lease_lost(&self) -> super::StoreFuture<'_, ()> {
        let mut lease = self.lease.clone();
        lease.mark_unchanged();
        Box::pin(async move {
            while lease.changed().await.is_ok() {
                if *lease.borrow_and_update() == LeaseState::Lost {
                    return;
                }
            }
            // The renewal task has ended: the store is being dropped.
            std::future::pending().await
        })
    }
}

#[cfg(test)]
mod tests;
