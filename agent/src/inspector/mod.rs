//! The web inspector: a page on 127.0.0.1:4040 that lists the tunnels' TCP connections, HTTP
//! requests (with replay) and the session's path to the relay, kept live with server-sent events. Its HTML, CSS and script are
//! compiled into the binary; the page fetches nothing from elsewhere. Beyond loopback it
//! requires the `inspect_token`, as the relay's admin endpoint requires its token.

mod events;
pub(crate) mod listen;
mod requests;

use std::{
    convert::Infallible,
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use burrow_common::{
    Secret,
    http::{addressed_directly, allows, challenge},
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::stats::Stats;

/// Where the inspector listens unless told otherwise, as ngrok's does.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4040);
/// Further ports tried when the asked-for one is taken, so a second agent still gets one.
const SPARE_PORTS: u16 = 9;

type Body = BoxBody<Bytes, Infallible>;

/// Binds the inspector at `addr` or one of the next ports. A busy or forbidden address is
/// not worth stopping the tunnels for: it warns once and returns none.
pub async fn bind(addr: Option<SocketAddr>) -> Option<TcpListener> {
    let addr = addr?;
    let spares = if addr.port() == 0 { 0 } else { SPARE_PORTS };
    let ports = (0..=spares).filter_map(|i| addr.port().checked_add(i));
    for port in ports {
        match TcpListener::bind((addr.ip(), port)).await {
            Ok(listener) => return Some(listener),
            Err(e) if e.kind() == ErrorKind::AddrInUse => continue,
            Err(e) => {
                tracing::warn!("inspector cannot listen on {addr}: {e}; running without it");
                return None;
            }
        }
    }
    tracing::warn!(
        "inspector: {addr} and the {spares} ports after it are in use; running without it \
         (--inspect ADDR picks another, --inspect off turns it off)"
    );
    None
}

/// The address to open in a browser.
pub fn url(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { addr.ip() };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// Who may use the inspector: requests addressed to it directly, with its token if it has one.
struct Guard {
    loopback: bool,
    token: Option<Secret>,
}

impl Guard {
    /// Why `request` is turned away, if it is.
    fn refuses<B>(&self, request: &Request<B>) -> Option<Response<Body>> {
        if !addressed_directly(request, self.loopback, &[]) {
            let hint = "address the inspector by IP (http://127.0.0.1:PORT) or as localhost\n";
            return Some(full(StatusCode::FORBIDDEN, "text/plain; charset=utf-8", hint));
        }
        // Beyond loopback without a token nobody gets in: the config refuses that, and a
        // caller that skipped it must not expose the tunnels' requests.
        let allowed = match &self.token {
            Some(token) => allows(request, token.expose()),
            None => self.loopback,
        };
        let denied = || full(StatusCode::UNAUTHORIZED, "text/plain; charset=utf-8", "inspect_token required\n");
        (!allowed).then(|| challenge(denied(), "burrow inspector"))
    }
}

/// Serves the inspector until `cancel`. Beyond loopback it answers only requests with `token`.
pub async fn serve(listener: TcpListener, stats: Stats, token: Option<Secret>, cancel: CancellationToken) {
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    if !loopback && token.is_none() {
        tracing::warn!("the inspector listens beyond loopback without inspect_token: it refuses every request");
    }
    let guard = std::sync::Arc::new(Guard { loopback, token });
    // Live feeds outlast their request; they end with `cancel` and are waited for here.
    let feeds = TaskTracker::new();
    let stop = cancel.clone();
    let respond = {
        let feeds = feeds.clone();
        move |request: hyper::Request<hyper::body::Incoming>| {
            let (stats, feeds, stop, guard) = (stats.clone(), feeds.clone(), stop.clone(), guard.clone());
            async move {
                match guard.refuses(&request) {
                    Some(refused) => refused,
                    None => respond(request, &stats, &feeds, &stop).await,
                }
            }
        }
    };
    burrow_common::http::serve(listener, "inspector", cancel, respond).await;
    feeds.close();
    feeds.wait().await;
}

async fn respond(
    request: Request<Incoming>,
    stats: &Stats,
    feeds: &TaskTracker,
    cancel: &CancellationToken,
) -> Response<Body> {
    let path = request.uri().path().to_string();
    if let Some(id) = path.strip_prefix("/api/requests/").and_then(|rest| rest.strip_suffix("/replay")) {
        return requests::replay(request, id, stats).await;
    }
    if request.method() != Method::GET {
        return full(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "only GET here\n");
    }
    if let Some(id) = path.strip_prefix("/api/requests/") {
        return requests::detail(id, stats);
    }
    match path.as_str() {
        "/" => page(include_str!("../../assets/inspector.html"), "text/html; charset=utf-8"),
        "/inspector.css" => page(include_str!("../../assets/inspector.css"), "text/css; charset=utf-8"),
        "/inspector.js" => page(include_str!("../../assets/inspector.js"), "text/javascript; charset=utf-8"),
        "/api/status" => json(&stats.snapshot()),
        "/api/events" => events::response(stats.clone(), feeds, cancel.clone()),
        "/api/requests" => json(&stats.requests().recent(crate::requests::KEPT)),
        _ => full(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n"),
    }
}

fn page(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response = full(StatusCode::OK, content_type, body);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    );
    response
}

fn json(value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(json) => full(StatusCode::OK, "application/json", json),
        Err(e) => full(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", e.to_string()),
    }
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    headers(&mut response, content_type);
    response
}

fn headers(response: &mut Response<Body>, content_type: &'static str) {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}
