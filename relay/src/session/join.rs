//! A further link of a live session: the agent presents the ticket its Welcome carried, and
//! the link carries visitors beside the session's others until it ends or the session does.

use std::sync::Arc;

use anyhow::Context;
use burrow_common::{
    CloseCode, JoinTicket, Refusal,
    link::{AnyLink, Link, LinkError, LinkStatus},
    protocol::conversation::RelayControlOn,
    transport,
};
use ring::rand;

use super::SessionLink;
use crate::{
    Shared,
    limits::Pending,
    metrics::{CHECKED_JOIN_TICKET, JOIN_JOINED, JOIN_LINK_LIMIT, JOIN_TRY_LATER, JOIN_UNKNOWN, JoinResult},
};

/// A fresh ticket for a session, and the SHA-256 of it the relay keeps to recognise it.
pub(super) fn new_ticket() -> anyhow::Result<(JoinTicket, [u8; 32])> {
    let bytes: [u8; 32] = rand::generate(&rand::SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("the system's random source failed"))?
        .expose();
    let ticket = JoinTicket(bytes);
    Ok((ticket.clone(), ticket_digest(&ticket)))
}

fn ticket_digest(ticket: &JoinTicket) -> [u8; 32] {
    burrow_common::tls::sha256(&ticket.0)
}

/// Adds `link` to the session `ticket` names, and serves it until it ends or the session's
/// primary link does. `pending` is the link's place among the unauthenticated, held until
/// it joined or was refused.
pub(super) async fn join(
    link: AnyLink,
    ticket: JoinTicket,
    mut control: RelayControlOn<AnyLink>,
    pending: Pending,
    shared: &Arc<Shared>,
) -> anyhow::Result<()> {
    let found = tokio::select! {
        never = crate::udp::discard_datagrams(&link) => match never {},
        found = find(shared, &link, &ticket) => found,
    };
    let joined =
        found.and_then(|session| Ok((session.join(link.clone(), shared.config().max_links_per_session)?, session)));
    let (place, session) = match joined {
        Ok(joined) => joined,
        Err(refusal) => {
            count(shared, &refusal);
            let why = anyhow::anyhow!("join refused: {refusal}");
            control.refuse(refusal, &link).await;
            return Err(why);
        }
    };
    tracing::Span::current().record("agent", "joined link");
    control.joined().await.context("send Joined")?;
    // Only a link of a welcomed session may make the relay buffer a full window.
    link.allow_receive(transport::SESSION_RECEIVE_WINDOW);
    drop(pending);
    shared.metrics.link_joins.get_or_create(&JOIN_JOINED).inc();
    tracing::info!(session = session.stable_id(), "link joined its session");
    let datagrams = crate::udp::read_datagrams(&link, session.flows(), &shared.metrics.traffic.udp);
    let ended = tokio::select! {
        ended = link.closed() => ended,
        never = datagrams => match never {},
        primary = session.closed() => {
            // The session ends with its primary link, and takes its other links along.
            link.close(primary.peer_code().unwrap_or(CloseCode::Shutdown));
            primary
        }
    };
    drop((place, control));
    match ended {
        LinkError::LocallyClosed => tracing::info!("joined link closed by the relay"),
        ended => tracing::info!(reason = %ended, "joined link ended"),
    }
    Ok(())
}

/// The live session `ticket` belongs to. An unknown ticket is a failed guess, limited like
/// a wrong token: the ticket is as much a credential as the token.
async fn find(shared: &Shared, link: &AnyLink, ticket: &JoinTicket) -> Result<SessionLink, Refusal> {
    let Ok(attempt) = shared.limiter.attempt(link.peer().ip()) else {
        return Err(Refusal::TryLater { why: "too many failed attempts from this address".into() });
    };
    shared.metrics.guessing.credential_checks.get_or_create(&CHECKED_JOIN_TICKET).inc();
    match shared.live.joinable(&ticket_digest(ticket)) {
        Some(session) => {
            attempt.succeeded();
            Ok(session)
        }
        None => {
            attempt.failed().await;
            Err(Refusal::UnknownSession)
        }
    }
}

fn count(shared: &Shared, refusal: &Refusal) {
    let result: &JoinResult = match refusal {
        Refusal::LinkLimit { .. } => &JOIN_LINK_LIMIT,
        Refusal::UnknownSession => &JOIN_UNKNOWN,
        _ => &JOIN_TRY_LATER,
    };
    shared.metrics.link_joins.get_or_create(result).inc();
}
