//! Where `relay token`, `relay invite` and a first start add, revoke and list tokens: the
//! data directory's file, or etcd shared by a fleet of relays. Each store implements
//! [`TokenAdmin`] next to its own code; only [`open_admin`] knows which `store.url` names.

use burrow_common::Secret;

use super::{Limits, TokenRecord, TokenStore};
use crate::{RelayConfig, config::StoreUrl, store::StoreFuture};

/// The tokens of one store, as an operator changes them.
pub(crate) trait TokenAdmin: Send + Sync {
    /// Creates a token named `name` and returns it; only its hash is stored.
    fn add<'a>(&'a self, name: &'a str, limits: Limits<'a>) -> StoreFuture<'a, anyhow::Result<Secret>>;

    /// The first token of a store that has none, named `name`; `None` when another relay of
    /// the fleet made one meanwhile.
    fn add_first<'a>(&'a self, name: &'a str) -> StoreFuture<'a, anyhow::Result<Option<Secret>>> {
        Box::pin(async move { Ok(Some(self.add(name, Limits::default()).await?)) })
    }

    /// Removes the token `name`; returns whether it existed.
    fn revoke<'a>(&'a self, name: &'a str) -> StoreFuture<'a, anyhow::Result<bool>>;

    fn list(&self) -> StoreFuture<'_, anyhow::Result<Vec<TokenRecord>>>;

    fn is_empty(&self) -> StoreFuture<'_, anyhow::Result<bool>>;
}

/// The tokens of the store `store.url` names.
pub(crate) async fn open_admin(config: &RelayConfig) -> anyhow::Result<Box<dyn TokenAdmin>> {
    match &config.store.url {
        StoreUrl::File => Ok(Box::new(TokenStore::open(&config.data_dir))),
        #[cfg(feature = "etcd")]
        StoreUrl::Etcd { .. } => {
            let etcd = crate::store::Etcd::connect(&config.store).await?;
            Ok(Box::new(crate::store::EtcdTokens::new(etcd)))
        }
        #[cfg(not(feature = "etcd"))]
        StoreUrl::Etcd { .. } => anyhow::bail!("store.url = {}: {}", config.store.url, crate::store::NO_ETCD),
    }
}

/// The file is small and local: each change is made at once under its lock.
impl TokenAdmin for TokenStore {
    fn add<'a>(&'a self, name: &'a str, limits: Limits<'a>) -> StoreFuture<'a, anyhow::Result<Secret>> {
        Box::pin(std::future::ready(TokenStore::add(self, name, limits)))
    }

    fn revoke<'a>(&'a self, name: &'a str) -> StoreFuture<'a, anyhow::Result<bool>> {
        Box::pin(std::future::ready(TokenStore::revoke(self, name)))
    }

    fn list(&self) -> StoreFuture<'_, anyhow::Result<Vec<TokenRecord>>> {
        Box::pin(std::future::ready(TokenStore::list(self)))
    }

    fn is_empty(&self) -> StoreFuture<'_, anyhow::Result<bool>> {
        Box::pin(std::future::ready(TokenStore::is_empty(self)))
    }
}
