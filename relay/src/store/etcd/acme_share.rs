//! The fleet's ACME certificates, order locks and challenge answers in etcd. An order lock
//! and the answers live under the ordering relay's lease: a relay that dies mid-order frees
//! the name for another within the lease's TTL and leaves no stale answer behind.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::{
    EtcdStore,
    error::{Call, StoreError, within},
};
use crate::store::{AcmeShare, ChallengeKey, SharedCertificate, StoreFuture};

impl EtcdStore {
    async fn shared_certificate(&self, id: &str) -> Result<Option<SharedCertificate>, StoreError> {
        let key = self.etcd.keys.acme_certificate(id);
        let Some(kv) = self.etcd.get_one(&key).await? else { return Ok(None) };
        let certificate = serde_json::from_slice(kv.value()).map_err(|source| StoreError::Corrupt { key, source })?;
        Ok(Some(certificate))
    }

    async fn put_shared_certificate(&self, id: &str, certificate: &SharedCertificate) -> Result<(), StoreError> {
        let value = serde_json::to_vec(certificate).unwrap_or_default();
        let mut kv = self.etcd.client.kv_client();
        let put = kv.put(self.etcd.keys.acme_certificate(id), value, None);
        within(self.etcd.timeout, Call::Plain, put).await?;
        Ok(())
    }

    async fn remove_shared_certificate(&self, id: &str) -> Result<(), StoreError> {
        let mut kv = self.etcd.client.kv_client();
        within(self.etcd.timeout, Call::Plain, kv.delete(self.etcd.keys.acme_certificate(id), None)).await?;
        Ok(())
    }

    async fn start_order(&self, id: &str) -> Result<bool, StoreError> {
        let lease = self.live_lease()?;
        let key = self.etcd.keys.acme_order(id);
        let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key,
            format!("{lease:x}"),
            Some(PutOptions::new().with_lease(lease)),
        )]);
        let answer = within(self.etcd.timeout, Call::UnderLease, self.etcd.client.kv_client().txn(txn)).await?;
        Ok(answer.succeeded())
    }

    async fn end_order(&self, id: &str) -> Result<(), StoreError> {
        let Ok(lease) = self.live_lease() else { return Ok(()) };
        let key = self.etcd.keys.acme_order(id);
        // Only this relay's lock: after a lost lease, another relay may have taken it.
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, format!("{lease:x}"))])
            .and_then([TxnOp::delete(key, None)]);
        within(self.etcd.timeout, Call::Plain, self.etcd.client.kv_client().txn(txn)).await?;
        Ok(())
    }

    async fn put_answer(&self, challenge: &ChallengeKey, answer: &str) -> Result<(), StoreError> {
        let lease = self.live_lease()?;
        let mut kv = self.etcd.client.kv_client();
        let put = kv.put(self.etcd.keys.acme_answer(challenge), answer, Some(PutOptions::new().with_lease(lease)));
        within(self.etcd.timeout, Call::UnderLease, put).await?;
        Ok(())
    }

    async fn remove_answer(&self, challenge: &ChallengeKey) -> Result<(), StoreError> {
        let mut kv = self.etcd.client.kv_client();
        let delete = kv.delete(self.etcd.keys.acme_answer(challenge), None);
        within(self.etcd.timeout, Call::Plain, delete).await?;
        Ok(())
    }

    async fn answer(&self, challenge: &ChallengeKey) -> Result<Option<String>, StoreError> {
        let kv = self.etcd.get_one(&self.etcd.keys.acme_answer(challenge)).await?;
        Ok(kv.and_then(|kv| kv.value_str().ok().map(str::to_owned)))
    }
}

impl AcmeShare for EtcdStore {
    fn certificate<'a>(&'a self, id: &'a str) -> StoreFuture<'a, anyhow::Result<Option<SharedCertificate>>> {
        Box::pin(async move { Ok(self.shared_certificate(id).await?) })
    }

    fn put_certificate<'a>(
        &'a self,
        id: &'a str,
        certificate: &'a SharedCertificate,
    ) -> StoreFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { Ok(self.put_shared_certificate(id, certificate).await?) })
    }

    fn remove_certificate<'a>(&'a self, id: &'a str) -> StoreFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { Ok(self.remove_shared_certificate(id).await?) })
    }

    fn start_order<'a>(&'a self, id: &'a str) -> StoreFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move { Ok(EtcdStore::start_order(self, id).await?) })
    }

    fn end_order<'a>(&'a self, id: &'a str) -> StoreFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { Ok(EtcdStore::end_order(self, id).await?) })
    }

    fn put_answer<'a>(&'a self, challenge: &'a ChallengeKey, answer: &'a str) -> StoreFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { Ok(EtcdStore::put_answer(self, challenge, answer).await?) })
    }

    fn remove_answer<'a>(&'a self, challenge: &'a ChallengeKey) -> StoreFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { Ok(EtcdStore::remove_answer(self, challenge).await?) })
    }

    fn answer<'a>(&'a self, challenge: &'a ChallengeKey) -> StoreFuture<'a, anyhow::Result<Option<String>>> {
        Box::pin(async move { Ok(EtcdStore::answer(self, challenge).await?) })
    }
}
