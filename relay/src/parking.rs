//! A lost session's claims, parked: when an agent's session is lost (not ended by the agent,
//! not replaced, not stopped by the relay), each of its claims stays for `park_visitors_for`
//! (see [`crate::claims`]). A parked port keeps accepting: its visitors wait here. A parked
//! subdomain's requests wait in the HTTP listeners. All are carried over the tunnel's next
//! session once the agent is back; past the deadline they get a clean end and the claims
//! are released as if the session had just ended.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use burrow_common::config::duration;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    Shared,
    claims::{Parked, Place, PublicSocket, Route, SessionId, Successor, until_taken_over},
    limits::{Admission, Places},
    metrics::REFUSED_PARK_FULL,
    tunnel::{accept_until, forward},
};

/// How long the unread bytes of a visitor being closed are read away: the kernel answers a
/// close with unread data by a reset, and these visitors should see a plain end of stream.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Parks a lost session's claims; returns when each has been taken over or released.
pub(crate) async fn park(shared: &Arc<Shared>, places: &[Place], session: SessionId, cancel: &CancellationToken) {
    let config = shared.config();
    let parked: Vec<Parked<Route>> =
        places.iter().filter_map(|place| shared.claims.park(place, session, config.max_parked_visitors)).collect();
    if parked.is_empty() {
        return;
    }
    let kept: Vec<String> = parked.iter().map(|claim| claim.place.to_string()).collect();
    let waiting = duration::format(config.park_visitors_for);
    tracing::info!(?kept, %waiting, "session lost; places kept for the agent to return");
    let deadline = Instant::now() + config.park_visitors_for;
    let accepting = TaskTracker::new();
    for claim in &parked {
        let span = tracing::info_span!("tunnel", place = %claim.place);
        match claim.socket.clone() {
            Some(PublicSocket::Tcp(listener)) => {
                let (successor, waiting) = (claim.successor.clone(), claim.waiting.clone());
                let accept = accept_parked(listener, (successor, waiting), deadline, shared.clone(), cancel.clone());
                accepting.spawn(accept.instrument(span));
            }
            Some(PublicSocket::Udp(socket)) => {
                let counts = shared.metrics.traffic.udp_counts(&claim.key);
                let stop = parked_until(claim.successor.clone(), deadline, cancel.clone());
                accepting.spawn(crate::udp::drop_while_parked(socket, counts, stop).instrument(span));
            }
            None => {}
        }
    }
    until_taken_over(&parked, deadline, cancel).await;
    accepting.close();
    accepting.wait().await;
    for Parked { place, socket, .. } in parked {
        // Closed before the waiting visitors hear the end: one that reconnects at once must
        // be refused, not queued on a listener about to close.
        drop(socket);
        let Some(key) = shared.claims.release(&place, session) else { continue };
        if let Err(e) = shared.store.release(&key, &place).await {
            tracing::warn!(%place, "the store could not record a release: {e:#}");
        }
        if !cancel.is_cancelled() {
            tracing::info!(%place, "agent did not return in time; place released");
        }
    }
}

/// Accepts visitors on a parked port until the tunnel's next session takes it, the
/// deadline passes or the relay stops.
async fn accept_parked(
    listener: Arc<TcpListener>,
    (successor, waiting): (Successor<Route>, Arc<Semaphore>),
    deadline: Instant,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let places = Places { open: waiting, when_full: REFUSED_PARK_FULL };
    let stop = parked_until(successor.clone(), deadline, cancel.clone());
    accept_until(&listener, &places, &shared, stop, |tcp, peer, admission| {
        let waiting = wait_for_successor(tcp, peer, successor.clone(), shared.clone(), admission, cancel.clone());
        shared.visitors.spawn(waiting.instrument(tracing::debug_span!("visitor", %peer)));
    })
    .await;
}

/// Completes when a parked port stops taking visitors: the tunnel's next session took it,
/// the deadline passed or the relay stops.
async fn parked_until(mut taken: Successor<Route>, deadline: Instant, cancel: CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = taken.wait_for(Option::is_some) => {}
        () = tokio::time::sleep_until(deadline) => {}
    }
}

/// One parked visitor: carried over the tunnel's next session, or closed with a FIN when the
/// claim is released or the relay stops.
async fn wait_for_successor(
    visitor: TcpStream,
    peer: SocketAddr,
    mut successor: Successor<Route>,
    shared: Arc<Shared>,
    admission: Admission,
    cancel: CancellationToken,
) {
    let next = tokio::select! {
        _ = cancel.cancelled() => None,
        next = successor.wait_for(Option::is_some) => next.ok().and_then(|next| next.clone()),
    };
    match next {
        Some(route) => {
            shared.metrics.visitors_unparked.inc();
            forward(visitor, peer, route.link.pick(), route.tunnel, shared, admission, Vec::new()).await;
        }
        None => {
            drop(admission);
            tracing::debug!("parked visitor closed: the agent did not return");
            close_gently(visitor).await;
        }
    }
}

/// Ends a visitor's connection with a FIN: nothing broke, the service is just not there.
async fn close_gently(mut visitor: TcpStream) {
    if let Err(e) = visitor.shutdown().await {
        tracing::debug!("shutdown failed: {e}");
        return;
    }
    let mut sink = tokio::io::sink();
    tokio::time::timeout(CLOSE_LINGER, tokio::io::copy(&mut visitor, &mut sink)).await.ok();
}
