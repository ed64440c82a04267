//! A session's flow table: every open flow of its UDP tunnels by id, so the agent's
//! datagrams, read on any of the session's links, reach the visitor they answer.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use burrow_common::{
    link::{AnyLink, Link},
    protocol::datagram::{self, DatagramDecodeError},
    splice::Progress,
    sync,
};
use tokio::{net::UdpSocket, time::Instant};

use crate::traffic::{Dropped, UdpCounts, UdpSeries};

/// The session's open flows. Ids start at 1 and are never reused in the session, so a late
/// datagram of an ended flow can never reach a newer flow's visitor.
pub(crate) struct Flows {
    next: AtomicU64,
    open: RwLock<HashMap<u64, Arc<Delivery>>>,
}

impl Default for Flows {
    fn default() -> Self {
        Self { next: AtomicU64::new(1), open: RwLock::default() }
    }
}

/// Where one flow's replies go, and what counts them.
pub(crate) struct Delivery {
    socket: Arc<UdpSocket>,
    visitor: SocketAddr,
    progress: Arc<Progress>,
    counts: UdpCounts,
    born: Instant,
    /// Milliseconds after `born` of the last packet either way: the flow's idle clock.
    heard: AtomicU64,
}

impl Delivery {
    pub(super) fn new(
        socket: Arc<UdpSocket>,
        visitor: SocketAddr,
        progress: Arc<Progress>,
        counts: &UdpCounts,
    ) -> Self {
        Self { socket, visitor, progress, counts: counts.clone(), born: Instant::now(), heard: AtomicU64::new(0) }
    }

    pub(super) fn last_heard(&self) -> Instant {
        self.born + std::time::Duration::from_millis(self.heard.load(Relaxed))
    }

    fn touch(&self) {
        let millis = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heard.fetch_max(millis, Relaxed);
    }

    pub(super) fn heard_from_visitor(&self, bytes: u64) {
        self.progress.add_tcp_to_stream(bytes);
        self.touch();
    }

    /// Sends one reply to the visitor; a full socket buffer drops it, as a router would.
    fn deliver(&self, payload: &[u8]) {
        match self.socket.try_send_to(payload, self.visitor) {
            Ok(_) => {
                self.counts.to_visitor();
                self.progress.add_stream_to_tcp(payload.len() as u64);
                self.touch();
            }
            Err(e) => {
                tracing::trace!(visitor = %self.visitor, "reply dropped: {e}");
                self.counts.dropped(Dropped::QueueFull);
            }
        }
    }
}

/// A flow's place in the table; dropping it takes the flow out.
pub(crate) struct Registered<'a> {
    flows: &'a Flows,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        sync::write(&self.flows.open).remove(&self.id);
    }
}

impl Flows {
    pub(super) fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Relaxed)
    }

    pub(super) fn register(&self, id: u64, delivery: Arc<Delivery>) -> Registered<'_> {
        sync::write(&self.open).insert(id, delivery);
        Registered { flows: self, id }
    }

    fn get(&self, id: u64) -> Option<Arc<Delivery>> {
        sync::read(&self.open).get(&id).cloned()
    }
}

/// Reads and drops whatever datagrams a link that has not authenticated sends, for as long
/// as the caller polls it: the datagram buffer every connection advertises is not a buffer
/// a stranger may fill.
pub(crate) async fn discard_datagrams(link: &AnyLink) -> std::convert::Infallible {
    while link.read_datagram().await.is_ok() {}
    std::future::pending().await
}

/// Reads the agent's datagrams on one link of the session and delivers each to its flow's
/// visitor, for as long as the link lasts; then waits for the caller to drop it.
pub(crate) async fn read_datagrams(link: &AnyLink, flows: &Flows, series: &UdpSeries) -> std::convert::Infallible {
    while let Ok(received) = link.read_datagram().await {
        match datagram::decode(&received) {
            Ok((id, payload)) => match flows.get(id) {
                Some(delivery) => delivery.deliver(&payload),
                None => series.dropped(Dropped::UnknownFlow),
            },
            Err(DatagramDecodeError::NoFlow) => {}
            Err(DatagramDecodeError::Truncated) => series.dropped(Dropped::UnknownFlow),
        }
    }
    std::future::pending().await
}
