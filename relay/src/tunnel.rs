//! One public port: accept visitors and carry each over its own stream to the agent.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use burrow_common::{
    StreamHeader,
    deadline::StallLimits,
    protocol::conversation::{FirstBytes, open_visitor_stream},
    splice::{abort_tcp, splice},
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    RelayConfig, Shared,
    claims::Route,
    limits::{self, Admission, Places},
    metrics::{REFUSED_NO_STREAM, Reason},
    session::Picked,
};

/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepts the visitors of a port claim serving `route` until `stop`; each visitor runs on
/// the route's tracker so the relay's drain can wait for it.
pub(crate) async fn accept_visitors(
    listener: Arc<TcpListener>,
    route: Arc<Route>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    accept_until(&listener, &route.places, &shared, stop.cancelled(), |tcp, peer, admission| {
        // Spawned as is, not wrapped in another async block: a wrapper would hold this future
        // twice, doubling the memory of every open visitor.
        let link = route.link.pick();
        let served = forward(tcp, peer, link, route.tunnel, shared.clone(), admission, Vec::new());
        route.visitors.spawn(served.instrument(tracing::debug_span!("visitor", %peer)));
    })
    .await;
}

/// Accepts visitors on `listener` until `stop` completes, handing each one the caps admit to
/// `serve` and resetting the others at once.
pub(crate) async fn accept_until(
    listener: &TcpListener,
    places: &Places,
    shared: &Shared,
    stop: impl Future<Output = ()>,
    serve: impl FnMut(TcpStream, SocketAddr, Admission),
) {
    let admit = |ip| limits::admit(places, shared, ip);
    accept_admitted(listener, shared, stop, admit, serve).await;
}

/// Accepts connections on `listener` until `stop` completes, handing each one `admit` lets in
/// to `serve` with its place, and resetting the others at once, counted by reason.
pub(crate) async fn accept_admitted<P>(
    listener: &TcpListener,
    shared: &Shared,
    stop: impl Future<Output = ()>,
    admit: impl Fn(IpAddr) -> Result<P, Reason>,
    mut serve: impl FnMut(TcpStream, SocketAddr, P),
) {
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => match admit(peer.ip()) {
                Ok(admission) => serve(tcp, peer, admission),
                Err(full) => {
                    tracing::debug!(%peer, reason = full.reason, "visitor refused");
                    shared.metrics.visitors_refused.get_or_create(&full).inc();
                    abort_tcp(tcp);
                }
            },
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Carries one visitor across the tunnel, on the session's `link` picked for it.
/// `admission` is the visitor's place under the caps, held until it has been served. For a
/// parked visitor, "arrived" is its handover: the wait for the agent is not stream latency.
/// `first_bytes` were read from the visitor already (a TLS ClientHello read for its SNI).
pub(crate) async fn forward(
    visitor: TcpStream,
    peer: SocketAddr,
    link: Picked,
    tunnel: u32,
    shared: Arc<Shared>,
    admission: Admission,
    first_bytes: Vec<u8>,
) {
    let _admission = admission;
    let metrics = &shared.metrics;
    let arrived = Instant::now();
    let visit = metrics.traffic.visit(link.session_id(), tunnel, peer);
    let header = StreamHeader::visitor(tunnel, peer);
    let first = FirstBytes { bytes: &first_bytes, progress: visit.progress() };
    let (send, recv) = match open_visitor_stream(&*link, header, Some(first)).await {
        Ok(stream) => stream,
        Err(e) => {
            if e.is_no_stream() {
                tracing::debug!("visitor refused: {e:#}");
                metrics.visitors_refused.get_or_create(&REFUSED_NO_STREAM).inc();
            } else {
                tracing::debug!("stream header or first bytes not sent: {e}");
            }
            abort_tcp(visitor);
            return;
        }
    };
    // Sent: the splice need not hold them.
    drop(first_bytes);
    metrics.stream_open.observe(arrived.elapsed().as_secs_f64());
    // The visit counts the bytes, live and at its drop, whether the splice ends well or not.
    match splice(visitor, send, recv, visit.progress(), stall_limits(&shared.config())).await {
        Ok((up, down)) => tracing::debug!(up, down, "visitor closed"),
        Err(e) => tracing::debug!("visitor aborted: {e}"),
    }
}

/// How long a TCP visitor may stall the relay: a visitor that stops reading would otherwise
/// hold its stream and its places for ever.
pub(crate) fn stall_limits(config: &RelayConfig) -> StallLimits {
    StallLimits { write_stall: Some(config.visitor_write_timeout), idle: config.tcp_idle_timeout }
}
