//! The default [`Store`]: `tokens.json` and `reservations.json` in the data directory.
//!
//! Reservations live in memory and reach the file through a writer thread, so a claim never
//! waits on the disk. Tokens are read from their small file at every check, so `relay token
//! add` and `revoke`, run as other processes, take effect at once; revocations are noticed
//! by a hash of the file's bytes, checked every second: a modification time can stay the
//! same across a change (a coarse clock, a copy that keeps times, a restored backup).

use burrow_common::sync;
use std::{collections::HashMap, path::Path, sync::Mutex, time::Duration};

use anyhow::Context;
use burrow_common::Secret;

use super::{Store, StoreFuture, reservations::FileReservations};
use crate::{
    claims::{Place, TunnelKey},
    tokens::{CONFIGURED_TOKEN_NAME, Grant, TokenRecord, TokenStore, hash, token_id},
};

/// How often the token file is checked for changes.
const TOKEN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long a relay stopping waits for its reservations to reach the file.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

pub(crate) struct FileStore {
    tokens: TokenStore,
    reservations: FileReservations,
    /// The hash of the token file's bytes when a change was last reported.
    tokens_seen: Mutex<Option<[u8; 32]>>,
}

impl FileStore {
    /// Opens the files in `data_dir`. `configured`, the token from the relay's config, only
    /// names the owner of its reservations in a file written before they were kept by id.
    pub(crate) fn open(data_dir: &Path, configured: Option<&Secret>, ttl: Duration) -> anyhow::Result<Self> {
        let tokens = TokenStore::open(data_dir);
        let ids = || ids_by_name(&tokens, configured);
        let reservations = FileReservations::open(data_dir, ttl, ids).context("load port reservations")?;
        let tokens_seen = Mutex::new(tokens.content_hash().ok().flatten());
        Ok(Self { tokens, reservations, tokens_seen })
    }

    /// A token keeps `cap` places at most.
    #[cfg(test)]
    pub(super) fn with_reservation_cap(mut self, cap: usize) -> Self {
        self.reservations.cap = cap;
        self
    }

    /// Whether the token file changed since last asked. An unreadable file is no change:
    /// its next readable state is compared with the last one seen.
    fn tokens_changed(&self) -> bool {
        let Ok(now) = self.tokens.content_hash() else { return false };
        let mut seen = sync::lock(&self.tokens_seen);
        let changed = *seen != now;
        *seen = now;
        changed
    }
}

/// The id of every token that has a name now, the configured one included.
fn ids_by_name(tokens: &TokenStore, configured: Option<&Secret>) -> anyhow::Result<HashMap<String, String>> {
    let stored = tokens.list()?.into_iter().filter_map(|record| Some((record.name.clone(), record.id()?)));
    let configured = configured.map(|token| (CONFIGURED_TOKEN_NAME.to_string(), token_id(&hash(token))));
    Ok(stored.chain(configured).collect())
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

    /// The reservations are in the file before the relay says it stopped.
    fn close(&self) -> StoreFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let saved = self.reservations.saved(CLOSE_WITHIN).await;
            anyhow::ensure!(saved, "the reservations were not saved within {CLOSE_WITHIN:?}");
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;
    use crate::tokens::{Limits, TOKENS_FILE};

    #[test]
    fn a_revoke_with_an_unchanged_mtime_is_noticed() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let tokens = TokenStore::open(dir.path());
        tokens.add("alice", Limits::default())?;
        tokens.add("bob", Limits::default())?;
        let path = dir.path().join(TOKENS_FILE);
        let before = std::fs::metadata(&path)?.modified()?;
        let store = FileStore::open(dir.path(), None, Duration::from_secs(60))?;
        assert!(!store.tokens_changed());

        tokens.revoke("bob")?;
        File::options().write(true).open(&path)?.set_modified(before)?;
        assert_eq!(std::fs::metadata(&path)?.modified()?, before);
        assert!(store.tokens_changed(), "the revoke changed the file's bytes");
        assert!(!store.tokens_changed(), "reported once");
        Ok(())
    }
}
