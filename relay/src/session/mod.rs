//! One agent's session: handshake, open its tunnels, serve until it leaves or the relay stops.

mod admission;
mod join;
mod link;
mod serving;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use anyhow::Context;
use burrow_common::{
    CloseCode, Hello, LinkOpening, Welcome,
    link::{AnyLink, Link, QuicLink},
    protocol::conversation::{ConversationError, RelayControlOn, receive_opening},
    transport,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub(crate) use self::link::{LinkView, Picked, SessionLink};
use self::serving::Serving;
use crate::{Shared, limits::Pending, parking, sessions::Admitted};

/// Longest a Welcome waits for the tunnels' reservations to be stored durably.
const RESERVATION_SAVE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves one incoming QUIC connection to its end.
pub(crate) async fn serve_quic(
    incoming: quinn::Incoming,
    pending: Pending,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let remote = incoming.remote_address();
    let link = async { Ok(AnyLink::from(QuicLink::from(incoming.await.context("QUIC handshake failed")?))) };
    serve(remote, link, pending, shared, cancel).await
}

/// Serves one agent that connected over TCP (its TLS not yet begun) to its end.
pub(crate) async fn serve_tcp<T>(
    io: T,
    remote: SocketAddr,
    pending: Pending,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = shared.config().handshake_timeout;
    let handshake = crate::tcp_links::handshake(io, remote, shared.agent_tls.clone(), shared.config().idle_timeout);
    let link = async move {
        match tokio::time::timeout(timeout, handshake).await {
            Ok(link) => link.map(AnyLink::from),
            Err(_) => Err(anyhow::anyhow!("no TLS handshake over TCP within {timeout:?}")),
        }
    };
    serve(remote, link, pending, shared, cancel).await
}

/// Serves one link to its end, logging how it ended exactly once.
async fn serve(
    remote: SocketAddr,
    link: impl Future<Output = anyhow::Result<AnyLink>>,
    pending: Pending,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("session", %remote, agent = tracing::field::Empty);
    async move {
        let served = async { run(link.await?, pending, &shared, &cancel).await };
        if let Err(e) = served.await {
            tracing::info!("session ended: {e:#}");
        }
    }
    .instrument(span)
    .await
}

/// `pending` is the client's place among the unauthenticated: held until its Hello or Join
/// is answered, a delayed refusal included.
async fn run(link: AnyLink, pending: Pending, shared: &Arc<Shared>, cancel: &CancellationToken) -> anyhow::Result<()> {
    let (opening, control) = tokio::select! {
        _ = cancel.cancelled() => {
            link.close(CloseCode::Shutdown);
            return Ok(());
        }
        never = crate::udp::discard_datagrams(&link) => match never {},
        received = receive_opening(&link, shared.config().handshake_timeout) => match received {
            Ok(received) => received,
            Err(e @ ConversationError::Timeout { .. }) => {
                return Err(close(&link, CloseCode::HandshakeTimeout)).context(e);
            }
            Err(e) => return Err(close(&link, CloseCode::ProtocolViolation)).context(e),
        },
    };
    match opening {
        LinkOpening::Hello(hello) => open_session(link, hello, control, pending, shared, cancel).await,
        LinkOpening::Join { ticket } => join::join(link, ticket, control, pending, shared).await,
    }
}

/// Admits the session `hello` asks for and serves it until it ends.
async fn open_session(
    link: AnyLink,
    hello: Hello,
    mut control: RelayControlOn<AnyLink>,
    pending: Pending,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let (ticket, ticket_digest) = join::new_ticket()?;
    let session = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let session_link = SessionLink::new(link.clone());
    let admitted = tokio::select! {
        never = crate::udp::discard_datagrams(&link) => match never {},
        admitted = admission::admit(shared, &session_link, &hello, session) => admitted,
    };
    let (grant, slot, opened) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => {
            let why = anyhow::anyhow!("refused: {refusal}");
            control.refuse(refusal, &link).await;
            return Err(why);
        }
    };
    durable(shared).await;
    let granted: Vec<_> = opened.iter().map(|o| o.granted.clone()).collect();
    let links = u8::try_from(shared.config().max_links_per_session).unwrap_or(u8::MAX);
    let fleet = shared.store.fleet().await;
    if let Err(e) = control.welcome(Welcome { tunnels: granted.clone(), ticket, links, fleet }).await {
        for tunnel in &opened {
            tunnel.release(shared, session).await;
        }
        return Err(e).context("send Welcome");
    }
    // Only a welcomed agent may make the relay buffer a full window.
    link.allow_receive(transport::SESSION_RECEIVE_WINDOW);
    drop(pending);
    let admitted = Admitted::new(&grant, &hello, &session_link, &granted, ticket_digest);
    let mut registered = shared.live.register(session, slot, admitted);
    shared.metrics.sessions.inc();
    shared.metrics.sessions_total.inc();
    let mut serving = Serving::new(shared, &session_link, (&grant, session), &mut registered, cancel);
    for tunnel in opened {
        serving.start(tunnel);
    }
    // The control stream stays open for the life of the session, and carries updates.
    let lost = serving.run(control, cancel).await;
    shared.metrics.sessions.dec();
    drop((link, session_link));
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

fn close(link: &AnyLink, code: CloseCode) -> anyhow::Error {
    link.close(code);
    anyhow::anyhow!("closed: {}", code.describe())
}
