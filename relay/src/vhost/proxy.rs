//! One visitor's HTTP connection: each request is routed by its hostname, checked against
//! its tunnel's access rules, and forwarded over a stream to the agent. A visitor connection
//! keeps one stream per tunnel it talks to, so keep-alive holds end to end.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use burrow_common::{
    StreamHeader, deadline::Stall, protocol::conversation::open_visitor_stream, stream_io::StreamIo, upgrade,
};
use bytes::Bytes;
use http_body_util::{BodyExt, combinators::UnsyncBoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::Incoming,
    client::conn::http1::SendRequest,
    header::{self, HeaderValue},
    service::service_fn,
    upgrade::OnUpgrade,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::{
    Missing, Vhost,
    body::{self, EndSignal, NotifyOnEnd},
    names,
    pages::{self, ErrorPage},
};
use crate::{
    Shared, auth_limit,
    claims::{Place, Route, RouteKind},
    limits::{self, Admission, IpSlot},
    metrics::REFUSED_NO_STREAM,
    traffic::Visit,
};

mod guard;
mod headers;

use self::headers::{host_header, prepare_for_agent, strip_hop_by_hop};

pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Who is on the other end of a visitor connection, and how they came in.
pub(crate) struct Visitor {
    pub(crate) addr: SocketAddr,
    pub(crate) scheme: Scheme,
    /// The TLS server name the visitor asked for; a request for another host is misdirected.
    pub(crate) server_name: Option<String>,
    /// The visitor's place under the per-address cap, held as long as anything of its
    /// connection lives, an upgraded connection included.
    pub(crate) _slot: IpSlot,
}

/// The tunnel a request is for: its place, its hostname, and the Host header as sent.
struct Addressed {
    place: Place,
    host: String,
    sent_host: String,
}

/// The stream to the tunnel a visitor connection talked to last.
struct Upstream {
    place: Place,
    session: usize,
    /// The tunnel id within the session: a name closed and opened again gets a new one.
    tunnel: u32,
    sender: SendRequest<NotifyOnEnd<Incoming>>,
    /// The visitor's place in the tunnel and its byte counts, held while the stream is.
    held: (Admission, Visit),
}

struct VisitorConnection {
    visitor: Visitor,
    shared: Arc<Shared>,
    upstream: tokio::sync::Mutex<Option<Upstream>>,
}

/// Serves one visitor connection (plain or after TLS) until it closes or `stop`.
pub(crate) async fn serve<IO>(io: IO, visitor: Visitor, shared: Arc<Shared>, stop: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(shared.config().http_header_timeout)
        // The buffer bounds what is read in one go; the head limit is what hyper checks
        // exactly against the parsed head.
        .max_buf_size(shared.config().http_max_header_bytes)
        .max_header_size(shared.config().http_max_header_bytes);
    let io = Stall::new(io, Some(shared.config().visitor_write_timeout));
    let state = Arc::new(VisitorConnection { visitor, shared, upstream: tokio::sync::Mutex::new(None) });
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(state.answer(request).await) }
    });
    let connection = http.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        tracing::debug!("visitor connection ended: {e}");
    }
}

impl VisitorConnection {
    fn vhost(&self) -> &Vhost {
        // A visitor connection exists only on a listener that a domain opened.
        self.shared.vhost.as_ref().expect("HTTP listeners run only with a domain")
    }

    async fn answer(self: &Arc<Self>, request: Request<Incoming>) -> Response<ProxyBody> {
        let html = pages::wants_html(request.headers());
        if let Some(key_authorization) = self.http_challenge_answer(&request).await {
            return RelayAnswer::ChallengeAnswer(key_authorization).into_response(html);
        }
        match self.forward(request).await {
            Ok(response) => response,
            Err(refusal) => refusal.into_response(html),
        }
    }

    async fn forward(self: &Arc<Self>, mut request: Request<Incoming>) -> Result<Response<ProxyBody>, RelayAnswer> {
        let Addressed { place, host, sent_host } = self.address(&request)?;
        self.refuse_when_guessing()?;
        let route = self.route(&place, &host).await?;
        let drop_authorization = self.check_access(&request, &route, &host).await?;
        let wants_upgrade = may_switch(&route, &request);
        prepare_for_agent(&mut request, &self.visitor, &sent_host, drop_authorization, wants_upgrade);
        let visitor_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut request));
        let mut upstream = self.upstream.lock().await;
        let mut sender = match upstream.take() {
            Some(open)
                if open.place == place
                    && open.session == route.link.stable_id()
                    && open.tunnel == route.tunnel
                    && !open.sender.is_closed() =>
            {
                open
            }
            _ => self.open_upstream(place, &host, &route).await?,
        };
        let (request, body_sent) = with_end_signal(request, self.shared.config().http_body_idle_timeout);
        let mut response = self.exchange(&mut sender.sender, request, body_sent).await?;
        let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        match visitor_upgrade {
            Some(visitor_side) if upgraded => self.join_upgraded(&route, sender, visitor_side, &mut response),
            // A switch nobody asked for: the stream no longer carries HTTP, so it is dropped.
            None if upgraded => return Err(pages::unasked_switch().into()),
            _ => *upstream = Some(sender),
        }
        strip_hop_by_hop(response.headers_mut(), upgraded);
        Ok(response.map(BodyExt::boxed_unsync))
    }

    /// The answer to the ACME CA's HTTP-01 check, whatever the host: it asks on port 80 for
    /// names the relay (or another relay of its fleet) ordered, before any tunnel routing or
    /// redirect.
    async fn http_challenge_answer(&self, request: &Request<Incoming>) -> Option<String> {
        let acme = self.shared.acme.as_ref().filter(|_| self.visitor.scheme == Scheme::Http)?;
        let token = request.uri().path().strip_prefix("/.well-known/acme-challenge/")?;
        acme.http_answer(token).await
    }

    /// Which tunnel the request is for, by its Host header, or why none is.
    fn address(&self, request: &Request<Incoming>) -> Result<Addressed, RelayAnswer> {
        if request.headers().get_all(header::HOST).iter().count() > 1 {
            // Routed by one and served by the other, two Hosts could reach another app.
            return Err(pages::bad_request("The request names more than one host.").into());
        }
        let sent_host = host_header(request).ok_or_else(|| pages::bad_request("The request names no host."))?;
        let host =
            names::request_host(&sent_host).ok_or_else(|| pages::bad_request("The Host header is malformed."))?;
        let vhost = self.vhost();
        if vhost.is_own(&host) {
            return Err(pages::no_http_tunnels().into());
        }
        let place = vhost.place_of(&host).ok_or_else(|| pages::not_found(&host))?;
        if self.visitor.server_name.as_ref().is_some_and(|sni| *sni != host) {
            return Err(pages::misdirected(&host).into());
        }
        if self.visitor.scheme == Scheme::Http
            && self.shared.config().http_redirect_https
            && let Some(location) = vhost.https_url(&host, request.uri())
        {
            return Err(RelayAnswer::Redirect(location));
        }
        Ok(Addressed { place, host, sent_host })
    }

    /// Joins the visitor's and the agent's ends of an upgraded connection. The visitor's
    /// places and byte counts last as long as it does, and the session's drain waits for it.
    fn join_upgraded(
        self: &Arc<Self>,
        route: &Route,
        upstream: Upstream,
        visitor_side: OnUpgrade,
        response: &mut Response<Incoming>,
    ) {
        let agent_side = hyper::upgrade::on(response);
        let connection = self.clone();
        route.visitors.spawn(async move {
            let _held = (upstream.held, connection);
            match upgrade::join(visitor_side, agent_side).await {
                Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
                Err(e) => tracing::debug!("upgraded connection failed: {e:#}"),
            }
        });
    }

    /// Sends `request` and waits for the response head; the local server's time to answer
    /// starts once the whole request body has crossed, so a long upload is not cut short.
    async fn exchange(
        &self,
        sender: &mut SendRequest<NotifyOnEnd<Incoming>>,
        request: Request<NotifyOnEnd<Incoming>>,
        body_sent: EndSignal,
    ) -> Result<Response<Incoming>, RelayAnswer> {
        let limit = self.shared.config().http_response_timeout;
        sender.ready().await.map_err(|e| tunnel_broke(&e))?;
        let answered = sender.send_request(request);
        let too_slow = async {
            body_sent.await;
            tokio::time::sleep(limit).await;
        };
        tokio::select! {
            answered = answered => answered.map_err(|e| body::stalled(&e).map_or_else(|| tunnel_broke(&e), |stalled| stalled.page().into())),
            () = too_slow => Err(pages::gateway_timeout(limit).into()),
        }
    }

    /// Finds the session serving `place`, waiting for a lost one's agent to come back.
    async fn route(&self, place: &Place, host: &str) -> Result<Arc<Route>, RelayAnswer> {
        match self.vhost().find(place, self.shared.config().park_visitors_for).await {
            Ok(route) => Ok(route),
            Err(Missing::Unknown) => Err(self.unknown_name(host).await),
            Err(Missing::Offline) => Err(pages::tunnel_offline(host).into()),
        }
    }

    async fn open_upstream(&self, place: Place, host: &str, route: &Route) -> Result<Upstream, RelayAnswer> {
        let metrics = &self.shared.metrics;
        let admission = limits::admit_to_tunnel(&route.places, metrics).map_err(|full| {
            metrics.visitors_refused.get_or_create(&full).inc();
            pages::too_many(host)
        })?;
        let arrived = Instant::now();
        let offline = || {
            metrics.visitors_refused.get_or_create(&REFUSED_NO_STREAM).inc();
            pages::tunnel_offline(host)
        };
        let link = route.link.pick();
        let header = StreamHeader::visitor(route.tunnel, self.visitor.addr);
        let (send, recv) = open_visitor_stream(&*link, header, None).await.map_err(|_| offline())?;
        metrics.stream_open.observe(arrived.elapsed().as_secs_f64());
        let visit = metrics.traffic.visit(route.link.stable_id(), route.tunnel, self.visitor.addr);
        let io = StreamIo::new(send, recv, visit.shared_progress());
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| tunnel_broke(&e))?;
        route.visitors.spawn(async move {
            // The picked link counts this visitor for as long as its connection lasts.
            let _link = link;
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!("stream to the agent ended: {e}");
            }
        });
        let session = route.link.stable_id();
        Ok(Upstream { place, session, tunnel: route.tunnel, sender, held: (admission, visit) })
    }
}

/// What the relay answers a visitor itself, instead of the local server.
pub(crate) enum RelayAnswer {
    Page(ErrorPage),
    /// Basic auth is needed for this host.
    Unauthorized(String),
    /// The visitor's address is over its guessing quota.
    TooManyGuesses,
    Redirect(String),
    /// A key authorization for the ACME CA, as plain text.
    ChallengeAnswer(String),
}

impl From<ErrorPage> for RelayAnswer {
    fn from(page: ErrorPage) -> Self {
        RelayAnswer::Page(page)
    }
}

impl RelayAnswer {
    fn into_response(self, html: bool) -> Response<ProxyBody> {
        let boxed = |page: ErrorPage| page.render(html).map(|body| body.map_err(|never| match never {}).boxed_unsync());
        match self {
            RelayAnswer::Page(page) => boxed(page),
            RelayAnswer::Unauthorized(host) => {
                let mut response = boxed(pages::unauthorized());
                let challenge = format!("Basic realm=\"{host}\", charset=\"UTF-8\"");
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
                }
                response
            }
            RelayAnswer::TooManyGuesses => {
                let mut response = boxed(pages::too_many_guesses());
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(auth_limit::REFILL_EVERY.as_secs()));
                response
            }
            RelayAnswer::Redirect(location) => {
                let mut response =
                    Response::new(http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync());
                *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
                response
            }
            RelayAnswer::ChallengeAnswer(key_authorization) => {
                let body = http_body_util::Full::new(Bytes::from(key_authorization));
                let mut response = Response::new(body.map_err(|never| match never {}).boxed_unsync());
                response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                response
            }
        }
    }
}

fn tunnel_broke(e: &hyper::Error) -> RelayAnswer {
    tracing::debug!("request to the agent failed: {e}");
    ErrorPage { status: StatusCode::BAD_GATEWAY, title: "Tunnel error", detail: format!("The tunnel broke off: {e}.") }
        .into()
}

/// Whether the request may switch protocols on its tunnel: WebSocket, or a protocol the
/// tunnel allows. Any other upgrade crosses as a plain request, its `Upgrade` header dropped.
fn may_switch(route: &Route, request: &Request<Incoming>) -> bool {
    match &route.kind {
        RouteKind::Http(access) => access.may_switch(request.headers()),
        RouteKind::Tcp | RouteKind::Tls | RouteKind::Udp { .. } => false,
    }
}

fn with_end_signal(request: Request<Incoming>, idle_limit: Duration) -> (Request<NotifyOnEnd<Incoming>>, EndSignal) {
    let (parts, body) = request.into_parts();
    let (body, ended) = NotifyOnEnd::new(body, idle_limit);
    (Request::from_parts(parts, body), ended)
}
