//! Tokens in etcd: a record per token hash, and a name index that keeps names unique. Every
//! relay of the fleet watches them, so a revocation made through any relay ends the token's
//! sessions on all of them within moments.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use burrow_common::Secret;
use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, WatchOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    Etcd, EtcdStore,
    error::{Call, StoreError, within},
};
use crate::tokens::{self, Grant, Limits, TokenRecord};

/// Backoff between attempts to watch the tokens again after the watch broke.
const REWATCH: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

fn parse(kv: &KeyValue) -> Result<TokenRecord, StoreError> {
    serde_json::from_slice(kv.value())
        .map_err(|source| StoreError::Corrupt { key: String::from_utf8_lossy(kv.key()).into(), source })
}

impl Etcd {
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let records = self.get_prefix(&self.keys.tokens(), GetOptions::new()).await?;
        let mut records = records.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }
}

impl EtcdStore {
    /// A lookup by digest says only whether a token with that SHA-256 exists.
    pub(super) async fn verify_token(&self, digest: [u8; 32]) -> Result<Option<Grant>, StoreError> {
        let Some(kv) = self.etcd.get_one(&self.etcd.keys.token(&digest)).await? else { return Ok(None) };
        Ok(parse(&kv)?.grant())
    }

    pub(super) async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.etcd.list_tokens().await
    }
}

/// Wakes `changed` whenever a token is added or revoked, until `stop`. Whenever the watch
/// breaks, changes may have been missed: `changed` is woken then too.
pub(super) async fn watch_tokens(etcd: Etcd, changed: Arc<Notify>, stop: CancellationToken) {
    let mut from = None;
    let mut delay = REWATCH.0;
    loop {
        let watched = tokio::select! {
            _ = stop.cancelled() => return,
            watched = follow_tokens(&etcd, &changed, &mut from, &mut delay) => watched,
        };
        if let Err(e) = watched {
            tracing::debug!("watching the tokens in etcd failed: {e:#}");
        }
        changed.notify_one();
        tokio::select! {
            _ = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(REWATCH.1);
    }
}

/// Follows one watch of the tokens from revision `from` (from now if `None`) until it ends.
async fn follow_tokens(
    etcd: &Etcd,
    changed: &Notify,
    from: &mut Option<i64>,
    delay: &mut Duration,
) -> Result<(), StoreError> {
    let prefix = etcd.keys.tokens();
    let start = match *from {
        Some(revision) => revision,
        None => {
            let mut kv = etcd.client.kv_client();
            let now = within(
                etcd.timeout,
                Call::Plain,
                kv.get(prefix.as_str(), Some(GetOptions::new().with_prefix().with_count_only())),
            );
            now.await?.header().map_or(0, |h| h.revision()) + 1
        }
    };
    let options = WatchOptions::new().with_prefix().with_start_revision(start);
    let mut client = etcd.client.watch_client();
    let mut stream = within(etcd.timeout, Call::Plain, client.watch(prefix.as_str(), Some(options))).await?;
    loop {
        let Some(answer) = stream.message().await.map_err(|e| super::error::classify(e, Call::Plain))? else {
            return Ok(());
        };
        if answer.canceled() {
            // Compacted past `from`: start again from now, having missed what it held.
            *from = None;
            return Ok(());
        }
        *delay = REWATCH.0;
        if !answer.events().is_empty() {
            changed.notify_one();
        }
        if let Some(header) = answer.header() {
            *from = Some(header.revision() + 1);
        }
    }
}

/// `relay token add/revoke/list` against etcd, from any relay of the fleet.
pub(crate) struct EtcdTokens {
    etcd: Etcd,
}

impl EtcdTokens {
    pub(crate) fn new(etcd: Etcd) -> Self {
        Self { etcd }
    }

    /// Creates a token named `name`; `None` when a token has that name already.
    pub(crate) async fn add(&self, name: &str, limits: Limits<'_>) -> anyhow::Result<Option<Secret>> {
        tokens::validate_name(name)?;
        let token = tokens::generate();
        let digest = tokens::hash(&token);
        let record = serde_json::to_vec(&TokenRecord::new(name, &token, limits))?;
        let keys = &self.etcd.keys;
        let txn = Txn::new().when([Compare::create_revision(keys.token_name(name), CompareOp::Equal, 0)]).and_then([
            TxnOp::put(keys.token_name(name), hex::encode(digest), None),
            TxnOp::put(keys.token(&digest), record, None),
        ]);
        let mut kv = self.etcd.client.kv_client();
        let added = within(self.etcd.timeout, Call::Plain, kv.txn(txn)).await.context("add the token in etcd")?;
        Ok(added.succeeded().then_some(token))
    }

    /// Removes the token `name`; returns whether it existed.
    pub(crate) async fn revoke(&self, name: &str) -> anyhow::Result<bool> {
        let keys = &self.etcd.keys;
        let Some(index) = self.etcd.get_one(&keys.token_name(name)).await.context("read the token in etcd")? else {
            return Ok(false);
        };
        let digest: [u8; 32] = hex::decode(index.value())
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .with_context(|| format!("damaged record at {}", keys.token_name(name)))?;
        let txn = Txn::new()
            .when([Compare::mod_revision(keys.token_name(name), CompareOp::Equal, index.mod_revision())])
            .and_then([TxnOp::delete(keys.token_name(name), None), TxnOp::delete(keys.token(&digest), None)]);
        let mut kv = self.etcd.client.kv_client();
        let revoked = within(self.etcd.timeout, Call::Plain, kv.txn(txn)).await.context("revoke the token in etcd")?;
        Ok(revoked.succeeded())
    }

    pub(crate) async fn list(&self) -> anyhow::Result<Vec<TokenRecord>> {
        self.etcd.list_tokens().await.context("list the tokens in etcd")
    }

    pub(crate) async fn is_empty(&self) -> anyhow::Result<bool> {
        let mut kv = self.etcd.client.kv_client();
        let count = kv.get(self.etcd.keys.tokens(), Some(GetOptions::new().with_prefix().with_count_only()));
        Ok(within(self.etcd.timeout, Call::Plain, count).await.context("count the tokens in etcd")?.count() == 0)
    }
}
