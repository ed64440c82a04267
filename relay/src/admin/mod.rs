//! The admin endpoint: a dashboard at `/`, a JSON view of the relay at `/api/*`, Prometheus
//! `/metrics`, `/healthz` (the process is alive) and `/readyz` (it serves, and is not
//! shutting down). It listens on 127.0.0.1 by default; bound beyond loopback it requires the
//! admin token, as a bearer token or as the password of HTTP Basic authentication. Either
//! way it answers only requests that name the relay itself (an IP, `localhost`, or one of its
//! `hostname`s), so a page elsewhere cannot reach it through a name it rebinds to us.
//!
//! Everything is computed when asked for, from the relay's own state: nobody looking costs
//! nothing.

mod api;

use std::sync::Arc;

use burrow_common::http::{addressed_directly, allows, challenge};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// The dashboard's files, built into the binary so the page needs nothing from elsewhere.
const DASHBOARD_HTML: &str = include_str!("../../assets/dashboard.html");
const DASHBOARD_JS: &str = include_str!("../../assets/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../../assets/dashboard.css");

/// Only the page's own files and data: an injected script could not send anything away.
const DASHBOARD_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Serves admin requests until `stop`. `shutdown` is the relay's own cancellation: once it
/// fires, `/readyz` answers 503 while the relay drains.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    let respond = move |request: Request<Incoming>| {
        let (shared, ready) = (shared.clone(), !shutdown.is_cancelled());
        async move { respond(&shared, ready, &request).await }
    };
    burrow_common::http::serve(listener, "admin", stop, respond).await;
}

async fn respond(shared: &Shared, ready: bool, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let config = shared.config();
    let loopback_only = config.admin_listen.is_some_and(|addr| addr.ip().is_loopback());
    if !addressed_directly(request, loopback_only, &config.hostname) {
        let hint =
            "address the admin endpoint by IP, as localhost, or by a name listed in the relay's hostname setting\n";
        return text(StatusCode::FORBIDDEN, hint);
    }
    if let Some(token) = &config.admin_token
        && !allows(request, token.expose())
    {
        return challenge(text(StatusCode::UNAUTHORIZED, "admin token required\n"), "burrow relay");
    }
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
    }
    let path = request.uri().path();
    match path {
        "/" => dashboard(DASHBOARD_HTML, "text/html; charset=utf-8"),
        "/dashboard.js" => dashboard(DASHBOARD_JS, "text/javascript; charset=utf-8"),
        "/dashboard.css" => dashboard(DASHBOARD_CSS, "text/css; charset=utf-8"),
        "/metrics" => metrics(shared),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ready => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
        _ => match path.strip_prefix("/api/") {
            Some(view) => api::respond(shared, view).await,
            None => text(StatusCode::NOT_FOUND, "not found: try /, /api/agents, /metrics, /healthz or /readyz\n"),
        },
    }
}

fn metrics(shared: &Shared) -> Response<Full<Bytes>> {
    let certificates = shared.acme.as_ref().map(|acme| acme.certificates()).unwrap_or_default();
    let page = shared.metrics.encode(&shared.live.agents(), &shared.claims.counts(), &certificates);
    with_type(StatusCode::OK, page.into(), "application/openmetrics-text; version=1.0.0; charset=utf-8")
}

fn dashboard(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = with_type(StatusCode::OK, Bytes::from_static(body.as_bytes()), content_type);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(DASHBOARD_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(status, Bytes::from_static(body.as_bytes()), "text/plain; charset=utf-8")
}

fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Every answer describes this moment; a cached one would mislead.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
