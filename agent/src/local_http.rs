//! An HTTP tunnel's end at the agent: the requests the relay sends over a stream are passed
//! on to the local server, with the tunnel's rewrites, and a local server that is down is
//! answered with a page that says so.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use burrow_common::{
    error_page::{ErrorPage, wants_html},
    link::{StreamReader, StreamWriter},
    stream_io::StreamIo,
    upgrade,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::{
    Method, Request, Response, StatusCode, Uri,
    body::Incoming,
    header::{self, HeaderName, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    TunnelPlan,
    config::LocalTarget,
    requests::{Exchange, Side, Tap},
    stats::{Stats, VisitEnd, lock},
};

mod gather;
mod pool;

use self::{
    gather::Gathered,
    pool::{LocalError, Pool, Sender},
};

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// A visitor stream's connection to the local server, between its requests.
type Held = Mutex<Option<Sender>>;

/// Longest a replay waits for its answer, and reads its body.
const REPLAY_LIMIT: Duration = Duration::from_secs(60);

/// What the inspector's user changed before a replay; `None` keeps the original's.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayEdit {
    pub(crate) method: Option<String>,
    pub(crate) path: Option<String>,
    pub(crate) headers: Option<Vec<(String, String)>>,
    pub(crate) body: Option<String>,
}

pub(crate) struct LocalHttp {
    pool: Pool,
    /// The tunnel's name, under which its requests are listed.
    tunnel: String,
    stats: Stats,
    /// The session's: upgraded connections and replays run here, so none outlives it.
    tasks: TaskTracker,
    /// Cancelled when the tunnel is removed: its upgraded connections end with it.
    closed: CancellationToken,
    /// Cancelled when the session ends: its replays stop waiting for their responses.
    session_ended: CancellationToken,
    local: LocalTarget,
    /// Protocols besides WebSocket that requests may switch to.
    upgrades: Vec<String>,
    host_header: Option<HeaderValue>,
    request_headers: Vec<(HeaderName, HeaderValue)>,
    response_headers: Vec<(HeaderName, HeaderValue)>,
}

impl LocalHttp {
    /// The rewrites were checked when the configuration was loaded; one that still does not
    /// parse is left out rather than failing every request. `closed` ends with the tunnel,
    /// `session_ended` with its session.
    pub(crate) fn new(
        name: &str,
        tunnel: &TunnelPlan,
        stats: &Stats,
        tasks: &TaskTracker,
        (closed, session_ended): (CancellationToken, CancellationToken),
    ) -> Self {
        let headers = |pairs: &[(String, String)]| {
            pairs
                .iter()
                .filter_map(|(name, value)| {
                    Some((HeaderName::from_bytes(name.as_bytes()).ok()?, HeaderValue::from_str(value).ok()?))
                })
                .collect()
        };
        let rewrite = &tunnel.rewrite;
        Self {
            pool: Pool::new(tunnel.local.clone()),
            tunnel: name.to_string(),
            stats: stats.clone(),
            tasks: tasks.clone(),
            closed,
            session_ended,
            local: tunnel.local.clone(),
            upgrades: tunnel.access.upgrades.clone(),
            host_header: rewrite.host_header.as_deref().and_then(|h| HeaderValue::from_str(h).ok()),
            request_headers: headers(&rewrite.request_headers),
            response_headers: headers(&rewrite.response_headers),
        }
    }

    /// Serves the requests of one visitor connection, as the relay sends them on `stream`.
    pub(crate) async fn serve<W, R>(&self, stream: StreamIo<W, R>, visitor: SocketAddr) -> VisitEnd
    where
        W: StreamWriter,
        R: StreamReader,
    {
        // The stream's connection to the local server, kept between its requests.
        let held = Mutex::new(None);
        let service = service_fn(|request| {
            let held = &held;
            async move { Ok::<_, Infallible>(self.forward(request, visitor, held).await) }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(Gathered(stream)), service)
            .with_upgrades()
            .await;
        if let Some(sender) = lock(&held).take() {
            self.pool.put_back(sender);
        }
        match served {
            Ok(()) => VisitEnd::Closed,
            Err(e) => VisitEnd::Failed { reason: format!("HTTP stream failed: {e}") },
        }
    }

    async fn forward(&self, mut request: Request<Incoming>, visitor: SocketAddr, held: &Held) -> Response<Body> {
        // The relay applies the same rule; checked again here for any relay in between.
        let switching = upgrade::permitted(request.headers(), &self.upgrades);
        if !switching {
            upgrade::strip(request.headers_mut());
        }
        let visitor_upgrade = switching.then(|| hyper::upgrade::on(&mut request));
        let html = wants_html(request.headers());
        let (parts, body) = request.into_parts();
        let exchange = self.stats.requests().start(&self.tunnel, Some(visitor), None, &parts);
        // The tap of a body that has ended already tells the watchers at once, of both.
        let told = hyper::body::Body::is_end_stream(&body);
        let body = Tap::new(body, exchange.clone(), Side::Request, self.on_change()).boxed_unsync();
        if !told {
            self.stats.changed();
        }
        let mut response = self.send(Request::from_parts(parts, body), &exchange, held).await;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(visitor_side) = visitor_upgrade else {
                // The connection to the local server is no longer HTTP; it is dropped with
                // the response.
                let detail = format!("the local server at {} switched protocols without being asked to", self.local);
                let page = ErrorPage::new(
                    StatusCode::BAD_GATEWAY,
                    "Unexpected protocol switch",
                    "The local server switched protocols without being asked to.".into(),
                );
                return self.failure(&detail, page, html, &exchange);
            };
            let local_side = hyper::upgrade::on(&mut response);
            let (closed, session_ended) = (self.closed.clone(), self.session_ended.clone());
            self.tasks.spawn(async move {
                tokio::select! {
                    joined = upgrade::join(visitor_side, local_side) => match joined {
                        Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
                        Err(e) => tracing::debug!("upgraded connection failed: {e:#}"),
                    },
                    _ = closed.cancelled() => tracing::debug!("upgraded connection closed with its tunnel"),
                    _ = session_ended.cancelled() => tracing::debug!("upgraded connection closed with its session"),
                }
            });
        }
        response
    }

    /// Sends `request` on to the local server with the tunnel's rewrites, recording the
    /// answer in `exchange`; a failure is answered with a page saying what went wrong.
    async fn send(&self, mut request: Request<Body>, exchange: &Arc<Exchange>, held: &Held) -> Response<Body> {
        let html = wants_html(request.headers());
        // The local server is reached directly: the request line carries the path alone.
        let path = request.uri().path_and_query().cloned().map_or_else(|| Uri::from_static("/"), Uri::from);
        *request.uri_mut() = path;
        let headers = request.headers_mut();
        if let Some(host) = &self.host_header {
            headers.insert(header::HOST, host.clone());
        }
        if !headers.contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(&self.local.to_string())
        {
            headers.insert(header::HOST, host);
        }
        for (name, value) in &self.request_headers {
            headers.insert(name.clone(), value.clone());
        }
        let kept = lock(held).take();
        let mut response = match self.pool.send(kept, request).await {
            Ok((response, sender)) => {
                *lock(held) = Some(sender);
                response
            }
            Err(e) => return self.failure(&self.describe(&e), unavailable(), html, exchange),
        };
        for (name, value) in &self.response_headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        exchange.responded(response.status().as_u16(), response.headers());
        self.stats.changed();
        let tap = |body| Tap::new(body, exchange.clone(), Side::Response, self.on_change()).boxed_unsync();
        response.map(tap)
    }

    /// Tells the inspector and console that a request moved on.
    fn on_change(&self) -> Box<dyn FnOnce() + Send> {
        let stats = self.stats.clone();
        Box::new(move || stats.changed())
    }

    /// Sends a request recorded earlier to the local server again, with `edit` applied;
    /// returns the new request's id once its response has begun.
    pub(crate) async fn replay(&self, original: &Exchange, edit: ReplayEdit) -> Result<u64, String> {
        let (kept_body, truncated) = original.request_body();
        if truncated && edit.body.is_none() {
            return Err(format!(
                "the original body was larger than the {} KiB kept; edit the body to replay it",
                crate::requests::CAPTURE / 1024
            ));
        }
        let method = edit.method.as_deref().unwrap_or(&original.method);
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| format!("invalid method {method:?}"))?;
        let path = edit.path.as_deref().unwrap_or(&original.path);
        let headers = edit.headers.as_ref().unwrap_or(&original.request_headers);
        let body = edit.body.map_or(kept_body, Bytes::from);
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            // The length is the new body's, set below; hop-by-hop headers were the visitor's.
            if !["content-length", "transfer-encoding", "connection", "upgrade"]
                .contains(&name.to_ascii_lowercase().as_str())
            {
                request = request.header(name.as_str(), value.as_str());
            }
        }
        let body = Full::new(body).map_err(|never| match never {}).boxed_unsync();
        let request = request.body(body).map_err(|e| format!("invalid request: {e}"))?;
        let (parts, body) = request.into_parts();
        let exchange = self.stats.requests().start(&self.tunnel, None, Some(original.id), &parts);
        self.stats.changed();
        let body = Tap::new(body, exchange.clone(), Side::Request, self.on_change()).boxed_unsync();
        let held = Mutex::new(None);
        let sent =
            tokio::time::timeout(REPLAY_LIMIT, self.send(Request::from_parts(parts, body), &exchange, &held)).await;
        let Ok(response) = sent else {
            exchange.ended(Some(format!("no answer within {REPLAY_LIMIT:?}")));
            return Err(format!("the local server did not answer the replay within {REPLAY_LIMIT:?}"));
        };
        // Nobody reads a replay's response but the log, which keeps its start: the rest is
        // read and dropped, for a bounded time, so a stream that never ends costs nothing.
        let session_ended = self.session_ended.clone();
        self.tasks.spawn(async move {
            let mut body = response.into_body();
            let drained = tokio::time::timeout(REPLAY_LIMIT, async { while let Some(Ok(_)) = body.frame().await {} });
            tokio::select! {
                drained = drained => if drained.is_err() {
                    tracing::debug!("a replay's response still streamed after {REPLAY_LIMIT:?}; dropped");
                },
                _ = session_ended.cancelled() => tracing::debug!("a replay's response dropped with its session"),
            }
        });
        Ok(exchange.id)
    }

    /// Words a failed request as the visitor and the console should read it.
    fn describe(&self, error: &LocalError) -> String {
        let local = &self.local;
        match error {
            LocalError::Connect(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                format!("the local server at {local} refused the connection; is it running?")
            }
            LocalError::Connect(e) => format!("the local server at {local} cannot be reached: {e}"),
            LocalError::Http(e) => format!("the local server at {local} failed to answer: {e}"),
        }
    }

    /// Answers the visitor with `page`. `detail` names the local target, which is this
    /// machine's business: it goes to the log, the console and the inspector only.
    fn failure(&self, detail: &str, page: ErrorPage, html: bool, exchange: &Exchange) -> Response<Body> {
        tracing::warn!("{detail}");
        exchange.responded(page.status.as_u16(), &hyper::HeaderMap::new());
        exchange.ended(Some(detail.to_string()));
        self.stats.changed();
        page.render(html).map(|body| body.map_err(|never| match never {}).boxed_unsync())
    }
}

/// What a visitor learns of a local server that failed: not where it is.
fn unavailable() -> ErrorPage {
    ErrorPage::new(StatusCode::BAD_GATEWAY, "Local server unavailable", "The local server is unavailable.".into())
}
