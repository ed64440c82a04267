//! A token keeps [`MAX_RESERVATIONS_PER_TOKEN`] places at most in etcd, as in the files: past
//! it, a claim forgets the token's reservations released longest ago. A reservation's index
//! (`tunnels/<token id>/<tunnel>`) is rewritten onto its lease when the place is released, so
//! its revision orders the releases; held places (no lease) stay.
//!
//! [`MAX_RESERVATIONS_PER_TOKEN`]: super::super::MAX_RESERVATIONS_PER_TOKEN

use etcd_client::{GetOptions, KeyValue, Txn, TxnOp};

use super::{
    EtcdStore,
    error::{Call, StoreError, within},
    keys::place_from_path,
    places::{Record, unchanged},
};

impl EtcdStore {
    /// After a claim left the token `token_id` with `places`: forgets its oldest
    /// reservations past the cap. The claim stands whatever happens here, so a failure is
    /// only logged; the next claim of the token tries again.
    pub(super) async fn keep_token_within_cap(&self, token_id: &str, places: usize) {
        if places <= self.reservation_cap {
            return;
        }
        if let Err(e) = self.forget_oldest_released(token_id).await {
            tracing::warn!(token_id, "forgetting a token's oldest reservations failed: {e:#}");
        }
    }

    async fn forget_oldest_released(&self, token_id: &str) -> Result<(), StoreError> {
        let indexes = self.etcd.get_prefix(&self.etcd.keys.tunnels_of(token_id), GetOptions::new()).await?;
        let Some(excess) = indexes.len().checked_sub(self.reservation_cap).filter(|n| *n > 0) else { return Ok(()) };
        let mut released: Vec<&KeyValue> = indexes.iter().filter(|kv| kv.lease() != 0).collect();
        released.sort_unstable_by_key(|kv| kv.mod_revision());
        for index in released.into_iter().take(excess) {
            self.forget_reservation(index).await?;
        }
        Ok(())
    }

    /// Deletes one reservation's index and the place's record, if both are as read: a claim
    /// made meanwhile keeps them.
    async fn forget_reservation(&self, index: &KeyValue) -> Result<(), StoreError> {
        let keys = &self.etcd.keys;
        let index_key = String::from_utf8_lossy(index.key()).into_owned();
        let mut when = vec![unchanged(index_key.clone(), Some(index.mod_revision()))];
        let mut then = vec![TxnOp::delete(index_key.as_str(), None)];
        // An index a takeover left behind names a place of another tunnel: the record decides.
        if let Some(place) = std::str::from_utf8(index.value()).ok().and_then(place_from_path) {
            let record = self.etcd.get_one(&keys.place(&place)).await?;
            if let Some(record) = record.as_ref().map(Record::parse).transpose()?
                && keys.tunnel(&record.key) == index_key
                && record.lease != 0
            {
                when.push(unchanged(keys.place(&place), Some(record.mod_revision)));
                then.push(TxnOp::delete(keys.place(&place), None));
            }
        }
        let mut kv = self.etcd.client.kv_client();
        within(self.etcd.timeout, Call::Plain, kv.txn(Txn::new().when(when).and_then(then))).await?;
        Ok(())
    }
}
