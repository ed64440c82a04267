//! Where `relay token`, `relay invite` and a first start add, revoke and list tokens: the
//! data directory's file, or etcd shared by a fleet of relays.

#[cfg(feature = "etcd")]
use anyhow::Context;
use burrow_common::Secret;

use super::{Limits, TokenRecord, TokenStore};
use crate::{RelayConfig, config::StoreUrl};

/// The tokens of the store `store.url` names.
pub(crate) enum TokenAdmin {
    File(TokenStore),
    /// Boxed: the etcd client is large, and this is made once per command.
    #[cfg(feature = "etcd")]
    Etcd(Box<crate::store::EtcdTokens>),
}

impl TokenAdmin {
    pub(crate) async fn open(config: &RelayConfig) -> anyhow::Result<Self> {
        match &config.store.url {
            StoreUrl::File => Ok(TokenAdmin::File(TokenStore::open(&config.data_dir))),
            #[cfg(feature = "etcd")]
            StoreUrl::Etcd { .. } => {
                let etcd = crate::store::Etcd::connect(&config.store).await?;
                Ok(TokenAdmin::Etcd(Box::new(crate::store::EtcdTokens::new(etcd))))
            }
            #[cfg(not(feature = "etcd"))]
            StoreUrl::Etcd { .. } => anyhow::bail!("store.url = {}: {}", config.store.url, crate::store::NO_ETCD),
        }
    }

    /// Creates a token named `name` and returns it; only its hash is stored.
    pub(crate) async fn add(&self, name: &str, limits: Limits<'_>) -> anyhow::Result<Secret> {
        match self {
            TokenAdmin::File(store) => store.add(name, limits),
            #[cfg(feature = "etcd")]
            TokenAdmin::Etcd(store) => store
                .add(name, limits)
                .await?
                .with_context(|| format!("a token named {name:?} already exists (revoke it first)")),
        }
    }

    /// The first token of a store that has none, named `name`; `None` when another relay of
    /// the fleet made one meanwhile.
    pub(crate) async fn add_first(&self, name: &str) -> anyhow::Result<Option<Secret>> {
        match self {
            TokenAdmin::File(store) => Ok(Some(store.add(name, Limits::default())?)),
            #[cfg(feature = "etcd")]
            TokenAdmin::Etcd(store) => store.add(name, Limits::default()).await,
        }
    }

    /// Removes the token `name`; returns whether it existed.
    pub(crate) async fn revoke(&self, name: &str) -> anyhow::Result<bool> {
        match self {
            TokenAdmin::File(store) => store.revoke(name),
            #[cfg(feature = "etcd")]
            TokenAdmin::Etcd(store) => store.revoke(name).await,
        }
    }

    pub(crate) async fn list(&self) -> anyhow::Result<Vec<TokenRecord>> {
        match self {
            TokenAdmin::File(store) => store.list(),
            #[cfg(feature = "etcd")]
            TokenAdmin::Etcd(store) => store.list().await,
        }
    }

    pub(crate) async fn is_empty(&self) -> anyhow::Result<bool> {
        match self {
            TokenAdmin::File(store) => store.is_empty(),
            #[cfg(feature = "etcd")]
            TokenAdmin::Etcd(store) => store.is_empty().await,
        }
    }
}
