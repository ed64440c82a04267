//! One agent's session: handshake, open its tunnels, serve until it leaves or the relay stops.

mod admission;
mod join;
mod link;
mod serving;

use std::{sync::Arc, sync::atomic::Ordering};

use anyhow::Context;
use burrow_common::{
    CloseCode, Hello, LinkOpening, Welcome,
    link::{Link, QuicLink},
    protocol::conversation::{ConversationError, RelayControlOn, receive_opening},
    transport,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub(crate) use self::link::{LinkView, Picked, SessionLink};
use self::serving::Serving;
use crate::{Shared, limits::Pending, parking, sessions::Admitted};

/// Longest a Welcome waits for the tunnels' reservations to be stored durably.
const RESERVATION_SAVE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves one incoming QUIC connection to its end, logging how it ended exactly once.
pub(crate) async fn serve(incoming: quinn::Incoming, pending: Pending, shared: Arc<Shared>, cancel: CancellationToken) {
    let remote = incoming.remote_address();
    let span = tracing::info_span!("session", %remote, agent = tracing::field::Empty);
    async move {
        match run(incoming, pending, &shared, &cancel).await {
            Ok(()) => {}
            Err(e) => tracing::info!("session ended: {e:#}"),
        }
    }
    .instrument(span)
    .await
}

/// `pending` is the client's place among the unauthenticated: held until its Hello or Join
/// is answered, a delayed refusal included.
async fn run(
    incoming: quinn::Incoming,
    pending: Pending,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let conn = incoming.await.context("QUIC handshake failed")?;
    let quic = QuicLink::from(conn);
    let (opening, control) = tokio::select! {
        _ = cancel.cancelled() => {
            quic.close(CloseCode::Shutdown);
            return Ok(());
        }
        received = receive_opening(&quic, shared.config().handshake_timeout) => match received {
            Ok(received) => received,
            Err(e @ ConversationError::Timeout { .. }) => {
                return Err(close(&quic, CloseCode::HandshakeTimeout)).context(e);
            }
            Err(e) => return Err(close(&quic, CloseCode::ProtocolViolation)).context(e),
        },
    };
    match opening {
        LinkOpening::Hello(hello) => open_session(quic, hello, control, pending, shared, cancel).await,
        LinkOpening::Join { ticket } => join::join(quic, ticket, control, pending, shared).await,
    }
}

/// Admits the session `hello` asks for and serves it until it ends.
async fn open_session(
    quic: QuicLink,
    hello: Hello,
    mut control: RelayControlOn<QuicLink>,
    pending: Pending,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let (ticket, ticket_digest) = join::new_ticket()?;
    let session = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let link = SessionLink::new(quic.clone());
    let (grant, slot, opened) = match admission::admit(shared, &link, &hello, session).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            let why = anyhow::anyhow!("refused: {refusal}");
            control.refuse(refusal, &quic).await;
            return Err(why);
        }
    };
    durable(shared).await;
    let granted: Vec<_> = opened.iter().map(|o| o.granted.clone()).collect();
    let links = u8::try_from(shared.config().max_links_per_session).unwrap_or(u8::MAX);
    if let Err(e) = control.welcome(Welcome { tunnels: granted.clone(), ticket, links }).await {
        for tunnel in &opened {
            tunnel.release(shared, session).await;
        }
        return Err(e).context("send Welcome");
    }
    // Only a welcomed agent may make the relay buffer a full window.
    quic.allow_receive(transport::SESSION_RECEIVE_WINDOW);
    drop(pending);
    let admitted = Admitted::new(&grant, &hello, &link, &granted, ticket_digest);
    let mut registered = shared.live.register(session, slot, admitted);
    shared.metrics.sessions.inc();
    shared.metrics.sessions_total.inc();
    let mut serving = Serving::new(shared, &link, (&grant, session), &mut registered, cancel);
    for tunnel in opened {
        serving.start(tunnel);
    }
    // The control stream stays open for the life of the session, and carries updates.
    let lost = serving.run(control, cancel).await;
    shared.metrics.sessions.dec();
    drop((quic, link));
    if let Some(places) = lost {
        parking::park(shared, &places, session, cancel).await;
    }
    drop(registered);
    Ok(())
}

/// Waits until the tunnels' reservations are stored, so a relay killed right after welcoming
/// an agent still gives it the same places when it comes back. Bounded: a slow store delays
/// a Welcome by [`RESERVATION_SAVE_WAIT`] at most, never blocks it.
async fn durable(shared: &Shared) {
    if !shared.store.durable(RESERVATION_SAVE_WAIT).await {
        tracing::warn!("reservations not yet stored; welcoming the agent anyway");
    }
}

fn close(link: &QuicLink, code: CloseCode) -> anyhow::Error {
    link.close(code);
    anyhow::anyhow!("closed: {}", code.describe())
}
