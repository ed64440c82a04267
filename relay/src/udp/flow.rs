//! One flow's task: its stream, its packets to the agent, and its end.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use burrow_common::{
    StreamHeader,
    link::{DatagramError, Link, StreamReader, StreamWriter},
    protocol::{conversation::open_visitor_stream, datagram},
};
use bytes::Bytes;
use tokio::{net::UdpSocket, sync::mpsc};

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
            packets.close();
            while packets.try_recv().is_ok() {
                flow.counts.dropped(Dropped::NoSession);
            }
            return;
        }
    };
    let delivery = Arc::new(Delivery::new(flow.socket.clone(), flow.visitor, visit.shared_progress(), &flow.counts));
    let _registered = route.link.flows().register(flow.id, delivery.clone());
    tracing::debug!(flow = flow.id, "UDP flow opened");
    let mut probe = [Bytes::new()];
    let ended = loop {
        let idle_at = delivery.last_heard() + flow.idle;
        tokio::select! {
            packet = packets.recv() => match packet {
                Some(packet) => {
                    if let Err(lost) = send_packet(&*link, flow.id, packet, &delivery, &flow.counts) {
                        break format!("link lost: {lost}");
                    }
                }
                None => break "the tunnel closed".to_string(),
            },
            () = tokio::time::sleep_until(idle_at) => {
                if delivery.last_heard() + flow.idle <= tokio::time::Instant::now() {
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
}

/// Sends one visitor packet as a datagram; an error only when the link is gone.
fn send_packet(
    link: &impl Link,
    flow: u64,
    packet: Bytes,
    delivery: &Delivery,
    counts: &UdpCounts,
) -> Result<(), burrow_common::link::LinkError> {
    let room = link.max_datagram_size().map_or(0, |size| datagram::max_payload(size, flow));
    if packet.len() > room {
        counts.dropped(Dropped::Oversize);
        return Ok(());
    }
    let len = packet.len() as u64;
    match link.send_datagram(datagram::encode(flow, &packet)) {
        Ok(()) => {
            counts.to_local();
            delivery.heard_from_visitor(len);
            Ok(())
        }
        Err(DatagramError::TooLarge | DatagramError::Unsupported) => {
            counts.dropped(Dropped::Oversize);
            Ok(())
        }
        Err(DatagramError::Lost(lost)) => Err(lost),
    }
}
