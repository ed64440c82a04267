//! `/api/requests/ID` (one request in full) and `/api/requests/ID/replay` (send it to the
//! local server again, optionally edited).

use http_body_util::{BodyExt, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};

use super::{Body, full, json};
use crate::{local_http::ReplayEdit, stats::Stats};

/// Largest edited request a replay accepts.
const MAX_EDIT: usize = 1024 * 1024;

pub(super) fn detail(id: &str, stats: &Stats) -> Response<Body> {
    match id.parse().ok().and_then(|id| stats.requests().get(id)) {
        Some(exchange) => json(&exchange.detail()),
        None => not_kept(id),
    }
}

fn not_kept(id: &str) -> Response<Body> {
    full(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", format!("no request {id} is kept\n"))
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Response<Body> {
    full(status, "text/plain; charset=utf-8", format!("{}\n", why.into()))
}

pub(super) async fn replay(request: Request<Incoming>, id: &str, stats: &Stats) -> Response<Body> {
    if request.method() != Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "replay with POST");
    }
    // A page elsewhere can post a form here without asking; it cannot send JSON without a
    // preflight, which this endpoint never grants.
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send the edit as application/json");
    }
    let Some(original) = id.parse().ok().and_then(|id| stats.requests().get(id)) else {
        return not_kept(id);
    };
    let body = match Limited::new(request.into_body(), MAX_EDIT).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("cannot read the edit: {e}")),
    };
    let edit: ReplayEdit = if body.is_empty() {
        ReplayEdit::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(edit) => edit,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("invalid edit: {e}")),
        }
    };
    let Some(local) = stats.replayer(&original.tunnel) else {
        return refuse(StatusCode::CONFLICT, format!("tunnel {} is not open now", original.tunnel));
    };
    match local.replay(&original, edit).await {
        Ok(id) => json(&serde_json::json!({ "id": id })),
        Err(why) => refuse(StatusCode::BAD_REQUEST, why),
    }
}
