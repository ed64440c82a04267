//! One flow's task: its stream, its packets to the agent, and its end.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use burrow_common::{
    StreamHeader,
    link::{AnyLink, Link, LinkStatus, StreamReader, StreamWriter, Transport},
    protocol::{
        conversation::open_visitor_stream,
        datagram::{self, NotSent},
    },
};
use bytes::Bytes;
use tokio::{net::UdpSocket, sync::mpsc, time::Instant};

use super::flows::Delivery;
use crate::{
    Shared,
    claims::Route,
    limits::Admission,
    traffic::{Dropped, UdpCounts},
};

pub(super) struct Flow {
    pub(super) id: u64,
    pub(super) visitor: SocketAddr,
    /// The tunnel's public socket, which the agent's replies leave from.
    pub(super) socket: Arc<UdpSocket>,
    pub(super) counts: UdpCounts,
    /// Quiet both ways for this long, the flow ends.
    pub(super) idle: Duration,
}

/// Carries one flow until it is idle, the agent ends it, its link fails or the port's loop
/// stops. `admission` is its place under the visitor caps, held for its life.
pub(super) async fn carry(
    flow: Flow,
    mut packets: mpsc::Receiver<Bytes>,
    route: Arc<Route>,
    shared: Arc<Shared>,
    admission: Admission,
) {
    let _admission = admission;
    let link = route.link.pick();
    let visit = shared.metrics.traffic.visit(link.session_id(), route.tunnel, flow.visitor);
    let header = StreamHeader { tunnel: route.tunnel, visitor: flow.visitor, flow: Some(flow.id) };
    let (mut send, mut recv) = match open_visitor_stream(&*link, header, None).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!("UDP flow not opened: {e}");
            return drop_queued(packets, &flow.counts);
        }
    };
    let delivery = Arc::new(Delivery::new(flow.socket.clone(), flow.visitor, visit.shared_progress(), &flow.counts));
    let _registered = route.link.flows().register(flow.id, delivery.clone());
    tracing::debug!(flow = flow.id, "UDP flow opened");
    let mut probe = [Bytes::new()];
    let mut heard = Heard::new(&link);
    let ended = loop {
        let idle_at = delivery.last_heard() + flow.idle;
        tokio::select! {
            packet = packets.recv() => match packet {
                Some(_) if !heard.path_up(&link) => flow.counts.dropped(Dropped::PathDown),
                Some(packet) => {
                    if let Err(lost) = send_packet(&*link, flow.id, packet, &delivery, &flow.counts) {
                        break format!("link lost: {lost}");
                    }
                }
                None => break "the tunnel closed".to_string(),
            },
            () = tokio::time::sleep_until(idle_at) => {
                if delivery.last_heard() + flow.idle <= Instant::now() {
                    break "idle".to_string();
                }
            }
            // The stream carries no bytes: whatever it yields is the agent ending the flow.
            read = recv.read_chunks(&mut probe) => break match read {
                Ok(_) => "ended by the agent".to_string(),
                Err(e) => format!("stream failed: {e}"),
            },
        }
    };
    tracing::debug!(flow = flow.id, %ended, "UDP flow ended");
    send.finish().ok();
    drop_queued(packets, &flow.counts);
}

/// Counts the packets still queued for a flow that ends (or never opened) as dropped: the
/// visitor's next packet opens a new flow.
fn drop_queued(mut packets: mpsc::Receiver<Bytes>, counts: &UdpCounts) {
    packets.close();
    while packets.try_recv().is_ok() {
        counts.dropped(Dropped::NoSession);
    }
}

/// How long the agent may stay unheard on a QUIC link after the flow sent on it before the
/// path counts as down. Every datagram is acknowledged within the agent's ACK delay (25 ms)
/// and a round trip, so a second of silence is an outage, not a slow path.
const PATH_SILENCE: Duration = Duration::from_secs(1);

/// How often the link's received-packet count is read: reading it takes the connection's lock.
const HEARD_CHECK: Duration = Duration::from_millis(50);

/// Whether the agent still answers on the flow's link. quinn queues datagrams while the path
/// is down and sends them all once it is back: after a 5 s outage a game or a call would get
/// seconds of stale packets ahead of fresh ones. Dropping them while the agent is unheard
/// keeps the queue to the first second of an outage. Over TCP the kernel queues instead and
/// the agent's acknowledgements are not packets of the link, so only QUIC links are watched.
struct Heard {
    watched: bool,
    packets: u64,
    checked: Instant,
    /// The first packet sent since the agent was last heard.
    unanswered_since: Option<Instant>,
}

impl Heard {
    fn new(link: &AnyLink) -> Self {
        let watched = link.transport() == Transport::Quic;
        Self { watched, packets: link.path().received_packets, checked: Instant::now(), unanswered_since: None }
    }

    /// Whether a packet sent now is sent on a path that works.
    fn path_up(&mut self, link: &AnyLink) -> bool {
        if !self.watched {
            return true;
        }
        let now = Instant::now();
        if now.duration_since(self.checked) >= HEARD_CHECK {
            self.checked = now;
            let packets = link.path().received_packets;
            if packets != self.packets {
                self.packets = packets;
                self.unanswered_since = None;
            }
        }
        now.duration_since(*self.unanswered_since.get_or_insert(now)) < PATH_SILENCE
    }
}

/// Sends one visitor packet as a datagram; an error only when the link is gone.
fn send_packet(
    link: &impl Link,
    flow: u64,
    packet: Bytes,
    delivery: &Delivery,
    counts: &UdpCounts,
) -> Result<(), burrow_common::link::LinkError> {
    match datagram::send_on(link, flow, &packet) {
        Ok(()) => {
            counts.to_local();
            delivery.heard_from_visitor(packet.len() as u64);
            Ok(())
        }
        Err(NotSent::Oversize) => {
            counts.dropped(Dropped::Oversize);
            Ok(())
        }
        Err(NotSent::Lost(lost)) => {
            counts.dropped(Dropped::NoSession);
            Err(lost)
        }
    }
}
