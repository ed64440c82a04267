//! Claiming one place: decided in the table, confirmed by the store, then finished or undone;
//! and the takeover rule for a place another session of the same tunnel holds.

use std::{collections::HashMap, sync::Arc};

use burrow_common::{CloseCode, Refusal};

use super::{Claims, Entry, Handover, Holder, Parking, Place, PublicSocket, SessionId, State, TunnelKey};
use crate::store::{ServedElsewhere, Store};

/// Who is asking for a place.
pub(crate) struct Claimant<'a> {
    pub(crate) key: &'a TunnelKey,
    pub(crate) session: SessionId,
    /// A session of the same tunnel that the caller found dead and may replace.
    pub(crate) replacing: Option<SessionId>,
}

pub(crate) enum ClaimError<R> {
    Refused(Refusal),
    /// Another session of the same token and tunnel name serves the place; the caller must
    /// find out whether it is still alive before claiming with `replacing` set.
    HeldBySameTunnel(Arc<R>),
}

impl<R> From<Refusal> for ClaimError<R> {
    fn from(refusal: Refusal) -> Self {
        ClaimError::Refused(refusal)
    }
}

/// A place won, serving the claimant's route from now on.
pub(crate) struct Claimed<R> {
    pub(crate) place: Place,
    /// A port's socket: bound for this claim, or kept from the claim it took over.
    pub(crate) socket: Option<PublicSocket>,
    /// Set when the claim took over a parked one: sending the new route on it resumes the
    /// visitors that waited.
    pub(crate) handover: Option<Handover<R>>,
}

/// What binding a newly claimed place gave.
pub(crate) enum Bound {
    Socket(PublicSocket),
    /// The place has no socket of its own (a subdomain is served by the shared listeners).
    NotNeeded,
    Failed,
}

/// The table's decision on one place, before the store is asked.
enum Decision {
    /// Held by another tunnel, or being claimed: not for this claimant.
    Taken,
    /// Free here: the place is the claimant's if the store agrees.
    Fresh,
    /// The claimant's own tunnel held it (parked, or by the session it replaces).
    TakenOver,
}

impl<R: Holder> Claims<R> {
    /// Claims `place` for `who`, serving `route`: `Ok(None)` when the place is not free for it.
    /// `bind` opens what a newly held place needs (a port's socket).
    pub(crate) async fn try_place(
        &self,
        store: &dyn Store,
        who: &Claimant<'_>,
        place: &Place,
        route: &Arc<R>,
        bind: impl FnOnce(&Place) -> Bound,
    ) -> Result<Option<Claimed<R>>, ClaimError<R>> {
        let fresh = match self.decide(who, place)? {
            Decision::Taken => return Ok(None),
            Decision::Fresh => true,
            Decision::TakenOver => false,
        };
        let socket = match fresh.then(|| bind(place)) {
            Some(Bound::Failed) => {
                self.undo(place, who.session);
                return Ok(None);
            }
            Some(Bound::Socket(socket)) => Some(socket),
            Some(Bound::NotNeeded) | None => None,
        };
        let won = match store.claim(who.key, place).await {
            Ok(won) => won,
            Err(e) => {
                // Not "taken": the place may well be free, and the agent asks again later.
                tracing::warn!(%place, "the store could not record the claim: {e:#}");
                self.undo(place, who.session);
                let why = match e.downcast_ref::<ServedElsewhere>() {
                    Some(elsewhere) => elsewhere.to_string(),
                    None => "the relay's store is unreachable".to_string(),
                };
                return Err(ClaimError::Refused(Refusal::TryLater { why }));
            }
        };
        if !won {
            self.undo(place, who.session);
            if !fresh && let Err(e) = store.release(who.key, place).await {
                tracing::warn!(%place, "the store could not record a release: {e:#}");
            }
            return Ok(None);
        }
        Ok(self.finish(place, who.session, route, socket))
    }

    /// Refuses a claimant whose token holds as many places as it may, before it looks for one.
    pub(crate) fn within_limit(&self, key: &TunnelKey) -> Result<(), Refusal> {
        within_limit(&self.entries(), key, self.max_per_token.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Applies the per-token limit and the takeover rule, and marks the place as being
    /// claimed by `who` when it may have it.
    fn decide(&self, who: &Claimant<'_>, place: &Place) -> Result<Decision, ClaimError<R>> {
        let mut entries = self.entries();
        within_limit(&entries, who.key, self.max_per_token.load(std::sync::atomic::Ordering::Relaxed))?;
        let Some(entry) = entries.get_mut(place) else {
            let entry =
                Entry { key: who.key.clone(), session: who.session, socket: None, state: State::Claiming(None) };
            entries.insert(place.clone(), entry);
            return Ok(Decision::Fresh);
        };
        if entry.key != *who.key {
            return Ok(Decision::Taken);
        }
        let parked = match std::mem::replace(&mut entry.state, State::Claiming(None)) {
            State::Serving(route) if who.replacing != Some(entry.session) => {
                entry.state = State::Serving(route.clone());
                return Err(ClaimError::HeldBySameTunnel(route));
            }
            State::Serving(route) => {
                tracing::info!(%place, "replacing the unresponsive previous session of this tunnel");
                route.close(CloseCode::Replaced);
                None
            }
            State::Parked(parking) => {
                tracing::info!(%place, "the tunnel's agent is back; its waiting visitors go to the new session");
                Some(parking)
            }
            claiming @ State::Claiming(_) => {
                entry.state = claiming;
                return Ok(Decision::Taken);
            }
        };
        entry.session = who.session;
        entry.state = State::Claiming(parked);
        Ok(Decision::TakenOver)
    }

    /// Forgets a claim the store refused, or whose place could not be bound.
    fn undo(&self, place: &Place, session: SessionId) {
        let mut entries = self.entries();
        if entries.get(place).is_some_and(|e| e.session == session && matches!(e.state, State::Claiming(_))) {
            entries.remove(place);
        }
    }

    /// The store agreed: the claim serves `route` from now on.
    fn finish(
        &self,
        place: &Place,
        session: SessionId,
        route: &Arc<R>,
        socket: Option<PublicSocket>,
    ) -> Option<Claimed<R>> {
        self.granted.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let mut entries = self.entries();
        let entry = entries.get_mut(place).filter(|e| e.session == session && matches!(e.state, State::Claiming(_)))?;
        let State::Claiming(parked) = std::mem::replace(&mut entry.state, State::Serving(route.clone())) else {
            unreachable!("the entry was checked to be claiming");
        };
        if socket.is_some() {
            entry.socket = socket;
        }
        let handover = parked.map(|Parking { handover, .. }| handover);
        Some(Claimed { place: place.clone(), socket: entry.socket.clone(), handover })
    }
}

/// One place of the claimant's own tunnel, held by a session it replaces or parked, is not
/// counted: taking it over adds nothing. Every other place of the token counts, whatever its
/// kind, however many sessions ask for the same tunnel name.
fn within_limit<R>(entries: &HashMap<Place, Entry<R>>, key: &TunnelKey, max: usize) -> Result<(), Refusal> {
    let of_token = entries.values().filter(|e| e.key.token_id == key.token_id).count();
    let own = entries.values().any(|e| e.key == *key);
    if of_token - usize::from(own) >= max {
        return Err(Refusal::TokenTunnelLimit { max });
    }
    Ok(())
}

/// Claims with `attempt`. If an older session of the same tunnel holds the place, that
/// session is replaced only if it no longer answers: a crashed agent's successor gets the
/// place back, while two live agents never knock each other off in turn.
pub(crate) async fn with_takeover<T, R: Holder, F>(
    tunnel: &str,
    mut attempt: impl FnMut(Option<SessionId>) -> F,
) -> Result<T, Refusal>
where
    F: Future<Output = Result<T, ClaimError<R>>>,
{
    let mut replacing = None;
    loop {
        match attempt(replacing).await {
            Ok(claimed) => return Ok(claimed),
            Err(ClaimError::Refused(refusal)) => return Err(refusal),
            Err(ClaimError::HeldBySameTunnel(holder)) => {
                let held_by = holder.session();
                if replacing == Some(held_by) || holder.answers().await {
                    return Err(Refusal::TunnelActive { name: tunnel.to_string() });
                }
                replacing = Some(held_by);
            }
        }
    }
}
