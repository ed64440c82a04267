//! The default [`Store`]: `tokens.json` and `reservations.json` in the data directory.
//!
//! Reservations live in memory and reach the file through a writer thread, so a claim never
//! waits on the disk. Tokens are read from their small file at every check, so `relay token
//! add` and `revoke`, run as other processes, take effect at once; revocations are noticed
//! by the file's modification time, checked every second.

use burrow_common::sync;
use std::{
    path::Path,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use anyhow::Context;
use burrow_common::Secret;

use super::{Store, StoreFuture, reservations::FileReservations};
use crate::{
    claims::{Place, TunnelKey},
    tokens::{Grant, TokenRecord, TokenStore},
};

/// How often the token file is checked for changes.
const TOKEN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) struct FileStore {
    tokens: TokenStore,
    reservations: FileReservations,
    /// The token file's modification time when a change was last reported.
    tokens_seen: Mutex<Option<SystemTime>>,
}

impl FileStore {
    /// Opens the files in `data_dir`; `configured` is the token from the relay's config.
    pub(crate) fn open(data_dir: &Path, configured: Option<&Secret>, ttl: Duration) -> anyhow::Result<Self> {
        let tokens = TokenStore::open(data_dir, configured);
        let reservations = FileReservations::open(data_dir, ttl).context("load port reservations")?;
        let tokens_seen = Mutex::new(tokens.modified());
        Ok(Self { tokens, reservations, tokens_seen })
    }

    /// Whether the token file changed since last asked.
    fn tokens_changed(&self) -> bool {
        let now = self.tokens.modified();
        let mut seen = sync::lock(&self.tokens_seen);
        let changed = *seen != now;
        *seen = now;
        changed
    }
}

impl Store for FileStore {
    fn verify_token(&self, digest: [u8; 32]) -> StoreFuture<'_, anyhow::Result<Option<Grant>>> {
        Box::pin(async move { self.tokens.verify_digest(&digest) })
    }

    fn list_tokens(&self) -> StoreFuture<'_, anyhow::Result<Vec<TokenRecord>>> {
        Box::pin(async move { self.tokens.list() })
    }

    fn token_changes(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut check = tokio::time::interval(TOKEN_CHECK_INTERVAL);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                check.tick().await;
                if self.tokens_changed() {
                    return;
                }
            }
        })
    }

    fn reserved_for<'a>(&'a self, key: &'a TunnelKey) -> StoreFuture<'a, anyhow::Result<Option<Place>>> {
        Box::pin(async move { Ok(self.reservations.place_for(key)) })
    }

    fn owner_of<'a>(&'a self, place: &'a Place) -> StoreFuture<'a, anyhow::Result<Option<TunnelKey>>> {
        Box::pin(async move { Ok(self.reservations.owner_of(place)) })
    }

    fn claim<'a>(&'a self, key: &'a TunnelKey, place: &'a Place) -> StoreFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move { self.reservations.claim(key, place) })
    }

    fn release<'a>(&'a self, key: &'a TunnelKey, place: &'a Place) -> StoreFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { self.reservations.release(key, place) })
    }

    fn durable(&self, within: Duration) -> StoreFuture<'_, bool> {
        Box::pin(self.reservations.saved(within))
    }
}
