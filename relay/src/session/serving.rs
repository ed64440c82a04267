//! A welcomed session at work: its tunnels accept visitors, its agent may add and remove
//! tunnels on the control stream, and at the end its places are released or parked.

use std::{collections::BTreeMap, sync::Arc};

use burrow_common::{
    AgentMsg, CloseCode, Refusal, TunnelSpec,
    link::{AnyLink, LinkError},
    protocol::conversation::{RelayControlOn, UpdateAnswer},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use super::{
    SessionLink,
    admission::{self, Opened},
    durable,
};
use crate::{
    Shared,
    claims::{Place, PublicSocket, SessionId},
    sessions::Registered,
    tokens::Grant,
    tunnel::accept_visitors,
};

/// An open tunnel and what ends it.
struct Running {
    opened: Opened,
    stop: CancellationToken,
    /// A port tunnel's accept or receive loop, which holds its socket until it returns.
    accepting: Option<tokio::task::JoinHandle<()>>,
}

/// The session's open tunnels by id, and what runs for each.
pub(super) struct Serving<'a> {
    shared: &'a Arc<Shared>,
    link: &'a SessionLink,
    grant: &'a Grant,
    session: SessionId,
    registered: &'a mut Registered,
    tunnels: BTreeMap<u32, Running>,
    next_id: u32,
    /// Ends every accept loop; each tunnel's own token is a child of it.
    stop: CancellationToken,
    accept_loops: TaskTracker,
}

impl<'a> Serving<'a> {
    pub(super) fn new(
        shared: &'a Arc<Shared>,
        link: &'a SessionLink,
        (grant, session): (&'a Grant, SessionId),
        registered: &'a mut Registered,
        cancel: &CancellationToken,
    ) -> Self {
        Self {
            shared,
            link,
            grant,
            session,
            registered,
            tunnels: BTreeMap::new(),
            next_id: 0,
            stop: cancel.child_token(),
            accept_loops: TaskTracker::new(),
        }
    }

    /// Starts serving a claimed tunnel: only now, with the agent welcomed, may streams for
    /// its visitors arrive, those that waited on a parked claim first.
    pub(super) fn start(&mut self, mut opened: Opened) {
        let id = opened.granted.id;
        self.next_id = self.next_id.max(id + 1);
        let stop = self.stop.child_token();
        if let Some(handover) = opened.claimed.handover.take() {
            handover.send_replace(Some(opened.route.clone()));
        }
        let (route, shared) = (opened.route.clone(), self.shared.clone());
        let span = tracing::info_span!("tunnel", port = opened.granted.port);
        let accepting = match opened.claimed.socket.take() {
            Some(PublicSocket::Tcp(listener)) => {
                let accept = accept_visitors(listener, route, shared, stop.clone());
                Some(self.accept_loops.spawn(accept.instrument(span)))
            }
            Some(PublicSocket::Udp(socket)) => {
                let receive = crate::udp::serve(socket, route, shared, stop.clone());
                Some(self.accept_loops.spawn(receive.instrument(span)))
            }
            None => None,
        };
        match opened.granted.urls.first() {
            Some(url) => tracing::info!(%url, name = %opened.granted.name, "tunnel open"),
            None => tracing::info!(port = opened.granted.port, name = %opened.granted.name, "tunnel open"),
        }
        self.tunnels.insert(id, Running { opened, stop, accepting });
    }

    /// Serves visitors and the agent's updates until the agent leaves or the relay stops;
    /// on a stop, visitors get the grace period to finish before the agent is told to
    /// reconnect. Returns the places to park when the session was lost rather than ended;
    /// otherwise they are released.
    pub(super) async fn run(
        mut self,
        mut control: RelayControlOn<AnyLink>,
        cancel: &CancellationToken,
    ) -> Option<Vec<Place>> {
        let mut reading = true;
        let (link, shared) = (self.link, self.shared);
        let migrations = count_migrations(link, shared);
        tokio::pin!(migrations);
        let datagrams = crate::udp::read_datagrams(link.primary(), link.flows(), &shared.metrics.traffic.udp);
        tokio::pin!(datagrams);
        let ended = loop {
            tokio::select! {
                err = link.closed() => break Some(err),
                _ = cancel.cancelled() => break None,
                never = &mut migrations => match never {},
                never = &mut datagrams => match never {},
                // Reading a frame is not cancel-safe, but every other branch ends the loop.
                msg = control.next_update(), if reading => match msg {
                    Ok(Some(AgentMsg::Update { add, remove })) => {
                        let answer = self.update(add, remove).await;
                        if control.answer_update(answer).await.is_err() {
                            tracing::info!("the agent does not take its update answers; closing the session");
                            link.close(CloseCode::ProtocolViolation);
                            reading = false;
                        } else if self.tunnels.is_empty() {
                            // A session with no tunnel would hold its place under the token's
                            // cap, and its memory, for nothing.
                            tracing::info!("the agent removed its last tunnel; closing the session");
                            link.close(CloseCode::NoTunnels);
                            reading = false;
                        }
                    }
                    // The agent will send nothing more, or the session is going: the tunnels go
                    // on until the connection itself says it has ended.
                    Ok(None) => reading = false,
                    Err(e) => {
                        tracing::info!("malformed control message: {e}");
                        link.close(CloseCode::ProtocolViolation);
                        reading = false;
                    }
                },
            }
        };
        self.stop.cancel();
        self.accept_loops.close();
        self.accept_loops.wait().await;
        let lost = matches!(&ended, Some(err) if lost(self.shared, err));
        self.registered.ended();
        let places = std::mem::take(&mut self.tunnels).into_values().map(|running| running.opened.claimed.place);
        if lost {
            return Some(places.collect());
        }
        for place in places {
            crate::claims::release(self.shared, &place, self.session).await;
        }
        if ended.is_none() {
            // Visitors finish within the relay's one grace period; then the agent is told to
            // reconnect.
            self.shared.drained.cancelled().await;
            self.link.close(CloseCode::Shutdown);
            tracing::info!("session closed for shutdown");
        }
        None
    }

    /// Closes the tunnels `remove` names, then opens `add`, each on its own: one refused
    /// tunnel does not stop the others.
    async fn update(&mut self, add: Vec<TunnelSpec>, remove: Vec<u32>) -> UpdateAnswer {
        for id in remove {
            let Some(Running { opened, stop, accepting }) = self.tunnels.remove(&id) else { continue };
            stop.cancel();
            // The port is free for another claim (this tunnel's new settings) only once its
            // listener is closed.
            if let Some(accepting) = accepting {
                accepting.await.ok();
            }
            opened.release(self.shared, self.session).await;
            self.registered.remove(id, &opened.granted.name);
            tracing::info!(name = %opened.granted.name, "tunnel closed by its agent");
        }
        let (mut granted, mut refused) = (Vec::new(), Vec::new());
        let kept: Vec<String> = self.tunnels.values().map(|r| r.opened.granted.name.clone()).collect();
        let kept: Vec<&str> = kept.iter().map(String::as_str).collect();
        let max = self.shared.config().max_tunnels_per_session;
        for spec in add {
            let open_now = self.tunnels.len();
            let checked = if open_now >= max {
                Err(Refusal::TooManyTunnels { asked: open_now + 1, max })
            } else {
                admission::check_names(std::slice::from_ref(&spec), &kept)
            };
            let id = self.next_id;
            let opened = match checked {
                Ok(()) => admission::open(self.shared, self.grant, self.link, self.session, id, &spec).await,
                Err(refusal) => Err(refusal),
            };
            match opened {
                Ok(opened) => {
                    self.registered.add(self.grant, &opened.granted);
                    granted.push(opened.granted.clone());
                    self.start(opened);
                }
                Err(refusal) => {
                    tracing::info!(name = %spec.name, %refusal, "added tunnel refused");
                    refused.push((spec.name, refusal));
                }
            }
        }
        durable(self.shared).await;
        UpdateAnswer { granted, refused }
    }
}

/// Whether a session that ended with `err` was lost rather than ended on purpose, so its
/// places are kept for its agent's return.
fn lost(shared: &Shared, err: &LinkError) -> bool {
    match err {
        // The user chose to stop: visitors are better refused at once than kept waiting.
        LinkError::Closed(CloseCode::AgentExit) => tracing::info!("agent left; tunnels closed"),
        // While serving, this relay closes a session itself to replace it (the newer session
        // has the places already) or for a protocol violation.
        LinkError::LocallyClosed => tracing::info!("session closed by the relay"),
        _ if !shared.config().park_visitors_for.is_zero() => {
            tracing::info!(reason = %err, "session lost");
            return true;
        }
        _ => tracing::info!(reason = %err, "session lost; tunnels closed"),
    }
    false
}

/// How often the links' paths are checked; quinn follows a migration by itself and only
/// the address a link now uses tells that it happened.
const PATH_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// Logs and counts each change of a link's address (a NAT rebinding, a new network). Each
/// link has its own socket at the agent and moves when it next sends, so a rebinding is
/// counted once for each link that crosses it. Runs until the caller drops it with the
/// session.
async fn count_migrations(link: &SessionLink, shared: &Shared) -> std::convert::Infallible {
    let mut paths: std::collections::HashMap<usize, std::net::SocketAddr> = link.link_addresses().into_iter().collect();
    let mut check = tokio::time::interval(PATH_CHECK);
    loop {
        check.tick().await;
        let now = link.link_addresses();
        for &(id, to) in &now {
            if let Some(from) = paths.insert(id, to).filter(|from| *from != to) {
                tracing::info!(link = id, %from, %to, "agent link's address changed; link migrated");
                shared.metrics.migrations.inc();
            }
        }
        paths.retain(|id, _| now.iter().any(|(live, _)| live == id));
    }
}
