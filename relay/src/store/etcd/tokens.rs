//! Tokens in etcd: a record per token hash, and a name index that keeps names unique. Every
//! relay of the fleet keeps them in memory, fed by a watch ([`super::token_cache`]), so a
//! revocation made through any relay ends the token's sessions on all of them within moments.

use anyhow::Context;
use burrow_common::Secret;
use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp};

use super::{
    Etcd, EtcdStore,
    error::{Call, StoreError, within},
};
use crate::{
    store::StoreFuture,
    tokens::{self, Grant, Limits, TokenAdmin, TokenRecord},
};

pub(super) fn parse(kv: &KeyValue) -> Result<TokenRecord, StoreError> {
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
    /// Answered from memory: a lookup by digest says only whether a token with that SHA-256
    /// exists, and etcd may be unreachable meanwhile.
    pub(super) fn verify_token(&self, digest: [u8; 32]) -> Option<Grant> {
        self.tokens.borrow().get(&self.etcd.keys.token(&digest)).and_then(TokenRecord::grant)
    }

    /// From memory too, so the dashboard lists the tokens the relay admits while etcd is
    /// out of reach.
    pub(super) fn list_tokens(&self) -> Vec<TokenRecord> {
        let mut records: Vec<_> = self.tokens.borrow().values().cloned().collect();
        records.sort_by(|a, b| a.name.cmp(&b.name));
        records
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

impl TokenAdmin for EtcdTokens {
    fn add<'a>(&'a self, name: &'a str, limits: Limits<'a>) -> StoreFuture<'a, anyhow::Result<Secret>> {
        Box::pin(async move {
            let added = EtcdTokens::add(self, name, limits).await?;
            added.with_context(|| format!("a token named {name:?} already exists (revoke it first)"))
        })
    }

    /// Relays of a fleet starting at once each try: one wins the name, the others get `None`.
    fn add_first<'a>(&'a self, name: &'a str) -> StoreFuture<'a, anyhow::Result<Option<Secret>>> {
        Box::pin(EtcdTokens::add(self, name, Limits::default()))
    }

    fn revoke<'a>(&'a self, name: &'a str) -> StoreFuture<'a, anyhow::Result<bool>> {
        Box::pin(EtcdTokens::revoke(self, name))
    }

    fn list(&self) -> StoreFuture<'_, anyhow::Result<Vec<TokenRecord>>> {
        Box::pin(EtcdTokens::list(self))
    }

    fn is_empty(&self) -> StoreFuture<'_, anyhow::Result<bool>> {
        Box::pin(EtcdTokens::is_empty(self))
    }
}
