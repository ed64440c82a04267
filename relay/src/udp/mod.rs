//! UDP tunnels: a public UDP port whose packets cross the link as datagrams, never on a
//! stream, so a lost packet holds up nothing behind it.
//!
//! Each visitor address is a **flow**. The port's one receive loop ([`serve`]) admits a new
//! flow under the tunnel's and the address's visitor caps and hands its packets to the
//! flow's task ([`flow`]), which opens the flow's stream (its header names the flow's id),
//! sends the packets as datagrams on that stream's link, and ends the flow when it has been
//! quiet both ways for the tunnel's idle time. The agent's datagrams come back through the
//! session's flow table ([`flows`]), read on every link. While the agent is away the port
//! stays bound and what arrives is counted as dropped ([`drop_while_parked`]).

mod flow;
mod flows;

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::{
    net::UdpSocket,
    sync::mpsc::{self, error::TrySendError},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub(crate) use self::flows::{Flows, discard_datagrams, read_datagrams};
use crate::{
    Shared,
    claims::{Route, RouteKind},
    limits,
    traffic::{Dropped, UdpCounts},
};

/// The largest UDP payload over IPv4 or IPv6 without jumbograms.
const MAX_UDP_PAYLOAD: usize = 65_535;

/// Packets of one flow waiting for its task: while its stream opens, and through a burst
/// (iperf3 at 100 Mbit/s sends bursts of tens of packets). At most [`LARGEST_CARRIED`]
/// bytes each, so a flow holds at most 384 KiB, and the visitor caps bound the flows.
const FLOW_QUEUE: usize = 256;

/// No link carries a larger datagram (QUIC stays within a 1,452-byte path MTU, the TCP link
/// takes 1,200 bytes): a larger packet is dropped as it arrives, before it takes any room.
const LARGEST_CARRIED: usize = 1_500;

/// How often flows that ended are taken out of the port's table.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Pause after a receive error, so the loop does not spin.
const RECEIVE_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Receives the visitors' packets on a UDP tunnel's port until `stop`, each to its flow.
pub(crate) async fn serve(socket: Arc<UdpSocket>, route: Arc<Route>, shared: Arc<Shared>, stop: CancellationToken) {
    let RouteKind::Udp { flow_idle } = route.kind else { return };
    let counts = shared.metrics.traffic.udp_counts(&route.key);
    let mut flows: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
    let mut buffer = vec![0u8; MAX_UDP_PAYLOAD];
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        let received = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = sweep.tick() => {
                flows.retain(|_, queue| !queue.is_closed());
                continue;
            }
            received = socket.recv_from(&mut buffer) => received,
        };
        let (len, visitor) = match received {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!("UDP receive failed: {e}");
                tokio::time::sleep(RECEIVE_ERROR_PAUSE).await;
                continue;
            }
        };
        if len > LARGEST_CARRIED {
            counts.dropped(Dropped::Oversize);
            continue;
        }
        let packet = Bytes::copy_from_slice(&buffer[..len]);
        if flows.get(&visitor).is_none_or(mpsc::Sender::is_closed) {
            flows.remove(&visitor);
            let Some(queue) = open_flow(visitor, (&socket, &route, &shared), &counts, flow_idle) else { continue };
            flows.insert(visitor, queue);
        }
        if let Some(queue) = flows.get(&visitor)
            && let Err(TrySendError::Full(_) | TrySendError::Closed(_)) = queue.try_send(packet)
        {
            counts.dropped(Dropped::QueueFull);
        }
    }
}

/// Admits a new flow from `visitor` and starts its task; none when a cap is full.
fn open_flow(
    visitor: SocketAddr,
    (socket, route, shared): (&Arc<UdpSocket>, &Arc<Route>, &Arc<Shared>),
    counts: &UdpCounts,
    idle: Duration,
) -> Option<mpsc::Sender<Bytes>> {
    let admission = match limits::admit(&route.places, shared, visitor.ip()) {
        Ok(admission) => admission,
        Err(full) => {
            tracing::debug!(%visitor, reason = full.reason, "UDP flow refused");
            shared.metrics.visitors_refused.get_or_create(&full).inc();
            counts.dropped(Dropped::FlowLimit);
            return None;
        }
    };
    let (queue, packets) = mpsc::channel(FLOW_QUEUE);
    let flow =
        flow::Flow { id: route.link.flows().next_id(), visitor, socket: socket.clone(), counts: counts.clone(), idle };
    let carried = flow::carry(flow, packets, route.clone(), shared.clone(), admission);
    route.visitors.spawn(carried.instrument(tracing::debug_span!("flow", %visitor)));
    Some(queue)
}

/// Counts what reaches a parked UDP port as dropped, until `stop`: nobody can carry it, and
/// a UDP visitor retries on its own.
pub(crate) async fn drop_while_parked(socket: Arc<UdpSocket>, counts: UdpCounts, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut buffer = vec![0u8; MAX_UDP_PAYLOAD];
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            received = socket.recv_from(&mut buffer) => match received {
                Ok(_) => counts.dropped(Dropped::NoSession),
                Err(_) => tokio::time::sleep(RECEIVE_ERROR_PAUSE).await,
            },
        }
    }
}
