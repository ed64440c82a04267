use std::time::Duration;

use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions};
use testkit::etcd::Etcd as TestEtcd;

use super::*;
use crate::{
    store::{ChallengeKey, SharedCertificate, Store},
    tokens::Limits,
};

/// A store on `etcd`, as a relay started with `store.url = etcd.url()` opens it.
async fn open(etcd: &TestEtcd, reservation_ttl: Duration) -> anyhow::Result<EtcdStore> {
    let config = StoreConfig { url: etcd.url().parse().map_err(anyhow::Error::msg)?, ..StoreConfig::default() };
    EtcdStore::open(&config, reservation_ttl, &Member::named("relay.test")).await
}

#[tokio::test]
async fn the_etcd_store_keeps_the_contract() -> anyhow::Result<()> {
    if !TestEtcd::available()? {
        return Ok(());
    }
    let etcd = TestEtcd::start().await?;
    let store = open(&etcd, Duration::from_secs(3600)).await?;
    super::super::contract::claims_and_reservations(&store).await
}

#[tokio::test]
async fn the_etcd_store_caps_reservations_per_token() -> anyhow::Result<()> {
    if !TestEtcd::available()? {
        return Ok(());
    }
    let etcd = TestEtcd::start().await?;
    let mut store = open(&etcd, Duration::from_secs(3600)).await?;
    store.reservation_cap = super::super::contract::TEST_CAP;
    super::super::contract::reservations_per_token_are_capped(&store).await
}

/// Two relays (two stores, two leases) claim one place for two tokens at the same moment,
/// 100 times: each time exactly one wins, and the place is that one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_racing_for_a_place_never_both_win() -> anyhow::Result<()> {
    if !TestEtcd::available()? {
        return Ok(());
    }
    let etcd = TestEtcd::start().await?;
    let (one, two) = (open(&etcd, Duration::from_secs(3600)).await?, open(&etcd, Duration::from_secs(3600)).await?);
    let (a, b) = (TunnelKey::of("0a", "web"), TunnelKey::of("0b", "web"));
    for round in 0..100u16 {
        let place = if round % 2 == 0 { Place::Port(20000 + round) } else { Place::Subdomain(format!("app{round}")) };
        let (won_a, won_b) = tokio::join!(one.claim(&a, &place), two.claim(&b, &place));
        let (won_a, won_b) = (won_a?, won_b?);
        assert!(won_a != won_b, "round {round}: a won {won_a}, b won {won_b}");
        let winner = if won_a { &a } else { &b };
        assert_eq!(EtcdStore::owner_of(&two, &place).await?.as_ref(), Some(winner), "round {round}");
    }
    Ok(())
}

/// One tunnel served by two relays of the fleet: the first to release it leaves it held (no
/// reservation lease that would end under the other relay); the last one reserves it.
#[tokio::test]
async fn a_place_two_relays_hold_stays_held_until_the_last_releases_it() -> anyhow::Result<()> {
    if !TestEtcd::available()? {
        return Ok(());
    }
    let etcd = TestEtcd::start().await?;
    let (one, two) = (open(&etcd, Duration::from_secs(3600)).await?, open(&etcd, Duration::from_secs(3600)).await?);
    let (web, place) = (TunnelKey::of("0a", "web"), Place::Port(20001));
    assert!(one.claim(&web, &place).await? && two.claim(&web, &place).await?, "both relays serve the tunnel");
    let lease_of_record =
        || async { anyhow::Ok(one.etcd.get_one(&one.etcd.keys.place(&place)).await?.map(|kv| kv.lease())) };
    one.release(&web, &place).await?;
    assert_eq!(lease_of_record().await?, Some(0), "still held by the second relay");
    assert!(!one.claim(&TunnelKey::of("0b", "web"), &place).await?, "another token cannot take it");
    two.release(&web, &place).await?;
    assert!(lease_of_record().await?.is_some_and(|lease| lease != 0), "reserved once nobody holds it");
    assert_eq!(EtcdStore::owner_of(&one, &place).await?, Some(web));
    Ok(())
}

/// A tunnel one relay serves at one place cannot be claimed at another through a second
/// relay (which would move its record out from under the first); once released there, it can.
#[tokio::test]
async fn a_tunnel_served_through_one_relay_is_claimed_at_the_same_place_through_another() -> anyhow::Result<()> {
    if !TestEtcd::available()? {
        return Ok(());
    }
    let etcd = TestEtcd::start().await?;
    let (one, two) = (open(&etcd, Duration::from_secs(3600)).await?, open(&etcd, Duration::from_secs(3600)).await?);
    let web = TunnelKey::of("0a", "web");
    let (served, other) = (Place::Port(20001), Place::Port(20002));
    assert!(one.claim(&web, &served).await?);
    let refused = two.claim(&web, &other).await.expect_err("the tunnel is served elsewhere");
    assert!(matches!(&refused, StoreError::ServedElsewhere(at) if at.0 == served), "{refused:#}");
    assert_eq!(EtcdStore::owner_of(&one, &served).await?, Some(web.clone()), "the first relay's place is intact");
    assert!(two.claim(&web, &served).await?, "the same place through the second relay");
    one.release(&web, &served).await?;
    two.release(&web, &served).await?;
    assert!(two.claim(&web, &other).await?, "a reserved tunnel moves to a new place");
    assert_eq!(EtcdStore::owner_of(&one, &served).await?, None);
    Ok(())
}

/// A token added or revoked through any relay's admin is reported by every store's
/// `token_changes`, and `verify_token` sees it at once.
#[tokio::test]
async fn token_changes_are_watched() -> anyhow::Result<()> {
    if !TestEtcd::available()? {
        return Ok(());
    }
    let etcd = TestEtcd::start().await?;
    let store = open(&etcd, Duration::from_secs(3600)).await?;
    let config = StoreConfig { url: etcd.url().parse().map_err(anyhow::Error::msg)?, ..StoreConfig::default() };
    let admin = EtcdTokens::new(Etcd::connect(&config).await?);
    assert!(admin.is_empty().await?);
    let changed = Store::token_changes(&store);
    let token = admin.add("alice", Limits::default()).await?.context("a new name")?;
    tokio::time::timeout(Duration::from_secs(1), changed).await.context("the add was seen within 1 s")?;
    let digest = crate::tokens::hash(&token);
    assert_eq!(EtcdStore::verify_token(&store, digest).map(|g| g.name), Some("alice".into()));
    assert!(admin.add("alice", Limits::default()).await?.is_none(), "names are unique");
    assert_eq!(admin.list().await?.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["alice"]);

    let changed = Store::token_changes(&store);
    assert!(admin.revoke("alice").await?);
    tokio::time::timeout(Duration::from_secs(1), changed).await.context("the revoke was seen within 1 s")?;
    assert_eq!(EtcdStore::verify_token(&store, digest), None);
    assert!(!admin.revoke("alice").await?);
    Ok(())
}

/// Tokens are checked from memory: while etcd is down a known token is still granted and an
/// unknown one refused; once etcd is back, a revocation made meanwhile reaches the cache.
#[tokio::test]
async fn tokens_are_checked_while_etcd_is_down() -> anyhow::Result<()> {
    if !TestEtcd::available()? {
        return Ok(());
    }
    let mut etcd = TestEtcd::start().await?;
    let config = StoreConfig { url: etcd.url().parse().map_err(anyhow::Error::msg)?, ..StoreConfig::default() };
    let admin = EtcdTokens::new(Etcd::connect(&config).await?);
    let early = admin.add("early", Limits::default()).await?.context("a new name")?;
    let store = open(&etcd, Duration::from_secs(3600)).await?;
    let changed = Store::token_changes(&store);
    let alice = admin.add("alice", Limits::default()).await?.context("a new name")?;
    tokio::time::timeout(Duration::from_secs(1), changed).await.context("the add was seen within 1 s")?;

    etcd.kill();
    let granted = |token| EtcdStore::verify_token(&store, crate::tokens::hash(token)).map(|g| g.name);
    assert_eq!(granted(&early), Some("early".into()), "read when the store opened");
    assert_eq!(granted(&alice), Some("alice".into()), "learnt from the watch");
    let unknown = crate::tokens::generate();
    assert_eq!(granted(&unknown), None);

    etcd.restart().await?;
    let admin = EtcdTokens::new(Etcd::connect(&config).await?);
    assert!(admin.revoke("alice").await?);
    let dropped = async {
        loop {
            let changed = Store::token_changes(&store);
            if granted(&alice).is_none() {
                return;
            }
            changed.await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), dropped).await.context("the revoke reached the cache")?;
    assert_eq!(granted(&early), Some("early".into()), "a reload keeps the others");
    Ok(())
}

/// A relay stopping cleanly leaves the fleet at once: its member key and its `held/` keys go
/// with its revoked lease, a place it held alone is reserved for its tunnel, and a place
/// another relay also holds stays held.
#[tokio::test]
async fn a_closed_store_reserves_what_it_held_and_leaves() -> anyhow::Result<()> {
    if !TestEtcd::available()? {
        return Ok(());
    }
    let etcd = TestEtcd::start().await?;
    let (leaving, other) =
        (open(&etcd, Duration::from_secs(3600)).await?, open(&etcd, Duration::from_secs(3600)).await?);
    let (a, b, shared) = (TunnelKey::of("0a", "web"), TunnelKey::of("0b", "web"), TunnelKey::of("0c", "web"));
    let (alone, both) = (Place::Port(20001), Place::Port(20002));
    assert!(
        leaving.claim(&a, &alone).await? && leaving.claim(&shared, &both).await? && other.claim(&shared, &both).await?
    );
    let lease = leaving.live_lease()?;
    Store::close(&leaving).await?;

    let keys = &other.etcd.keys;
    let members = other.etcd.get_prefix(&keys.members(), GetOptions::new().with_keys_only()).await?;
    assert_eq!(members.iter().map(KeyValue::key).collect::<Vec<_>>(), [keys.member(other.live_lease()?).as_bytes()]);
    let held = other.etcd.get_prefix(&keys.held_all(), GetOptions::new().with_keys_only()).await?;
    assert!(held.iter().all(|kv| !kv.key().ends_with(format!("/{lease:x}").as_bytes())), "its held/ keys are gone");
    let etcd_of_other = &other.etcd;
    let lease_of = |place: &Place| {
        let key = keys.place(place);
        async move { anyhow::Ok(etcd_of_other.get_one(&key).await?.map(|kv| kv.lease())) }
    };
    assert!(lease_of(&alone).await?.is_some_and(|lease| lease != 0), "reserved, not left held");
    assert_eq!(lease_of(&both).await?, Some(0), "still held by the other relay");
    assert!(!other.claim(&b, &alone).await?, "reserved for a");
    assert!(other.claim(&a, &alone).await?, "a takes it back through the other relay");
    Ok(())
}

/// A released place is kept for its tunnel until its reservation's lease ends, and then
/// etcd forgets it (awaited through a watch on its delete, not a sleep).
#[tokio::test]
async fn a_reservation_ends_with_its_lease() -> anyhow::Result<()> {
    if !TestEtcd::available()? {
        return Ok(());
    }
    let etcd = TestEtcd::start().await?;
    let store = open(&etcd, Duration::from_secs(2)).await?;
    let (a, b, place) = (TunnelKey::of("0a", "web"), TunnelKey::of("0b", "web"), Place::Port(20001));
    assert!(EtcdStore::claim(&store, &a, &place).await?);
    let mut watch = store.etcd.client.watch_client();
    let mut deletes = watch.watch(store.etcd.keys.place(&place), Some(WatchOptions::new())).await?;
    EtcdStore::release(&store, &a, &place).await?;
    assert!(!EtcdStore::claim(&store, &b, &place).await?, "reserved for a");
    let deleted = async {
        while let Some(answer) = deletes.message().await? {
            if answer.events().iter().any(|e| e.event_type() == EventType::Delete) {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("the watch ended")
    };
    tokio::time::timeout(Duration::from_secs(10), deleted).await.context("the reservation expired")??;
    assert_eq!(EtcdStore::reserved_for(&store, &a).await?, None);
    assert!(EtcdStore::claim(&store, &b, &place).await?, "free once the reservation ended");
    Ok(())
}

/// A relay that stops without releasing (its lease ends) leaves its places reserved for
/// their tunnels, not free for others.
#[tokio::test]
async fn a_stopped_relays_places_stay_reserved() -> anyhow::Result<()> {
    if !TestEtcd::available()? {
        return Ok(());
    }
    let etcd = TestEtcd::start().await?;
    let (gone, other) = (open(&etcd, Duration::from_secs(3600)).await?, open(&etcd, Duration::from_secs(3600)).await?);
    let (a, b, place) = (TunnelKey::of("0a", "web"), TunnelKey::of("0b", "web"), Place::Port(20001));
    assert!(EtcdStore::claim(&gone, &a, &place).await?);
    let lease = gone.live_lease()?;
    drop(gone);
    other.etcd.client.lease_client().revoke(lease).await?;
    assert!(!EtcdStore::claim(&other, &b, &place).await?, "reserved for a");
    assert_eq!(EtcdStore::owner_of(&other, &place).await?, Some(a.clone()));
    assert!(EtcdStore::claim(&other, &a, &place).await?, "a takes it back through another relay");
    Ok(())
}

/// A relay whose lease is revoked behind its back (as when it was cut off past the TTL)
/// learns it within a renewal period, takes a new lease, and claims again under it.
#[tokio::test]
async fn a_lost_lease_is_noticed_and_replaced() -> anyhow::Result<()> {
    if !TestEtcd::available()? {
        return Ok(());
    }
    let etcd = TestEtcd::start().await?;
    let url = etcd.url().parse().map_err(anyhow::Error::msg)?;
    let config = StoreConfig { url, lease_ttl: Duration::from_secs(3), ..StoreConfig::default() };
    let store = EtcdStore::open(&config, Duration::from_secs(3600), &Member::named("relay.test")).await?;
    let (a, place) = (TunnelKey::of("0a", "web"), Place::Port(20001));
    assert!(EtcdStore::claim(&store, &a, &place).await?);
    let lost = Store::lease_lost(&store);
    let old = store.live_lease()?;
    store.etcd.client.lease_client().revoke(old).await?;
    tokio::time::timeout(Duration::from_millis(1500), lost).await.context("the loss was noticed within 1.5 s")?;
    let mut lease = store.lease.clone();
    let renewed = lease.wait_for(|state| matches!(state, LeaseState::Live(new) if *new != old));
    tokio::time::timeout(Duration::from_secs(5), renewed).await.context("a new lease")??;
    assert_eq!(EtcdStore::owner_of(&store, &place).await?, Some(a.clone()), "kept for its tunnel meanwhile");
    assert!(EtcdStore::claim(&store, &a, &place).await?, "claimed again under the new lease");
    Ok(())
}

/// A stopped relay's places become reservations within a sweep period even when nobody
/// claims them (seen through a watch on the record, not a sleep).
#[tokio::test]
async fn the_sweep_reserves_a_stopped_relays_places_unasked() -> anyhow::Result<()> {
    if !TestEtcd::available()? {
        return Ok(());
    }
    let etcd = TestEtcd::start().await?;
    let gone = open(&etcd, Duration::from_secs(3600)).await?;
    let url = etcd.url().parse().map_err(anyhow::Error::msg)?;
    let config = StoreConfig { url, lease_ttl: Duration::from_secs(2), ..StoreConfig::default() };
    let sweeper = EtcdStore::open(&config, Duration::from_secs(3600), &Member::named("sweeper.test")).await?;
    let (a, place) = (TunnelKey::of("0a", "web"), Place::Port(20001));
    assert!(EtcdStore::claim(&gone, &a, &place).await?);
    let mut watch = sweeper.etcd.client.watch_client();
    let mut changes = watch.watch(sweeper.etcd.keys.place(&place), None).await?;
    let lease = gone.live_lease()?;
    drop(gone);
    sweeper.etcd.client.lease_client().revoke(lease).await?;
    let reserved = async {
        while let Some(answer) = changes.message().await? {
            if answer.events().iter().any(|e| e.kv().is_some_and(|kv| kv.lease() != 0)) {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("the watch ended")
    };
    tokio::time::timeout(Duration::from_secs(5), reserved).await.context("reserved within a sweep period")??;
    assert_eq!(EtcdStore::owner_of(&sweeper, &place).await?, Some(a));
    Ok(())
}

/// One relay at a time may order a certificate for the fleet; the turn, and the challenge
/// answers it published, go with its lease when it leaves; certificates stay for every relay.
#[tokio::test]
async fn acme_order_turns_are_exclusive_and_answers_go_with_the_lease() -> anyhow::Result<()> {
    if !TestEtcd::available()? {
        return Ok(());
    }
    let etcd = TestEtcd::start().await?;
    let (first, second) = (open(&etcd, Duration::from_secs(60)).await?, open(&etcd, Duration::from_secs(60)).await?);
    let (first_share, second_share) =
        (first.acme_share().expect("etcd shares"), second.acme_share().expect("etcd shares"));
    let id = "0123456789abcdef/app.burrow.test";
    assert!(first_share.start_order(id).await?);
    assert!(!second_share.start_order(id).await?, "taken by the first relay");
    second_share.end_order(id).await?;
    assert!(!second_share.start_order(id).await?, "ending a turn it never had changes nothing");

    let (http, alpn) = (ChallengeKey::Http("tok_en-1".into()), ChallengeKey::TlsAlpn("app.burrow.test".into()));
    first_share.put_answer(&http, "tok_en-1.thumbprint").await?;
    first_share.put_answer(&alpn, "00ff").await?;
    assert_eq!(second_share.answer(&http).await?.as_deref(), Some("tok_en-1.thumbprint"));
    first_share.remove_answer(&http).await?;
    assert_eq!(second_share.answer(&http).await?, None);

    let certificate = SharedCertificate { chain_pem: "chain".into(), key_pem: "key".into() };
    first_share.put_certificate(id, &certificate).await?;
    Store::close(&first).await?;
    assert!(second_share.start_order(id).await?, "the turn went with the first relay's lease");
    assert_eq!(second_share.answer(&alpn).await?, None, "so did its answers");
    let kept = second_share.certificate(id).await?.expect("certificates outlive their relay");
    assert_eq!((kept.chain_pem.as_str(), kept.key_pem.as_str()), ("chain", "key"));
    second_share.remove_certificate(id).await?;
    assert!(second_share.certificate(id).await?.is_none());
    Ok(())
}
