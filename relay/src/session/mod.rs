//! One agent's session: handshake, open its tunnels, serve until it leaves or the relay stops.

mod admission;
mod serving;

use std::{sync::Arc, sync::atomic::Ordering};

use anyhow::Context;
use burrow_common::{
    CloseCode,
    link::{Link, QuicLink},
    protocol::conversation::{ConversationError, receive_hello},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use self::serving::{Lost, Serving};
use crate::{Shared, parking, registry::SessionId, sessions::Admitted};

/// Longest a Welcome waits for the tunnels' reservations to reach the disk.
const RESERVATION_SAVE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves one incoming QUIC connection to its end, logging how it ended exactly once.
pub(crate) async fn serve(incoming: quinn::Incoming, shared: Arc<Shared>, cancel: CancellationToken) {
    let remote = incoming.remote_address();
    let span = tracing::info_span!("session", %remote, agent = tracing::field::Empty);
    async move {
        match run(incoming, &shared, &cancel).await {
            Ok(()) => {}
            Err(e) => tracing::info!("session ended: {e:#}"),
        }
    }
    .instrument(span)
    .await
}

async fn run(incoming: quinn::Incoming, shared: &Arc<Shared>, cancel: &CancellationToken) -> anyhow::Result<()> {
    let handshaking = shared.handshakes.enter();
    let conn = incoming.await.context("QUIC handshake failed")?;
    let link = QuicLink::from(conn.clone());
    let (hello, mut control) = tokio::select! {
        _ = cancel.cancelled() => {
            link.close(CloseCode::Shutdown);
            return Ok(());
        }
        received = receive_hello(&link, shared.config().handshake_timeout) => match received {
            Ok(received) => received,
            Err(e @ ConversationError::Timeout { .. }) => {
                return Err(close(&link, CloseCode::HandshakeTimeout)).context(e);
            }
            Err(e) => return Err(close(&link, CloseCode::ProtocolViolation)).context(e),
        },
    };
    drop(handshaking);
    let session = shared.next_session.fetch_add(1, Ordering::Relaxed);
    // Every visitor's work for this session (TCP splices, HTTP streams, upgrades) runs here,
    // so a shutdown can give it the grace period.
    let visitors = TaskTracker::new();
    let (grant, opened) = match admission::admit(shared, &conn, &hello, session, &visitors).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            let why = anyhow::anyhow!("refused: {refusal}");
            control.refuse(refusal, &link).await;
            return Err(why);
        }
    };
    shared.registry.reservations_saved(RESERVATION_SAVE_WAIT).await;
    let granted: Vec<_> = opened.iter().map(|o| o.granted.clone()).collect();
    if let Err(e) = control.welcome(granted.clone()).await {
        for tunnel in &opened {
            tunnel.release(shared, session);
        }
        return Err(e).context("send Welcome");
    }
    let mut registered = shared.live.register(session, Admitted::new(&grant, &hello, &conn, &granted));
    shared.metrics.sessions.inc();
    shared.metrics.sessions_total.inc();
    let mut serving = Serving::new(shared, &conn, (&grant, session), &mut registered, visitors, cancel);
    for tunnel in opened {
        serving.start(tunnel);
    }
    // The control stream stays open for the life of the session, and carries updates.
    let lost = serving.run(control, cancel).await;
    shared.metrics.sessions.dec();
    drop(conn);
    if let Some(Lost { ports, subdomains }) = lost {
        tokio::join!(
            parking::park(shared, ports, session, cancel),
            park_subdomains(shared, subdomains, session, cancel)
        );
    }
    drop(registered);
    Ok(())
}

/// Keeps a lost session's subdomains for its agent to come back: requests wait meanwhile.
/// Past the parking time, the names are freed as if the session had just ended.
async fn park_subdomains(shared: &Shared, subdomains: Vec<String>, session: SessionId, cancel: &CancellationToken) {
    let Some(vhost) = shared.vhost.as_ref() else { return };
    let max_waiting = shared.config().max_parked_visitors;
    let parked: Vec<String> =
        subdomains.into_iter().filter(|name| vhost.routes.park(name, session, max_waiting)).collect();
    if parked.is_empty() {
        return;
    }
    tracing::info!(?parked, "session lost; subdomains kept for the agent to return");
    tokio::select! {
        _ = cancel.cancelled() => {}
        () = tokio::time::sleep(shared.config().park_visitors_for) => {}
    }
    for name in &parked {
        vhost.routes.release(name, session);
    }
}

fn close(link: &QuicLink, code: CloseCode) -> anyhow::Error {
    link.close(code);
    anyhow::anyhow!("closed: {}", code.describe())
}
