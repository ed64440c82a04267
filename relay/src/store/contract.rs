//! The suite every [`Store`] passes, the data directory's files and etcd alike: what the
//! claims code relies on, whichever store a relay was started with.

use super::Store;
use crate::claims::{Place, TunnelKey};

/// A claim wins only a free place or the claimant's own; a released place stays reserved
/// for its tunnel; a claim elsewhere moves the tunnel's reservation.
pub(super) async fn claims_and_reservations(store: &dyn Store) -> anyhow::Result<()> {
    let (a, b) = (TunnelKey::of("0a", "web"), TunnelKey::of("0b", "web"));
    let (port, sub) = (Place::Port(20001), Place::Subdomain("myapp".into()));
    assert!(store.claim(&a, &port).await?);
    assert!(store.claim(&a, &port).await?, "its own place, again");
    assert!(!store.claim(&b, &port).await?, "held by a");
    assert_eq!(store.owner_of(&port).await?, Some(a.clone()));
    assert_eq!(store.reserved_for(&a).await?, Some(port.clone()));
    assert_eq!(store.reserved_for(&b).await?, None);

    store.release(&a, &port).await?;
    assert!(!store.claim(&b, &port).await?, "reserved for a");
    assert_eq!(store.owner_of(&port).await?, Some(a.clone()));
    assert_eq!(store.reserved_for(&a).await?, Some(port.clone()));
    assert!(store.claim(&a, &port).await?, "a's own reservation");

    assert!(store.claim(&a, &sub).await?);
    assert_eq!(store.owner_of(&port).await?, None, "a claim moves the claimant's reservation");
    assert_eq!(store.reserved_for(&a).await?, Some(sub.clone()));
    assert!(store.claim(&b, &port).await?, "free again");
    store.release(&b, &sub).await?;
    assert_eq!(store.owner_of(&sub).await?, Some(a), "releasing another's place changes nothing");
    Ok(())
}

/// The cap of places per token a contract test sets, small enough to pass quickly.
pub(super) const TEST_CAP: usize = 3;

/// A token keeps [`TEST_CAP`] places at most: a claim past it forgets the token's
/// reservations released longest ago, never a held place nor another token's.
pub(super) async fn reservations_per_token_are_capped(store: &dyn Store) -> anyhow::Result<()> {
    let (held, other) = (TunnelKey::of("0a", "held"), TunnelKey::of("0b", "web"));
    assert!(store.claim(&held, &Place::Port(21000)).await?);
    assert!(store.claim(&other, &Place::Port(22000)).await?);
    store.release(&other, &Place::Port(22000)).await?;
    let churn = |i: u16| (TunnelKey::of("0a", &format!("t{i}")), Place::Port(21001 + i));
    for i in 0..=TEST_CAP as u16 {
        let (key, place) = churn(i);
        assert!(store.claim(&key, &place).await?, "t{i}");
        store.release(&key, &place).await?;
    }
    let reserved = |i: u16| async move { store.reserved_for(&churn(i).0).await };
    assert_eq!((reserved(0).await?, reserved(1).await?), (None, None), "the oldest released went first");
    assert_eq!(reserved(2).await?, Some(churn(2).1));
    assert_eq!(reserved(3).await?, Some(churn(3).1));
    assert_eq!(store.reserved_for(&held).await?, Some(Place::Port(21000)), "a held place is never forgotten");
    assert_eq!(store.reserved_for(&other).await?, Some(Place::Port(22000)), "other tokens are not touched");
    assert!(store.claim(&other, &churn(0).1).await?, "a forgotten reservation's place is free");
    Ok(())
}

#[tokio::test]
async fn the_file_store_keeps_the_contract() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = super::FileStore::open(dir.path(), None, std::time::Duration::from_secs(3600))?;
    claims_and_reservations(&store).await
}

#[tokio::test]
async fn the_file_store_caps_reservations_per_token() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = super::FileStore::open(dir.path(), None, std::time::Duration::from_secs(3600))?;
    reservations_per_token_are_capped(&store.with_reservation_cap(TEST_CAP)).await
}
