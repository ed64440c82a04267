//! The claims table with no network: holders are fakes, the store is the file store in a
//! temporary directory, and the parking deadline runs on paused time.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use burrow_common::{CloseCode, Refusal};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Bound, ClaimError, Claimant, Claimed, Claims, Holder, Lookup, Place, SessionId, TunnelKey};
use crate::store::{FileStore, Store, StoreFuture};

/// A session as the table sees it: it answers or not, and remembers how it was closed.
struct FakeSession {
    session: SessionId,
    answers: AtomicBool,
    closed: Mutex<Option<CloseCode>>,
}

impl Holder for FakeSession {
    fn session(&self) -> SessionId {
        self.session
    }

    fn close(&self, code: CloseCode) {
        *self.closed.lock().unwrap() = Some(code);
    }

    fn answers(&self) -> StoreFuture<'_, bool> {
        let answers = self.answers.load(Ordering::Relaxed);
        Box::pin(async move { answers })
    }
}

fn session(id: SessionId) -> Arc<FakeSession> {
    Arc::new(FakeSession { session: id, answers: AtomicBool::new(true), closed: Mutex::new(None) })
}

fn key(token: &str, tunnel: &str) -> TunnelKey {
    TunnelKey::of(token, tunnel)
}

fn name(name: &str) -> Place {
    Place::Subdomain(name.into())
}

struct Fixture {
    claims: Claims<FakeSession>,
    store: FileStore,
    _dir: tempfile::TempDir,
}

fn fixture(max_per_token: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path(), None, Duration::from_secs(3600)).unwrap();
    Fixture { claims: Claims::new(max_per_token), store, _dir: dir }
}

type Claim = Result<Option<Claimed<FakeSession>>, ClaimError<FakeSession>>;

impl Fixture {
    /// `holder` claims `place` for `key`, replacing the session `replacing` if it holds it.
    async fn claim(&self, key: &TunnelKey, place: &Place, holder: &Arc<FakeSession>, replacing: Option<u64>) -> Claim {
        let who = Claimant { key, session: holder.session, replacing };
        self.claims.try_place(&self.store, &who, place, holder, |_| Bound::NotNeeded).await
    }

    /// Claims with the takeover rule, as a session's admission does.
    async fn claim_taking_over(
        &self,
        key: &TunnelKey,
        place: &Place,
        holder: &Arc<FakeSession>,
    ) -> Result<(), Refusal> {
        super::with_takeover(&key.tunnel, |replacing| self.claim(key, place, holder, replacing)).await?;
        Ok(())
    }

    fn serving(&self, place: &Place) -> Option<SessionId> {
        match self.claims.lookup(place) {
            Lookup::Serving(holder) => Some(holder.session),
            _ => None,
        }
    }
}

#[tokio::test]
async fn a_place_is_held_by_one_tunnel_and_stays_reserved_for_it() {
    let table = fixture(10);
    let (alice, bob) = (key("alice", "web"), key("bob", "web"));
    assert!(table.claim(&alice, &name("web"), &session(1), None).await.is_ok_and(|c| c.is_some()));
    assert!(matches!(table.claim(&bob, &name("web"), &session(2), None).await, Ok(None)), "held by alice");
    assert_eq!(table.serving(&name("web")), Some(1));

    assert_eq!(table.claims.release(&name("web"), 2), None, "only the holding session releases");
    assert_eq!(table.claims.release(&name("web"), 1), Some(alice.clone()));
    table.store.release(&alice, &name("web")).await.unwrap();
    assert!(matches!(table.claims.lookup(&name("web")), Lookup::Vacant));
    assert!(matches!(table.claim(&bob, &name("web"), &session(3), None).await, Ok(None)), "reserved for alice");
    assert!(!table.claims.is_held(&name("web")), "a refused claim leaves nothing behind");
    assert!(table.claim(&alice, &name("web"), &session(4), None).await.is_ok_and(|c| c.is_some()));
}

#[tokio::test]
async fn the_token_limit_counts_every_kind_of_place_once() {
    let table = fixture(2);
    table.claim(&key("alice", "ssh"), &Place::Port(20001), &session(1), None).await.ok().flatten().unwrap();
    table.claim(&key("alice", "web"), &name("web"), &session(1), None).await.ok().flatten().unwrap();
    let third = table.claim(&key("alice", "api"), &name("api"), &session(1), None).await;
    assert!(matches!(third, Err(ClaimError::Refused(Refusal::TokenTunnelLimit { max: 2 }))));
    assert!(table.claims.within_limit(&key("alice", "api")).is_err());
    assert!(table.claims.within_limit(&key("bob", "api")).is_ok(), "other tokens are not counted");

    // Taking over the token's own parked place adds nothing, so it is allowed at the limit.
    assert!(table.claims.park(&name("web"), 1, 4).is_some());
    let back = table.claim(&key("alice", "web"), &name("web"), &session(2), None).await;
    assert!(back.is_ok_and(|c| c.is_some_and(|c| c.handover.is_some())));
    assert_eq!(table.serving(&name("web")), Some(2));
}

#[tokio::test]
async fn tcp_and_udp_ports_of_one_number_are_separate_places_each_reserved_for_its_tunnel() {
    let table = fixture(10);
    let (game, web) = (key("alice", "game"), key("bob", "web"));
    table.claim(&game, &Place::UdpPort(20001), &session(1), None).await.ok().flatten().unwrap();
    table.claim(&web, &Place::Port(20001), &session(2), None).await.ok().flatten().unwrap();
    assert_eq!(table.serving(&Place::UdpPort(20001)), Some(1));
    assert_eq!(table.serving(&Place::Port(20001)), Some(2));

    // A restarted relay reads the UDP reservation back as a UDP port.
    table.claims.release(&Place::UdpPort(20001), 1);
    table.store.release(&game, &Place::UdpPort(20001)).await.unwrap();
    let dir = table._dir.path().to_path_buf();
    drop(table.store);
    let reopened = FileStore::open(&dir, None, Duration::from_secs(3600)).unwrap();
    assert_eq!(reopened.reserved_for(&game).await.unwrap(), Some(Place::UdpPort(20001)));
    assert_eq!(reopened.owner_of(&Place::UdpPort(20001)).await.unwrap(), Some(game));
    assert_eq!(reopened.owner_of(&Place::Port(20001)).await.unwrap(), Some(web), "the TCP port is bob's");
}

#[tokio::test]
async fn a_live_session_keeps_its_place_and_an_unresponsive_one_is_replaced() {
    let table = fixture(10);
    let web = key("alice", "web");
    let first = session(1);
    table.claim(&web, &name("web"), &first, None).await.ok().flatten().unwrap();

    let refused = table.claim_taking_over(&web, &name("web"), &session(2)).await;
    assert_eq!(refused, Err(Refusal::TunnelActive { name: "web".into() }));
    assert_eq!(*first.closed.lock().unwrap(), None);
    assert_eq!(table.serving(&name("web")), Some(1));

    first.answers.store(false, Ordering::Relaxed);
    assert_eq!(table.claim_taking_over(&web, &name("web"), &session(3)).await, Ok(()));
    assert_eq!(*first.closed.lock().unwrap(), Some(CloseCode::Replaced));
    assert_eq!(table.serving(&name("web")), Some(3));
    assert_eq!(table.claims.release(&name("web"), 1), None, "the replaced session's end frees nothing");
}

#[tokio::test]
async fn visitors_of_a_parked_place_wait_for_the_next_session_up_to_a_cap() {
    let table = fixture(10);
    let web = key("alice", "web");
    table.claim(&web, &name("web"), &session(1), None).await.ok().flatten().unwrap();
    let parked = table.claims.park(&name("web"), 1, 1).unwrap();
    assert!(table.claims.park(&name("web"), 1, 1).is_none(), "parked once");

    let Lookup::Parked(mut waiting, Some(_place)) = table.claims.lookup(&name("web")) else { panic!("parked") };
    assert!(matches!(table.claims.lookup(&name("web")), Lookup::Parked(_, None)), "one visitor may wait");
    assert_eq!(table.claims.counts().parked_visitors, 1);
    assert!(matches!(table.claim(&key("bob", "web"), &name("web"), &session(9), None).await, Ok(None)));

    let next = session(2);
    let claimed = table.claim(&web, &name("web"), &next, None).await.ok().flatten().unwrap();
    claimed.handover.unwrap().send_replace(Some(next.clone()));
    let carried = waiting.wait_for(Option::is_some).await.unwrap().clone();
    assert_eq!(carried.map(|holder| holder.session), Some(2));
    parked.taken_over().await;
    assert_eq!(table.claims.release(&name("web"), 1), None, "the lost session no longer holds it");
    let counts = table.claims.counts();
    assert_eq!((counts.serving, counts.parked), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn past_the_deadline_a_parked_place_is_released_and_its_visitors_told() {
    let table = fixture(10);
    let web = key("alice", "web");
    table.claim(&web, &name("web"), &session(1), None).await.ok().flatten().unwrap();
    let parked = vec![table.claims.park(&name("web"), 1, 4).unwrap()];
    let Lookup::Parked(mut waiting, Some(_place)) = table.claims.lookup(&name("web")) else { panic!("parked") };

    let started = Instant::now();
    super::until_taken_over(&parked, started + Duration::from_secs(30), &CancellationToken::new()).await;
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert_eq!(table.claims.release(&name("web"), 1), Some(web));
    assert!(waiting.wait_for(Option::is_some).await.is_err(), "nobody comes");
    assert!(matches!(table.claims.lookup(&name("web")), Lookup::Vacant));
}

#[tokio::test(start_paused = true)]
async fn a_relay_stop_ends_parking_at_once() {
    let table = fixture(10);
    table.claim(&key("alice", "web"), &name("web"), &session(1), None).await.ok().flatten().unwrap();
    let parked = vec![table.claims.park(&name("web"), 1, 4).unwrap()];
    let stop = CancellationToken::new();
    stop.cancel();
    let started = Instant::now();
    super::until_taken_over(&parked, started + Duration::from_secs(30), &stop).await;
    assert_eq!(started.elapsed(), Duration::ZERO);
}
