//! The tokens every relay of the fleet keeps in memory: read when the store opens, then kept
//! current by a watch on `tokens/`. An agent's Hello is checked against them without a call
//! to etcd, so agents are admitted while etcd is unreachable. Whenever the watch breaks,
//! events may have been missed: the whole prefix is read again before the watch resumes.

use std::{collections::HashMap, sync::Arc, time::Duration};

use etcd_client::{Event, EventType, GetOptions, KeyValue, WatchOptions};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{
    Etcd,
    error::{Call, StoreError, within},
    tokens::parse,
};
use crate::tokens::TokenRecord;

/// Backoff between attempts to read and watch the tokens again after the watch broke.
const REWATCH: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Every valid token's record, by its key in etcd (`tokens/<sha256 hex>`).
pub(super) type Tokens = HashMap<String, TokenRecord>;

/// The records under `tokens/`, and the revision they were read at.
pub(super) async fn load(etcd: &Etcd) -> Result<(Tokens, i64), StoreError> {
    let mut kv = etcd.client.kv_client();
    let get = kv.get(etcd.keys.tokens(), Some(GetOptions::new().with_prefix()));
    let mut answer = within(etcd.timeout, Call::Plain, get).await?;
    let revision = answer.header().map_or(0, |h| h.revision());
    let tokens = answer.take_kvs().iter().filter_map(entry).collect();
    Ok((tokens, revision))
}

/// A record as the cache keeps it; a damaged one is left out, as a token that does not exist.
fn entry(kv: &KeyValue) -> Option<(String, TokenRecord)> {
    match parse(kv) {
        Ok(record) => Some((String::from_utf8_lossy(kv.key()).into_owned(), record)),
        Err(e) => {
            tracing::warn!("a token in etcd is ignored: {e:#}");
            None
        }
    }
}

/// What keeps the cache current: the one writer of `tokens`, which wakes `changed` after each
/// change it applies, so the sessions of a revoked token are closed by a check that sees it.
pub(super) struct TokenFeed {
    pub(super) etcd: Etcd,
    pub(super) tokens: watch::Sender<Tokens>,
    pub(super) changed: Arc<Notify>,
}

impl TokenFeed {
    /// Follows the tokens from revision `from` (the one after the cache's) until `stop`.
    pub(super) async fn run(self, mut from: i64, stop: CancellationToken) {
        let mut delay = REWATCH.0;
        loop {
            let watched = tokio::select! {
                _ = stop.cancelled() => return,
                watched = self.follow(from, &mut delay) => watched,
            };
            if let Err(e) = watched {
                tracing::debug!("watching the tokens in etcd failed: {e:#}");
            }
            from = tokio::select! {
                _ = stop.cancelled() => return,
                revision = self.reload(&mut delay) => revision + 1,
            };
        }
    }

    /// Applies one watch of the tokens from revision `from` until it ends.
    async fn follow(&self, from: i64, delay: &mut Duration) -> Result<(), StoreError> {
        let prefix = self.etcd.keys.tokens();
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let mut client = self.etcd.client.watch_client();
        let mut stream = within(self.etcd.timeout, Call::Plain, client.watch(prefix.as_str(), Some(options))).await?;
        loop {
            let Some(answer) = stream.message().await.map_err(|e| super::error::classify(e, Call::Plain))? else {
                return Ok(());
            };
            if answer.canceled() {
                // Compacted past `from`: what it held is read again.
                return Ok(());
            }
            *delay = REWATCH.0;
            if !answer.events().is_empty() {
                self.tokens.send_modify(|tokens| answer.events().iter().for_each(|event| apply(tokens, event)));
                self.changed.notify_one();
            }
        }
    }

    /// Reads every token again, retrying with backoff until etcd answers; replaces the cache
    /// and returns the revision read at.
    async fn reload(&self, delay: &mut Duration) -> i64 {
        loop {
            tokio::time::sleep(*delay).await;
            *delay = (*delay * 2).min(REWATCH.1);
            match load(&self.etcd).await {
                Ok((tokens, revision)) => {
                    self.tokens.send_replace(tokens);
                    self.changed.notify_one();
                    return revision;
                }
                Err(e) => tracing::debug!("reading the tokens in etcd failed: {e:#}"),
            }
        }
    }
}

/// One added, changed or revoked token.
fn apply(tokens: &mut Tokens, event: &Event) {
    let Some(kv) = event.kv() else { return };
    match event.event_type() {
        EventType::Put => match entry(kv) {
            Some((key, record)) => {
                tokens.insert(key, record);
            }
            None => {
                tokens.remove(String::from_utf8_lossy(kv.key()).as_ref());
            }
        },
        EventType::Delete => {
            tokens.remove(String::from_utf8_lossy(kv.key()).as_ref());
        }
    }
}
