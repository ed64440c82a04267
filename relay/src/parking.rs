//! Parked ports: when an agent's session is lost (not ended by the agent, not replaced, not
//! stopped by the relay), each of its tunnels' ports stays bound for `park_visitors_for`.
//! Visitors that arrive meanwhile wait, and are carried over the tunnel's next session once
//! the agent is back; past the deadline they get a FIN and the port is released as if the
//! session had just ended.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use burrow_common::config::duration;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::watch,
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    Shared,
    limits::{Admission, Places},
    metrics::{Metrics, REFUSED_PARK_FULL},
    registry::SessionId,
    tunnel::{accept_until, forward},
};

/// How long the unread bytes of a visitor being closed are read away: the kernel answers a
/// close with unread data by a reset, and these visitors should see a plain end of stream.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// The session that serves a parked port's visitors next, and the tunnel id it granted.
#[derive(Clone)]
pub(crate) struct Successor {
    pub(crate) conn: quinn::Connection,
    pub(crate) tunnel: u32,
}

/// Sending the successor on it resumes every visitor parked on a port; dropping it closes
/// them. The registry holds it while the port is parked, then the claim that takes the port.
pub(crate) type Handover = watch::Sender<Option<Successor>>;

/// A port the registry has parked, for the task that keeps accepting on it.
pub(crate) struct ParkedPort {
    pub(crate) listener: Arc<TcpListener>,
    pub(crate) successor: watch::Receiver<Option<Successor>>,
}

/// Parks a lost session's ports; returns when each has been taken over or released and its
/// visitors are done.
pub(crate) async fn park(shared: &Arc<Shared>, ports: Vec<u16>, session: SessionId, cancel: &CancellationToken) {
    let waiting = duration::format(shared.config().park_visitors_for);
    let ports_held = TaskTracker::new();
    for port in ports {
        // None: a newer session of the tunnel already took the port over.
        let Some(parked) = shared.registry.park(port, session) else { continue };
        tracing::info!(port, %waiting, "session lost; port kept open for the agent to return");
        let span = tracing::info_span!("tunnel", port);
        ports_held.spawn(hold(parked, port, session, shared.clone(), cancel.clone()).instrument(span));
    }
    ports_held.close();
    ports_held.wait().await;
}

/// Accepts visitors on one parked port until the tunnel's next session takes it, the
/// deadline passes or the relay stops.
async fn hold(parked: ParkedPort, port: u16, session: SessionId, shared: Arc<Shared>, cancel: CancellationToken) {
    let ParkedPort { listener, successor } = parked;
    let deadline = Instant::now() + shared.config().park_visitors_for;
    let places = Places::new(shared.config().max_parked_visitors, REFUSED_PARK_FULL);
    let visitors = TaskTracker::new();
    let mut taken = successor.clone();
    let stop = async {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = taken.wait_for(Option::is_some) => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    };
    accept_until(&listener, &places, &shared, stop, |tcp, peer, admission| {
        let waiting =
            wait_for_successor(tcp, peer, successor.clone(), shared.metrics.clone(), admission, cancel.clone());
        visitors.spawn(waiting.instrument(tracing::debug_span!("visitor", %peer)));
    })
    .await;
    // Closed before the waiting visitors hear the end: one that reconnects at once must be
    // refused, not queued on a listener about to close.
    drop(listener);
    if shared.registry.release(port, session) && !cancel.is_cancelled() {
        tracing::info!(parked = visitors.len(), "agent did not return in time; port released");
    }
    drain(visitors, &cancel, shared.config().grace_period).await;
}

/// One parked visitor: carried over the tunnel's next session, or closed with a FIN when the
/// port is released or the relay stops.
async fn wait_for_successor(
    visitor: TcpStream,
    peer: SocketAddr,
    mut successor: watch::Receiver<Option<Successor>>,
    metrics: Arc<Metrics>,
    admission: Admission,
    cancel: CancellationToken,
) {
    metrics.parked_visitors.inc();
    let next = tokio::select! {
        _ = cancel.cancelled() => None,
        next = successor.wait_for(Option::is_some) => next.ok().and_then(|next| next.clone()),
    };
    metrics.parked_visitors.dec();
    match next {
        Some(Successor { conn, tunnel }) => {
            metrics.visitors_unparked.inc();
            forward(visitor, peer, burrow_common::link::QuicLink::from(conn), tunnel, metrics, admission, Vec::new())
                .await;
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

/// Waits for the port's visitors, some perhaps now carried over the next session; once the
/// relay stops, for the grace period at most, as a session's own visitors get.
async fn drain(visitors: TaskTracker, cancel: &CancellationToken, grace: Duration) {
    visitors.close();
    tokio::select! {
        () = visitors.wait() => {}
        () = cancel.cancelled() => {
            tokio::time::timeout(grace, visitors.wait()).await.ok();
        }
    }
}
