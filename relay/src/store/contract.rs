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

#[tokio::test]
async fn the_file_store_keeps_the_contract() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = super::FileStore::open(dir.path(), None, std::time::Duration::from_secs(3600))?;
    claims_and_reservations(&store).await
}
