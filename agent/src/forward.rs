//! One stream from the relay: read its header, dial the local target, splice.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use burrow_common::{
    StreamCode, StreamHeader,
    protocol::{MAX_HEADER_FRAME, read_msg},
    splice::{Progress, abort_stream, splice},
    stream_io::StreamIo,
};
use quinn::{RecvStream, SendStream};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    config::LocalTarget,
    local_http::LocalHttp,
    stats::{Outcome, Stats, TunnelStats},
};

/// The relay writes the header as soon as it opens the stream, so a slow one is broken.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A local server that does not accept within this is treated as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Local targets by the tunnel id the relay granted, and where their traffic is counted.
/// Tunnels come and go with the config file, so the map changes while streams arrive.
pub(crate) struct Targets {
    pub(crate) stats: Stats,
    pub(crate) by_id: RwLock<HashMap<u32, Arc<Target>>>,
}

impl Targets {
    fn get(&self, id: u32) -> Option<Arc<Target>> {
        self.by_id.read().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()
    }

    pub(crate) fn insert(&self, id: u32, target: Target) {
        self.by_id.write().unwrap_or_else(PoisonError::into_inner).insert(id, Arc::new(target));
    }

    /// Takes a tunnel out and ends its streams; its visitors' connections close.
    pub(crate) fn remove(&self, id: u32) {
        if let Some(target) = self.by_id.write().unwrap_or_else(PoisonError::into_inner).remove(&id) {
            target.closed.cancel();
        }
    }
}

pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) local: LocalTarget,
    pub(crate) counters: Arc<TunnelStats>,
    /// Set for an HTTP tunnel: its streams carry HTTP requests, sent on to the local server
    /// one by one rather than spliced.
    pub(crate) http: Option<Arc<LocalHttp>>,
    /// Cancelled when the tunnel is removed while the session goes on.
    pub(crate) closed: CancellationToken,
}

pub(crate) async fn handle_stream(mut send: SendStream, mut recv: RecvStream, targets: &Targets) {
    let header = match within(HEADER_TIMEOUT, read_msg::<_, StreamHeader>(&mut recv, MAX_HEADER_FRAME)).await {
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
    let visit = targets.stats.open(&target.name, target.counters.clone(), header.visitor);
    let span = tracing::debug_span!("stream", id = %recv.id(), visitor = %header.visitor, local = %target.local);
    let served = async {
        match &target.http {
            Some(http) => {
                let stream = StreamIo::new(send, recv, visit.shared_progress());
                http.serve(stream, header.visitor).await
            }
            None => forward(send, recv, &target.local, visit.progress()).await,
        }
    };
    // Dropping the stream's halves on removal resets them, so the visitor sees an abort.
    let outcome = tokio::select! {
        outcome = served.instrument(span) => outcome,
        _ = target.closed.cancelled() => Outcome::Failed { reason: "the tunnel was removed".into() },
    };
    visit.finish(outcome);
}

async fn forward(mut send: SendStream, mut recv: RecvStream, target: &LocalTarget, progress: &Progress) -> Outcome {
    let local = match within(CONNECT_TIMEOUT, TcpStream::connect((target.host.as_str(), target.port))).await {
        Ok(tcp) => tcp,
        Err(why) => {
            tracing::warn!("local server {target} unreachable: {why}");
            abort_stream(&mut send, &mut recv, StreamCode::LocalUnreachable);
            return Outcome::Failed { reason: format!("local server {target} unreachable: {why}") };
        }
    };
    match splice(local, send, recv, progress).await {
        Ok((to_visitor, to_local)) => {
            tracing::debug!(to_local, to_visitor, "stream closed");
            Outcome::Closed
        }
        Err(e) => {
            tracing::debug!("stream aborted: {e}");
            Outcome::Failed { reason: format!("aborted: {e}") }
        }
    }
}

/// Runs `step` for at most `limit`; a timeout and a failure both come back as the reason.
async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    step: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, step).await {
        Ok(done) => done.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}
