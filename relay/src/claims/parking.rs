//! Parking: when a session is lost, its claims stay for `park_visitors_for`. Visitors that
//! arrive meanwhile wait on one handover, whatever the kind of place, and are carried over
//! the tunnel's next session; past the deadline the claim is released.

use std::sync::Arc;

use tokio::{
    sync::{Semaphore, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{Claims, Holder, Parking, Place, PublicSocket, SessionId, State, Successor, TunnelKey};

/// A claim kept for its tunnel's next session.
pub(crate) struct Parked<R> {
    pub(crate) place: Place,
    pub(crate) key: TunnelKey,
    /// A port's socket: a TCP port still accepts its waiting visitors, a UDP port counts
    /// what arrives as dropped.
    pub(crate) socket: Option<PublicSocket>,
    pub(crate) successor: Successor<R>,
    /// The places of the visitors waiting.
    pub(crate) waiting: Arc<Semaphore>,
}

impl<R: Holder> Claims<R> {
    /// Parks `place` if the lost `session` still serves it; at most `max_waiting` visitors
    /// wait for the next session meanwhile.
    pub(crate) fn park(&self, place: &Place, session: SessionId, max_waiting: usize) -> Option<Parked<R>> {
        let mut entries = self.entries();
        let entry = entries.get_mut(place).filter(|e| e.session == session)?;
        if !matches!(entry.state, State::Serving(_)) {
            return None;
        }
        let (handover, successor) = watch::channel(None);
        let waiting = Arc::new(Semaphore::new(max_waiting));
        entry.state = State::Parked(Parking { handover, waiting: waiting.clone(), capacity: max_waiting });
        Some(Parked { place: place.clone(), key: entry.key.clone(), socket: entry.socket.clone(), successor, waiting })
    }
}

impl<R> Parked<R> {
    /// Completes once a next session has taken the claim over, or it was released.
    pub(crate) async fn taken_over(&self) {
        let mut successor = self.successor.clone();
        // An error means the claim was released: nobody will take it over either.
        successor.wait_for(Option::is_some).await.ok();
    }
}

/// Waits until every claim in `parked` has been taken over, `deadline` has passed or the
/// relay stops.
pub(crate) async fn until_taken_over<R>(parked: &[Parked<R>], deadline: Instant, cancel: &CancellationToken) {
    let all_taken = async {
        for claim in parked {
            claim.taken_over().await;
        }
    };
    tokio::select! {
        () = all_taken => {}
        () = tokio::time::sleep_until(deadline) => {}
        () = cancel.cancelled() => {}
    }
}
