//! An HTTP tunnel's end at the agent: the requests the relay sends over a stream are passed
//! on to the local server, with the tunnel's rewrites, and a local server that is down is
//! answered with a page that says so.

use std::{convert::Infallible, time::Duration};

use burrow_common::{error_page::ErrorPage, error_page::wants_html, stream_io::StreamIo, upgrade};
use bytes::Bytes;
use http_body_util::{BodyExt, combinators::UnsyncBoxBody};
use hyper::{
    Request, Response, StatusCode, Uri,
    body::Incoming,
    header::{self, HeaderName, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};

use crate::{HttpRewrite, config::LocalTarget, stats::Outcome};

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// Idle connections to the local server are kept this long for the next request.
const POOL_IDLE: Duration = Duration::from_secs(30);

pub(crate) struct LocalHttp {
    client: Client<HttpConnector, Incoming>,
    local: LocalTarget,
    host_header: Option<HeaderValue>,
    request_headers: Vec<(HeaderName, HeaderValue)>,
    response_headers: Vec<(HeaderName, HeaderValue)>,
}

impl LocalHttp {
    /// The rewrites were checked when the configuration was loaded; one that still does not
    /// parse is left out rather than failing every request.
    pub(crate) fn new(local: &LocalTarget, rewrite: &HttpRewrite) -> Self {
        let headers = |pairs: &[(String, String)]| {
            pairs
                .iter()
                .filter_map(|(name, value)| {
                    Some((HeaderName::from_bytes(name.as_bytes()).ok()?, HeaderValue::from_str(value).ok()?))
                })
                .collect()
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE).build(connector);
        Self {
            client,
            local: local.clone(),
            host_header: rewrite.host_header.as_deref().and_then(|h| HeaderValue::from_str(h).ok()),
            request_headers: headers(&rewrite.request_headers),
            response_headers: headers(&rewrite.response_headers),
        }
    }

    /// Serves the requests of one visitor connection, as the relay sends them on `stream`.
    pub(crate) async fn serve(&self, stream: StreamIo) -> Outcome {
        let service = service_fn(|request| async move { Ok::<_, Infallible>(self.forward(request).await) });
        let served = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades()
            .await;
        match served {
            Ok(()) => Outcome::Closed,
            Err(e) => Outcome::Failed { reason: format!("HTTP stream failed: {e}") },
        }
    }

    async fn forward(&self, mut request: Request<Incoming>) -> Response<Body> {
        let html = wants_html(request.headers());
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri = match format!("http://{}{path}", self.local).parse::<Uri>() {
            Ok(uri) => uri,
            Err(e) => return self.failure(&format!("the request path cannot be sent on: {e}"), html),
        };
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        if let Some(host) = &self.host_header {
            headers.insert(header::HOST, host.clone());
        }
        for (name, value) in &self.request_headers {
            headers.insert(name.clone(), value.clone());
        }
        let visitor_upgrade = upgrade::requested(request.headers()).then(|| hyper::upgrade::on(&mut request));
        let mut response = match self.client.request(request).await {
            Ok(response) => response,
            Err(e) => return self.failure(&self.describe(&e), html),
        };
        for (name, value) in &self.response_headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(visitor_side) = visitor_upgrade
        {
            let local_side = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                match upgrade::join(visitor_side, local_side).await {
                    Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
                    Err(e) => tracing::debug!("upgraded connection failed: {e:#}"),
                }
            });
        }
        response.map(BodyExt::boxed_unsync)
    }

    /// Words a failed request as the visitor and the console should read it.
    fn describe(&self, error: &hyper_util::client::legacy::Error) -> String {
        let local = &self.local;
        let refused = std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<std::io::Error>())
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
            || format!("{error:?}").contains("ConnectionRefused");
        if refused {
            format!("the local server at {local} refused the connection; is it running?")
        } else if error.is_connect() {
            format!("the local server at {local} cannot be reached: {error}")
        } else {
            format!("the local server at {local} failed to answer: {error}")
        }
    }

    fn failure(&self, detail: &str, html: bool) -> Response<Body> {
        tracing::warn!("{detail}");
        let mut sentence = detail.to_string();
        if let Some(first) = sentence.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        sentence.push('.');
        let page = ErrorPage::new(StatusCode::BAD_GATEWAY, "Local server unavailable", sentence);
        page.render(html).map(|body| body.map_err(|never| match never {}).boxed_unsync())
    }
}
