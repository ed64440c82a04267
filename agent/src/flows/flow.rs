//! One UDP flow: a socket of its own to the local service, connected to it, so the kernel
//! passes it only that service's packets and each reply goes back to this visitor alone.

use std::{
    io::{self, ErrorKind},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use burrow_common::{
    StreamCode,
    link::{Link, StreamWriter},
    protocol::datagram::{self, NotSent},
    splice::abort_stream,
};
use tokio::{io::AsyncReadExt, net::UdpSocket};

use super::Local;
use crate::{
    config::LocalTarget,
    forward::{Target, Targets},
    stats::{Datagrams, Dropped, VisitEnd},
};

/// How a flow ended, before the stream is told.
enum Ending {
    /// The relay finished the stream (the flow was idle, or its visitor went away).
    Finished,
    /// The relay reset the stream or its link was lost.
    Reset(io::Error),
    /// A flow's stream carries no bytes; these came anyway.
    Bytes,
    LocalFailed(io::Error),
    TunnelRemoved,
    SessionEnded,
}

/// Carries flow `id` of tunnel `target` from `visitor` until the relay ends its stream or
/// the flow can go on no longer, which the relay learns from the stream's end.
pub(crate) async fn serve<L: Link>(
    link: L,
    (mut send, mut recv): (L::Writer, L::Reader),
    (id, visitor): (u64, SocketAddr),
    target: &Target,
    targets: &Targets,
) {
    let datagrams = Arc::new(Datagrams::default());
    let visit = targets.stats.open_flow(&target.name, target.counters.clone(), visitor, datagrams.clone());
    let socket = match connect(&target.local).await {
        Ok(socket) => socket,
        Err(e) => {
            tracing::warn!("no socket to the local service {} for a flow: {e}", target.local);
            abort_stream(&mut send, &mut recv, StreamCode::LocalUnreachable);
            return visit.finish(VisitEnd::Failed { reason: format!("no socket to {}: {e}", target.local) });
        }
    };
    let local = Arc::new(Local { socket, datagrams, progress: visit.shared_progress() });
    let Some(_registered) = targets.flows.register(id, &local) else {
        tracing::warn!(flow = id, "the relay opened a second stream for a live flow");
        abort_stream(&mut send, &mut recv, StreamCode::BadHeader);
        return visit.finish(VisitEnd::Failed { reason: "the flow id was in use".into() });
    };
    tracing::debug!(flow = id, "flow open");
    let mut byte = [0u8; 1];
    let ending = tokio::select! {
        read = recv.read(&mut byte) => match read {
            Ok(0) => Ending::Finished,
            Ok(_) => Ending::Bytes,
            Err(e) => Ending::Reset(e),
        },
        failed = to_visitor(&link, id, &local) => Ending::LocalFailed(failed),
        _ = target.closed.cancelled() => Ending::TunnelRemoved,
        _ = targets.ended.cancelled() => Ending::SessionEnded,
    };
    let end = match ending {
        Ending::Finished => {
            // Our half too, so the stream is gone at both ends.
            send.finish().ok();
            VisitEnd::Closed
        }
        Ending::Reset(e) => VisitEnd::Failed { reason: format!("ended by the relay: {e}") },
        Ending::Bytes => {
            abort_stream(&mut send, &mut recv, StreamCode::BadHeader);
            VisitEnd::Failed { reason: "the relay sent bytes on the flow's stream".into() }
        }
        Ending::LocalFailed(e) => {
            tracing::warn!("the socket to the local service {} failed: {e}", target.local);
            abort_stream(&mut send, &mut recv, StreamCode::LocalUnreachable);
            VisitEnd::Failed { reason: format!("local socket failed: {e}") }
        }
        Ending::TunnelRemoved => {
            abort_stream(&mut send, &mut recv, StreamCode::UnknownTunnel);
            VisitEnd::Failed { reason: "the tunnel was removed".into() }
        }
        Ending::SessionEnded => VisitEnd::Failed { reason: "the session ended".into() },
    };
    tracing::debug!(flow = id, ?end, "flow closed");
    visit.finish(end);
}

/// A socket on an ephemeral port of the local service's address family, connected to it.
async fn connect(local: &LocalTarget) -> io::Result<UdpSocket> {
    let mut addrs = tokio::net::lookup_host((local.host.as_str(), local.port)).await?;
    let addr = addrs.next().ok_or_else(|| io::Error::new(ErrorKind::NotFound, "the name has no address"))?;
    let any = match addr {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = UdpSocket::bind(any).await?;
    socket.connect(addr).await?;
    // tokio's `try_send` reports WouldBlock until its reactor has seen the socket writable
    // once, and the packets that waited for the flow's stream are sent as it registers.
    socket.writable().await?;
    Ok(socket)
}

/// Sends the local service's packets to the visitor until the socket fails.
///
/// Each read takes one byte more than the link's room: a packet that fills the buffer is
/// too large to cross whatever its length, and is dropped whole, so its bytes past the room
/// are never needed. A buffer for the largest UDP payload (64 KiB) would cost each flow as
/// much as some fifty packets that fit, and a DNS tunnel holds a flow per client.
async fn to_visitor<L: Link>(link: &L, id: u64, local: &Local) -> io::Error {
    let mut buffer = vec![0u8; datagram::room_on(link, id) + 1];
    loop {
        match local.socket.recv(&mut buffer).await {
            Ok(len) => send_datagram(link, id, (&buffer[..len], len == buffer.len()), local),
            // An earlier packet met a closed port (ICMP port unreachable): the service may be
            // restarting, and the flow outlives that.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => local.datagrams.dropped(Dropped::LocalUnreachable),
            Err(e) => return e,
        }
        // The room changes with the path's MTU.
        buffer.resize(datagram::room_on(link, id) + 1, 0);
    }
}

/// One packet as one link datagram, or dropped: it is never fragmented. A `filled` read
/// buffer may have cut the packet short, and means it was too large.
fn send_datagram<L: Link>(link: &L, id: u64, (payload, filled): (&[u8], bool), local: &Local) {
    let datagrams = &local.datagrams;
    if filled {
        return datagrams.dropped(Dropped::Oversize);
    }
    match datagram::send_on(link, id, payload) {
        Ok(()) => {
            datagrams.to_visitor();
            local.progress.add_tcp_to_stream(payload.len() as u64);
        }
        Err(NotSent::Oversize) => datagrams.dropped(Dropped::Oversize),
        // The flow's stream ends with the link; that ends the flow.
        Err(NotSent::Lost(_)) => {}
    }
}
