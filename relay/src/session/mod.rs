//! One agent's session: handshake, open its tunnels, serve until it leaves or the relay stops.

mod admission;
mod link;
mod serving;

use std::{sync::Arc, sync::atomic::Ordering};

use anyhow::Context;
use burrow_common::{
    CloseCode, Hello, Refusal, ServerMsg,
    protocol::{self, FrameError, MAX_CONTROL_FRAME},
};
use quinn::{Connection, RecvStream, SendStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub(crate) use self::link::SessionLink;
use self::serving::Serving;
use crate::{Shared, parking, sessions::Admitted};

/// Longest a Welcome waits for the tunnels' reservations to be stored durably.
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
    let handshake = tokio::time::timeout(shared.config().handshake_timeout, receive_hello(&conn));
    let (mut send, recv, hello) = tokio::select! {
        _ = cancel.cancelled() => {
            CloseCode::Shutdown.close(&conn);
            return Ok(());
        }
        received = handshake => match received {
            Err(_) => return Err(close(&conn, CloseCode::HandshakeTimeout)).context("no Hello in time"),
            Ok(Err(e)) => return Err(close(&conn, CloseCode::ProtocolViolation)).context(e),
            Ok(Ok(received)) => received,
        },
    };
    drop(handshaking);
    let session = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let link = SessionLink::new(conn.clone());
    let (grant, opened) = match admission::admit(shared, &link, &hello, session).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refuse(&conn, &mut send, refusal).await,
    };
    durable(shared).await;
    let granted: Vec<_> = opened.iter().map(|o| o.granted.clone()).collect();
    let sent = protocol::write_msg(&mut send, &ServerMsg::Welcome { tunnels: granted.clone() }).await;
    if let Err(e) = sent {
        for tunnel in &opened {
            tunnel.release(shared, session).await;
        }
        return Err(e).context("send Welcome");
    }
    let mut registered = shared.live.register(session, Admitted::new(&grant, &hello, &link, &granted));
    shared.metrics.sessions.inc();
    shared.metrics.sessions_total.inc();
    let mut serving = Serving::new(shared, &link, (&grant, session), &mut registered, cancel);
    for tunnel in opened {
        serving.start(tunnel);
    }
    // The control stream stays open for the life of the session, and carries updates.
    let lost = serving.run((send, recv), cancel).await;
    shared.metrics.sessions.dec();
    drop((conn, link));
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

fn close(conn: &Connection, code: CloseCode) -> anyhow::Error {
    code.close(conn);
    anyhow::anyhow!("closed: {}", code.describe())
}

async fn receive_hello(conn: &Connection) -> Result<(SendStream, RecvStream, Hello), FrameError> {
    let (send, mut recv) = conn.accept_bi().await.map_err(|e| FrameError::Io(e.into()))?;
    let hello = protocol::read_msg(&mut recv, MAX_CONTROL_FRAME).await?;
    Ok((send, recv, hello))
}

async fn refuse(conn: &Connection, send: &mut SendStream, refusal: Refusal) -> anyhow::Result<()> {
    let answer = protocol::write_msg(send, &ServerMsg::Refused(refusal.clone())).await;
    if answer.is_ok() {
        send.finish().ok();
        // Let the Refused frame reach the agent before the close discards unsent data.
        tokio::time::timeout(std::time::Duration::from_secs(2), send.stopped()).await.ok();
    }
    CloseCode::Refused.close(conn);
    Err(anyhow::anyhow!("refused: {refusal}"))
}
