//! Claims and reservations in etcd: who holds or keeps each place.
//!
//! A place's record (`places/<p>`) names its tunnel. While relays hold it, the record has no
//! lease and each holder has a `held/<p>/<lease>` key under its own lease; once released,
//! the record and the tunnel's index move onto a lease of `reservation_ttl` that etcd ends.
//! Every write that can give a place to another tunnel rewrites its record, so comparing
//! the record's revision in the claim's transaction is enough to refuse any rival.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio_util::sync::CancellationToken;

use super::{
    Etcd, EtcdStore,
    error::{Call, StoreError, within},
    keys::{place_from_path, place_path},
};
use crate::{
    claims::{Place, TunnelKey},
    store::ServedElsewhere,
};

/// Rounds of read-then-compare a claim tries before it gives up, as if the place was taken.
const CLAIM_ROUNDS: usize = 3;

/// A place's record as read at one revision.
pub(super) struct Record {
    pub(super) key: TunnelKey,
    pub(super) mod_revision: i64,
    pub(super) lease: i64,
}

impl Record {
    pub(super) fn parse(kv: &KeyValue) -> Result<Self, StoreError> {
        let key = serde_json::from_slice(kv.value())
            .map_err(|source| StoreError::Corrupt { key: String::from_utf8_lossy(kv.key()).into(), source })?;
        Ok(Self { key, mod_revision: kv.mod_revision(), lease: kv.lease() })
    }
}

/// What a claim of `place` by `key` reads, all at one revision.
struct Seen {
    place: Option<Record>,
    /// Relays holding the place now.
    holders: i64,
    /// The tunnel's index: which place it has, and its revision.
    index: Option<(String, i64)>,
    /// Places the tunnel's token has, held or reserved (its tunnels' indexes).
    of_token: usize,
}

/// `key` compared as absent, or as unchanged since `revision`.
pub(super) fn unchanged(key: String, revision: Option<i64>) -> Compare {
    match revision {
        None => Compare::create_revision(key, CompareOp::Equal, 0),
        Some(revision) => Compare::mod_revision(key, CompareOp::Equal, revision),
    }
}

fn leased(lease: i64) -> Option<PutOptions> {
    Some(PutOptions::new().with_lease(lease))
}

fn json(key: &TunnelKey) -> Vec<u8> {
    serde_json::to_vec(key).unwrap_or_default()
}

impl EtcdStore {
    pub(super) async fn owner_of(&self, place: &Place) -> Result<Option<TunnelKey>, StoreError> {
        let record = self.etcd.get_one(&self.etcd.keys.place(place)).await?;
        Ok(record.as_ref().map(Record::parse).transpose()?.map(|r| r.key))
    }

    pub(super) async fn reserved_for(&self, key: &TunnelKey) -> Result<Option<Place>, StoreError> {
        let Some(index) = self.etcd.get_one(&self.etcd.keys.tunnel(key)).await? else { return Ok(None) };
        let Some(place) = std::str::from_utf8(index.value()).ok().and_then(place_from_path) else { return Ok(None) };
        // The index may be left behind by a takeover: the record decides.
        Ok((self.owner_of(&place).await? == Some(key.clone())).then_some(place))
    }

    pub(super) async fn claim(&self, key: &TunnelKey, place: &Place) -> Result<bool, StoreError> {
        let lease = self.live_lease()?;
        for _ in 0..CLAIM_ROUNDS {
            let seen = self.read_for_claim(key, place).await?;
            let moving = self.indexed_elsewhere((key, &seen), place).await?;
            if let Some((old, _)) = &moving
                && self.held_elsewhere(old, Some(&self.etcd.keys.held(old, lease))).await?
            {
                // Moving the record would take it out from under that relay (and let another
                // token take the place it still serves).
                return Err(ServedElsewhere(old.clone()).into());
            }
            if let Some(record) = seen.place.as_ref().filter(|r| r.key != *key) {
                let orphan = record.lease == 0 && seen.holders == 0;
                if !orphan {
                    return Ok(false);
                }
                if !self.reservation_ttl.is_zero() {
                    // Its holder stopped without releasing it: it is reserved from now.
                    reserve_orphan(&self.etcd, place, record, self.reservation_ttl).await?;
                    return Ok(false);
                }
            }
            if self.write_claim((key, place), &seen, moving.as_ref(), lease).await? {
                let of_token = seen.of_token + usize::from(seen.index.is_none());
                self.keep_token_within_cap(&key.token_id, of_token).await;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The other place the tunnel's index names, with its record, if the record is still
    /// the tunnel's (an index a takeover left behind names a place of another tunnel): a
    /// claim here moves the tunnel from there.
    async fn indexed_elsewhere(
        &self,
        (key, seen): (&TunnelKey, &Seen),
        place: &Place,
    ) -> Result<Option<(Place, Record)>, StoreError> {
        let Some(old) = seen.index.as_ref().and_then(|(path, _)| place_from_path(path)) else { return Ok(None) };
        if old == *place {
            return Ok(None);
        }
        let record = self.etcd.get_one(&self.etcd.keys.place(&old)).await?;
        Ok(record.as_ref().map(Record::parse).transpose()?.filter(|record| record.key == *key).map(|r| (old, r)))
    }

    async fn read_for_claim(&self, key: &TunnelKey, place: &Place) -> Result<Seen, StoreError> {
        let keys = &self.etcd.keys;
        let txn = Txn::new().and_then([
            TxnOp::get(keys.place(place), None),
            TxnOp::get(keys.held_by_any(place), Some(GetOptions::new().with_prefix().with_count_only())),
            TxnOp::get(keys.tunnel(key), None),
            TxnOp::get(keys.tunnels_of(&key.token_id), Some(GetOptions::new().with_prefix().with_count_only())),
        ]);
        let mut kv = self.etcd.client.kv_client();
        let answer = within(self.etcd.timeout, Call::Plain, kv.txn(txn)).await?;
        let mut gets = answer.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Get(mut get) => (get.count(), get.take_kvs().into_iter().next()),
            _ => (0, None),
        });
        let (_, place_kv) = gets.next().unwrap_or_default();
        let (holders, _) = gets.next().unwrap_or_default();
        let (_, index_kv) = gets.next().unwrap_or_default();
        let (of_token, _) = gets.next().unwrap_or_default();
        Ok(Seen {
            place: place_kv.as_ref().map(Record::parse).transpose()?,
            holders,
            index: index_kv.map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.mod_revision())),
            of_token: usize::try_from(of_token).unwrap_or_default(),
        })
    }

    /// One transaction: `key` holds `place` under `lease` if nothing read has changed. The
    /// tunnel's place elsewhere (`moving`, a reservation) moves here.
    async fn write_claim(
        &self,
        (key, place): (&TunnelKey, &Place),
        seen: &Seen,
        moving: Option<&(Place, Record)>,
        lease: i64,
    ) -> Result<bool, StoreError> {
        let keys = &self.etcd.keys;
        let path = place_path(place);
        let mut when = vec![
            unchanged(keys.place(place), seen.place.as_ref().map(|r| r.mod_revision)),
            unchanged(keys.tunnel(key), seen.index.as_ref().map(|(_, rev)| *rev)),
        ];
        let mut then = vec![
            TxnOp::put(keys.place(place), json(key), None),
            TxnOp::put(keys.held(place, lease), self.holder.clone(), leased(lease)),
            TxnOp::put(keys.tunnel(key), path.clone(), None),
        ];
        if let Some((old, record)) = moving {
            when.push(unchanged(keys.place(old), Some(record.mod_revision)));
            then.push(TxnOp::delete(keys.place(old), None));
            then.push(TxnOp::delete(keys.held(old, lease), None));
        }
        let mut kv = self.etcd.client.kv_client();
        let txn = Txn::new().when(when).and_then(then);
        Ok(within(self.etcd.timeout, Call::UnderLease, kv.txn(txn)).await?.succeeded())
    }

    pub(super) async fn release(&self, key: &TunnelKey, place: &Place) -> Result<(), StoreError> {
        let keys = &self.etcd.keys;
        for _ in 0..2 {
            let Some(kv) = self.etcd.get_one(&keys.place(place)).await? else { return Ok(()) };
            let record = Record::parse(&kv)?;
            if record.key != *key {
                return Ok(());
            }
            let held = self.live_lease().map(|lease| keys.held(place, lease)).ok();
            let when = [unchanged(keys.place(place), Some(record.mod_revision))];
            // While another relay of the fleet still serves the tunnel there, the place stays
            // held: a reservation's lease would end it under that relay. Should the others
            // release at the same moment, each seeing the rest, the sweep reserves the orphan.
            if self.held_elsewhere(place, held.as_deref()).await? {
                let mut client = self.etcd.client.kv_client();
                let then: Vec<_> = held.into_iter().map(|held| TxnOp::delete(held, None)).collect();
                let txn = Txn::new().when(when).and_then(then);
                if within(self.etcd.timeout, Call::Plain, client.txn(txn)).await?.succeeded() {
                    return Ok(());
                }
                continue;
            }
            let mut then = match self.reservation_lease().await? {
                None => vec![TxnOp::delete(keys.place(place), None), TxnOp::delete(keys.tunnel(key), None)],
                Some(reservation) => vec![
                    TxnOp::put(keys.place(place), kv.value(), leased(reservation)),
                    TxnOp::put(keys.tunnel(key), place_path(place), leased(reservation)),
                ],
            };
            then.extend(held.map(|held| TxnOp::delete(held, None)));
            let mut client = self.etcd.client.kv_client();
            let txn = Txn::new().when(when).and_then(then);
            if within(self.etcd.timeout, Call::Plain, client.txn(txn)).await?.succeeded() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Whether a relay other than the one holding `own` key holds `place`.
    async fn held_elsewhere(&self, place: &Place, own: Option<&str>) -> Result<bool, StoreError> {
        let holders =
            self.etcd.get_prefix(&self.etcd.keys.held_by_any(place), GetOptions::new().with_keys_only()).await?;
        Ok(holders.iter().any(|kv| Some(kv.key()) != own.map(str::as_bytes)))
    }

    /// A new lease of `reservation_ttl` for one released place; `None` when released places
    /// are forgotten at once.
    async fn reservation_lease(&self) -> Result<Option<i64>, StoreError> {
        reservation_lease(&self.etcd, self.reservation_ttl).await
    }
}

async fn reservation_lease(etcd: &Etcd, ttl: Duration) -> Result<Option<i64>, StoreError> {
    if ttl.is_zero() {
        return Ok(None);
    }
    let seconds = ttl.as_secs_f64().ceil() as i64;
    let mut lease = etcd.client.lease_client();
    Ok(Some(within(etcd.timeout, Call::Plain, lease.grant(seconds, None)).await?.id()))
}

/// Moves an orphaned record (no lease, no holder) and its index onto a reservation lease.
async fn reserve_orphan(etcd: &Etcd, place: &Place, record: &Record, ttl: Duration) -> Result<(), StoreError> {
    let Some(reservation) = reservation_lease(etcd, ttl).await? else { return Ok(()) };
    put_on_lease(etcd, place, record, reservation).await
}

async fn put_on_lease(etcd: &Etcd, place: &Place, record: &Record, lease: i64) -> Result<(), StoreError> {
    let keys = &etcd.keys;
    let txn = Txn::new().when([unchanged(keys.place(place), Some(record.mod_revision))]).and_then([
        TxnOp::put(keys.place(place), json(&record.key), leased(lease)),
        TxnOp::put(keys.tunnel(&record.key), place_path(place), leased(lease)),
    ]);
    let mut kv = etcd.client.kv_client();
    within(etcd.timeout, Call::Plain, kv.txn(txn)).await?;
    Ok(())
}

/// Sweeps for orphans every `period` until `stop`, so a crashed relay's places start their
/// reservation's TTL within a period even if nobody claims them.
pub(super) async fn sweep_periodically(etcd: Etcd, ttl: Duration, period: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sweep_orphans(&etcd, ttl, None).await {
            Ok(0) => {}
            Ok(reserved) => tracing::info!(reserved, "places of stopped relays are reserved for their tunnels"),
            Err(e) => tracing::debug!("sweeping for orphaned claims failed: {e:#}"),
        }
    }
}

/// Turns every place held by no relay and bound to no lease (its holders stopped, or lost
/// their leases) into a reservation that ends `ttl` from now, all on one shared lease.
/// Places held under the lease `leaving` (a relay stopping cleanly) count as held by none.
/// Returns how many it turned.
pub(super) async fn sweep_orphans(etcd: &Etcd, ttl: Duration, leaving: Option<i64>) -> Result<usize, StoreError> {
    let (places_prefix, held_prefix) = (etcd.keys.places(), etcd.keys.held_all());
    let records = etcd.get_prefix(&places_prefix, GetOptions::new()).await?;
    let held = etcd.get_prefix(&held_prefix, GetOptions::new().with_keys_only()).await?;
    let leaving = leaving.map(|lease| format!("/{lease:x}"));
    let held: Vec<&[u8]> = held
        .iter()
        .map(KeyValue::key)
        .filter(|key| leaving.as_ref().is_none_or(|own| !key.ends_with(own.as_bytes())))
        .collect();
    let mut orphans = Vec::new();
    for kv in records.iter().filter(|kv| kv.lease() == 0) {
        let path = String::from_utf8_lossy(&kv.key()[places_prefix.len()..]).into_owned();
        let holder_prefix = format!("{held_prefix}{path}/");
        if held.iter().any(|k| k.starts_with(holder_prefix.as_bytes())) {
            continue;
        }
        if let (Some(place), Ok(record)) = (place_from_path(&path), Record::parse(kv)) {
            orphans.push((place, record));
        }
    }
    if orphans.is_empty() {
        return Ok(0);
    }
    let shared = reservation_lease(etcd, ttl).await?;
    for (place, record) in &orphans {
        match shared {
            Some(lease) => put_on_lease(etcd, place, record, lease).await?,
            None => forget(etcd, place, record).await?,
        }
    }
    Ok(orphans.len())
}

async fn forget(etcd: &Etcd, place: &Place, record: &Record) -> Result<(), StoreError> {
    let keys = &etcd.keys;
    let txn = Txn::new()
        .when([unchanged(keys.place(place), Some(record.mod_revision))])
        .and_then([TxnOp::delete(keys.place(place), None), TxnOp::delete(keys.tunnel(&record.key), None)]);
    let mut kv = etcd.client.kv_client();
    within(etcd.timeout, Call::Plain, kv.txn(txn)).await?;
    Ok(())
}
