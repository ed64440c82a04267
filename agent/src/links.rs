//! A session's further links, over its first link's transport: each dialed from its own
//! socket (its own NAT mapping and congestion window), joined to the session with the Welcome's ticket, and serving the
//! relay's streams into the session's one `Targets`. A link that ends is dialed again while
//! the session lives; the session itself is its primary link's.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::Instant,
};

use burrow_common::{
    CloseCode, JoinTicket, Refusal,
    link::{AnyLink, Link, LinkStatus, Transport},
    protocol::conversation::{AgentControl, JoinAnswer},
    sync,
};
use futures_util::future::join_all;

use crate::{
    Plan, STABLE_SESSION,
    backoff::Backoff,
    dial::{Dialed, Dialer, Failure},
    forward::{Targets, serve_link},
    stats::Stats,
    udp_memory,
};

/// The session's links up now, for the console and for closing them with the session.
pub(crate) struct LinksUp {
    joined: Mutex<Vec<AnyLink>>,
    /// Links the session aims for, its primary included: known from the Welcome on.
    wanted: AtomicUsize,
    pub(crate) stats: Stats,
}

impl LinksUp {
    pub(crate) fn new(plan: &Plan) -> Self {
        Self { joined: Mutex::default(), wanted: AtomicUsize::new(1), stats: plan.stats.clone() }
    }

    /// The primary is up, and the relay allows `wanted` links.
    pub(crate) fn welcomed(&self, wanted: usize) {
        self.wanted.store(wanted, Relaxed);
        self.publish(sync::lock(&self.joined).len() + 1);
    }

    fn add(&self, link: AnyLink) {
        let mut joined = sync::lock(&self.joined);
        joined.push(link);
        self.publish(joined.len() + 1);
    }

    fn remove(&self, link: &AnyLink) {
        let mut joined = sync::lock(&self.joined);
        joined.retain(|up| up.stable_id() != link.stable_id());
        self.publish(joined.len() + 1);
    }

    fn publish(&self, up: usize) {
        self.stats.set_links(up, self.wanted.load(Relaxed));
    }

    /// Closes the joined links with `code`, as the session's primary was.
    pub(crate) fn close(&self, code: CloseCode) {
        for link in sync::lock(&self.joined).drain(..) {
            link.close(code);
        }
        self.publish(0);
    }
}

/// While the session runs over TCP, tries QUIC again now and then (`quic_probe_interval`,
/// doubling to ten times it); once a QUIC link joins, the relay gives new visitors to QUIC
/// links, and the session keeps `links.wanted` of them. The TCP links stay up carrying only
/// the visitors they had: they go with the session, and stand by should QUIC fail again.
pub(crate) async fn move_to_quic(
    (plan, dialer): (&Plan, &Dialer),
    ticket: &JoinTicket,
    targets: &Arc<Targets>,
    links: &LinksUp,
) -> Infallible {
    let mut delay = plan.quic_probe_interval;
    loop {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(plan.quic_probe_interval * 10);
        let dialed = match join(plan, dialer, ticket, Transport::Quic).await {
            Ok(dialed) => dialed,
            Err(Joining::Refused(refusal)) => {
                tracing::info!("QUIC link not joined: {refusal}; trying again in {delay:?}");
                continue;
            }
            Err(Joining::Failed(why)) => {
                tracing::debug!("QUIC still does not get through ({why}); trying again in {delay:?}");
                continue;
            }
        };
        udp_memory::remember(&plan.relay, false);
        tracing::info!("QUIC gets through again: new visitors go over it, open ones finish over TCP");
        links.stats.set_transport("QUIC (moved from TCP)");
        links.add(dialed.link.clone());
        let first = async {
            let ended = serve_link(&dialed.link, targets).await;
            links.remove(&dialed.link);
            tracing::info!("the QUIC link the session moved to ended ({ended})");
            dialed.settle().await;
        };
        let others = (1..links.wanted.load(Relaxed))
            .map(|slot| keep_one(slot, (plan, dialer), (ticket, Transport::Quic), targets, links));
        // The further QUIC links are kept for the session's life; only the first ending
        // sends the session back to probing (the relay then gives visitors to TCP again).
        tokio::select! {
            () = first => {}
            _ = join_all(others) => {}
        }
        links.stats.set_transport("TCP: the QUIC link was lost");
        delay = plan.quic_probe_interval;
    }
}

/// Keeps `links.wanted - 1` links joined to the session `ticket` names, for as long as the
/// caller polls it.
pub(crate) async fn keep_joined(
    (plan, dialer): (&Plan, &Dialer),
    (ticket, transport): (&JoinTicket, Transport),
    targets: &Arc<Targets>,
    links: &LinksUp,
) -> Infallible {
    let slots =
        (1..links.wanted.load(Relaxed)).map(|slot| keep_one(slot, (plan, dialer), (ticket, transport), targets, links));
    join_all(slots).await;
    std::future::pending().await
}

/// One further link, dialed again with backoff whenever it ends; a refused join ends the
/// slot, since the relay will refuse it again.
async fn keep_one(
    slot: usize,
    (plan, dialer): (&Plan, &Dialer),
    (ticket, transport): (&JoinTicket, Transport),
    targets: &Arc<Targets>,
    links: &LinksUp,
) {
    let mut backoff = Backoff::new(plan.reconnect_max_delay);
    loop {
        match join(plan, dialer, ticket, transport).await {
            Ok(dialed) => {
                let joined_at = Instant::now();
                links.add(dialed.link.clone());
                tracing::debug!(slot, "link joined the session");
                let ended = serve_link(&dialed.link, targets).await;
                links.remove(&dialed.link);
                // Only a link that lasted starts the delays over, so a relay that drops
                // links at once is not dialed in a tight loop.
                if joined_at.elapsed() >= STABLE_SESSION {
                    backoff.reset();
                }
                tracing::info!(slot, "a link of the session ended ({ended}); dialing it again");
                dialed.settle().await;
            }
            // The session has ended: its primary link learns it too, and ends the session.
            Err(Joining::Refused(refusal @ Refusal::UnknownSession)) => {
                tracing::info!(slot, "further link not joined: {refusal}");
                return;
            }
            // A link just lost counts at the relay until it times out there too; another
            // refusal would come again, so it ends the slot.
            Err(Joining::Refused(refusal))
                if !refusal.is_retryable() && !matches!(refusal, Refusal::LinkLimit { .. }) =>
            {
                tracing::warn!(slot, "the relay refused a further link: {refusal}");
                return;
            }
            Err(Joining::Refused(refusal)) => tracing::info!(slot, "further link not joined yet: {refusal}"),
            Err(Joining::Failed(why)) => tracing::info!(slot, "further link not joined: {why}"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

enum Joining {
    Refused(Refusal),
    Failed(String),
}

/// Dials a link over the session's transport and joins it to the session.
async fn join(plan: &Plan, dialer: &Dialer, ticket: &JoinTicket, transport: Transport) -> Result<Dialed, Joining> {
    let dialed = dialer.dial_on(plan, transport).await.map_err(|failure| match failure {
        Failure::Trust(why) | Failure::Unreachable(why) => Joining::Failed(why),
    })?;
    let answered = async {
        let mut control = AgentControl::open(&dialed.link).await?;
        control.join(ticket).await
    };
    match answered.await {
        Ok(JoinAnswer::Joined) => Ok(dialed),
        Ok(JoinAnswer::Refused(refusal)) => Err(Joining::Refused(refusal)),
        Err(e) => {
            dialed.link.close(CloseCode::ProtocolViolation);
            Err(Joining::Failed(format!("join failed: {e}")))
        }
    }
}
