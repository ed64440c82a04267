//! UDP tunnels: each visitor address is a flow, announced by a stream the relay opens and
//! carried as datagrams on the link. [`Flows`] is the session's table of live flows, which
//! every link's datagram reader feeds; [`flow`] is one flow's life at the local service.

mod flow;
mod pending;

use std::{
    collections::HashMap,
    io::ErrorKind,
    sync::{Arc, Mutex},
};

use burrow_common::{
    link::{Link, LinkError},
    protocol::datagram::{self, DatagramDecodeError},
    splice::Progress,
    sync::lock,
};
use bytes::Bytes;
use tokio::{net::UdpSocket, time::Instant};

pub(crate) use self::flow::serve;
use self::pending::Pending;
use crate::stats::{Datagrams, Dropped, Stats};

/// The session's live flows by the id the relay gave them, and the datagrams that came
/// before their flow's stream. One lock over both, so a datagram is either delivered or
/// kept for the flow being registered, never lost between the two.
///
/// A lock rather than a task owning the table: every datagram looks its flow up, and a
/// task would put a channel hop and a wake-up on each.
pub(crate) struct Flows {
    table: Mutex<Table>,
    stats: Stats,
}

#[derive(Default)]
struct Table {
    live: HashMap<u64, Arc<Local>>,
    pending: Pending,
}

/// A flow's socket to the local service, and where its traffic is counted.
pub(crate) struct Local {
    socket: UdpSocket,
    datagrams: Arc<Datagrams>,
    progress: Arc<Progress>,
}

impl Flows {
    pub(crate) fn new(stats: Stats) -> Self {
        Self { table: Mutex::default(), stats }
    }

    fn any_live(&self) -> bool {
        !lock(&self.table).live.is_empty()
    }

    /// Hands a datagram from the relay to its flow's local socket.
    ///
    /// The receive path is sized on purpose: no queue of ours stands between the link and
    /// the local service. The link's datagram buffer (`AGENT_DATAGRAM_BUFFER`) absorbs
    /// bursts while this reader runs, and this reader never waits on a flow: it `try_send`s
    /// into the local socket's kernel buffer, and a full one drops the packet (counted as
    /// queue full), so a stalled local service loses its own packets and delays nobody
    /// else's. Queueing further would only make a real-time protocol's packets late.
    pub(crate) fn deliver(&self, datagram: &Bytes) {
        let (id, payload) = match datagram::decode(datagram) {
            Ok(flow) => flow,
            // The relay's liveness probe.
            Err(DatagramDecodeError::NoFlow) => return,
            Err(DatagramDecodeError::Truncated) => return self.stats.unknown_flow(1),
        };
        let local = {
            let mut table = lock(&self.table);
            match table.live.get(&id) {
                Some(local) => local.clone(),
                None => {
                    let dropped = table.pending.push(id, payload, Instant::now());
                    drop(table);
                    return self.stats.unknown_flow(dropped);
                }
            }
        };
        local.send(&payload);
    }

    /// Enters flow `id` in the table and delivers what came for it before its stream; none
    /// if the id is in use already (the relay never reuses one within a session). The flow
    /// leaves the table when the returned guard drops.
    fn register(&self, id: u64, local: &Arc<Local>) -> Option<Registered<'_>> {
        let mut table = lock(&self.table);
        if table.live.contains_key(&id) {
            return None;
        }
        table.live.insert(id, local.clone());
        let (waited, expired) = table.pending.take(id, Instant::now());
        // Under the lock, so that later datagrams of the flow cannot overtake these.
        for payload in &waited {
            local.send(payload);
        }
        drop(table);
        self.stats.unknown_flow(expired);
        Some(Registered { flows: self, id })
    }
}

/// A flow's place in the table, given up on drop however the flow ends.
struct Registered<'a> {
    flows: &'a Flows,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(&self.flows.table).live.remove(&self.id);
    }
}

impl Local {
    /// Sends a visitor's packet to the local service without waiting.
    fn send(&self, payload: &[u8]) {
        match self.socket.try_send(payload) {
            Ok(_) => {
                self.datagrams.to_local();
                self.progress.add_stream_to_tcp(payload.len() as u64);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => self.datagrams.dropped(Dropped::QueueFull),
            // A refused send reports an earlier packet's ICMP port unreachable; any other
            // failure of a connected socket also means the service is not reachable now.
            Err(e) => {
                tracing::trace!("packet to the local service not sent: {e}");
                self.datagrams.dropped(Dropped::LocalUnreachable);
            }
        }
    }
}

/// Reads the relay's datagrams on `link` until it ends, and says why it ended. One runs
/// per link, since the relay sends each flow's datagrams on the link of the flow's stream.
pub(crate) async fn read_datagrams<L: Link>(link: &L, flows: &Flows) -> LinkError {
    loop {
        match link.read_datagram().await {
            Ok(datagram) => flows.deliver(&datagram),
            Err(ended) => return ended,
        }
    }
}

/// Longest a QUIC link carrying flows stays silent towards the relay.
const FLOW_PATH_SILENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps the relay's idea of this link's address fresh while the session has flows: after a
/// NAT rebinding the relay learns the agent's new address only from the agent's next packet,
/// and a flow whose local service only answers would otherwise lose every packet the relay
/// sends until the next keep-alive (10 s). A link that has sent nothing for a second sends
/// one ack-eliciting byte (a flow-0 datagram the relay ignores); a busy link sends nothing
/// extra. Runs until the caller drops it.
pub(crate) async fn keep_path_fresh<L: Link>(link: &L, flows: &Flows) -> std::convert::Infallible {
    let mut sent = link.path().sent_packets;
    let mut check = tokio::time::interval(FLOW_PATH_SILENCE);
    loop {
        check.tick().await;
        let now = link.path().sent_packets;
        if now == sent && flows.any_live() {
            link.elicit_answer().ok();
        }
        sent = link.path().sent_packets;
    }
}

#[cfg(test)]
mod tests;
