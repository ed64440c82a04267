//! The relay's streams and datagrams: serve them on each link, read each stream's header, and
//! carry it to its tunnel's local target, or hand it to the UDP flows.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use burrow_common::{
    StreamCode,
    deadline::StallLimits,
    link::{Link, LinkError, StreamReader, StreamWriter},
    protocol::conversation::read_stream_header,
    splice::{Progress, abort_stream, splice},
    stream_io::StreamIo,
    sync, transport,
};
use tokio::net::TcpStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    config::{LocalTarget, Protocol},
    flows::{self, Flows},
    local_http::LocalHttp,
    stats::{Stats, TunnelStats, VisitEnd},
};

/// A local server that does not accept within this is treated as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Local targets by the tunnel id the relay granted, and where their traffic is counted: one
/// per session, shared by the stream acceptors of all its links. Tunnels come and go with the
/// config file, so the map changes while streams arrive.
pub(crate) struct Targets {
    pub(crate) stats: Stats,
    by_id: RwLock<HashMap<u32, Arc<Target>>>,
    /// The UDP tunnels' live flows, whichever link carries them.
    pub(crate) flows: Flows,
    /// Every task the session's visitors need: streams, upgraded connections, replays.
    pub(crate) tasks: TaskTracker,
    /// Cancelled when the session ends, for the tasks that would outlive its streams.
    pub(crate) ended: CancellationToken,
}

impl Targets {
    pub(crate) fn new(stats: Stats) -> Self {
        let (tasks, ended) = (TaskTracker::new(), CancellationToken::new());
        Self { flows: Flows::new(stats.clone()), stats, by_id: RwLock::default(), tasks, ended }
    }

    fn get(&self, id: u32) -> Option<Arc<Target>> {
        sync::read(&self.by_id).get(&id).cloned()
    }

    pub(crate) fn insert(&self, id: u32, target: Target) {
        sync::write(&self.by_id).insert(id, Arc::new(target));
    }

    /// Takes a tunnel out and ends its streams; its visitors' connections close.
    pub(crate) fn remove(&self, id: u32) {
        if let Some(target) = sync::write(&self.by_id).remove(&id) {
            target.closed.cancel();
        }
    }

    /// Waits for every task of the session, once its links are gone: streams fail at their
    /// next read or write, and the rest are told to stop.
    pub(crate) async fn end(&self) {
        self.ended.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) local: LocalTarget,
    /// A UDP tunnel's streams are flows; every other tunnel's carry visitors' bytes.
    pub(crate) protocol: Protocol,
    pub(crate) counters: Arc<TunnelStats>,
    /// Set for an HTTP tunnel: its streams carry HTTP requests, sent on to the local server
    /// one by one rather than spliced.
    pub(crate) http: Option<Arc<LocalHttp>>,
    /// Cancelled when the tunnel is removed while the session goes on.
    pub(crate) closed: CancellationToken,
    /// Visitors quiet both ways for this long are closed (`tcp_idle_timeout`).
    pub(crate) idle: Option<Duration>,
}

/// Serves what the relay sends on `link`, its streams and its datagrams, until the link
/// ends, and says why it ended. One runs per link; all feed the session's `targets`.
pub(crate) async fn serve_link<L: Link>(link: &L, targets: &Arc<Targets>) -> LinkError {
    tokio::select! {
        ended = accept_streams(link, targets) => ended,
        ended = flows::read_datagrams(link, &targets.flows) => ended,
        never = flows::keep_path_fresh(link, &targets.flows) => match never {},
    }
}

async fn accept_streams<L: Link>(link: &L, targets: &Arc<Targets>) -> LinkError {
    let mut limit = transport::AGENT_INITIAL_STREAMS;
    loop {
        let (send, recv) = match link.accept().await {
            Ok(stream) => stream,
            Err(ended) => return ended,
        };
        let (for_stream, for_flow) = (targets.clone(), link.clone());
        targets.tasks.spawn(async move { handle_stream(for_flow, send, recv, &for_stream).await });
        // The session's tasks stand for its open streams: an upgraded connection still holds
        // its stream, and replays are few.
        if let Some(raised) = transport::next_stream_limit(targets.tasks.len(), limit) {
            limit = raised;
            link.allow_streams(limit);
        }
    }
}

async fn handle_stream<L: Link>(link: L, mut send: L::Writer, mut recv: L::Reader, targets: &Targets) {
    let header = match read_stream_header(&mut recv).await {
        Ok(header) => header,
        Err(why) => {
            tracing::warn!("bad stream header from relay: {why}");
            return abort_stream(&mut send, &mut recv, StreamCode::BadHeader);
        }
    };
    let Some(target) = targets.get(header.tunnel) else {
        tracing::warn!(tunnel = header.tunnel, "relay opened a stream for an unknown tunnel");
        return abort_stream(&mut send, &mut recv, StreamCode::UnknownTunnel);
    };
    if header.flow.is_some() != (target.protocol == Protocol::Udp) {
        tracing::warn!(tunnel = header.tunnel, flow = header.flow, "relay opened a stream unlike its tunnel's kind");
        return abort_stream(&mut send, &mut recv, StreamCode::BadHeader);
    }
    if let Some(flow) = header.flow {
        let span = tracing::debug_span!("flow", id = flow, visitor = %header.visitor, local = %target.local);
        let flow = flows::serve(link, (send, recv), (flow, header.visitor), &target, targets);
        return flow.instrument(span).await;
    }
    let visit = targets.stats.open(&target.name, target.counters.clone(), header.visitor);
    let span = tracing::debug_span!("stream", id = recv.stream_id(), visitor = %header.visitor, local = %target.local);
    let served = async {
        match &target.http {
            Some(http) => {
                let stream = StreamIo::new(send, recv, visit.shared_progress());
                http.serve(stream, header.visitor).await
            }
            None => forward(send, recv, &target, visit.progress()).await,
        }
    };
    // Dropping the stream's halves on removal resets them, so the visitor sees an abort.
    let end = tokio::select! {
        end = served.instrument(span) => end,
        _ = target.closed.cancelled() => VisitEnd::Failed { reason: "the tunnel was removed".into() },
    };
    visit.finish(end);
}

async fn forward<W: StreamWriter, R: StreamReader>(
    mut send: W,
    mut recv: R,
    target: &Target,
    progress: &Progress,
) -> VisitEnd {
    let (local, idle) = (&target.local, target.idle);
    let connect = TcpStream::connect((local.host.as_str(), local.port));
    let local_tcp = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(tcp)) => tcp,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {CONNECT_TIMEOUT:?}"),
            };
            tracing::warn!("local server {local} unreachable: {why}");
            abort_stream(&mut send, &mut recv, StreamCode::LocalUnreachable);
            return VisitEnd::Failed { reason: format!("local server {local} unreachable: {why}") };
        }
    };
    // The local server is the agent's own, so only the visitor's quiet is bounded here.
    match splice(local_tcp, send, recv, progress, StallLimits { write_stall: None, idle }).await {
        Ok((to_visitor, to_local)) => {
            tracing::debug!(to_local, to_visitor, "stream closed");
            VisitEnd::Closed
        }
        Err(e) => {
            tracing::debug!("stream aborted: {e}");
            VisitEnd::Failed { reason: format!("aborted: {e}") }
        }
    }
}
