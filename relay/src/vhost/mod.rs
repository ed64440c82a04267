//! HTTP and HTTPS tunnels: one public HTTP port and one HTTPS port shared by every agent,
//! each request routed by its hostname to the tunnel that holds that subdomain or custom
//! hostname. The HTTPS port also carries TLS passthrough tunnels, told apart by the SNI
//! before any TLS is ended.

mod access;
mod body;
mod certs;
mod names;
mod pages;
mod places;
mod proxy;
mod sni;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use burrow_common::sync;
use hyper::Uri;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

pub use self::certs::HttpsCertError;
use self::proxy::{Scheme, Visitor};
pub(crate) use self::{
    access::Access,
    names::{NameError, check_hostname, check_subdomain, default_reserved as default_reserved_names, random_subdomain},
};
use crate::{
    BindError, RelayConfig, Shared,
    claims::{Claims, Lookup, Place, Route, RouteKind},
    endpoint::bind_tcp,
    limits::{self, IpSlot},
    store::Store,
    tunnel,
};

/// Most bytes read while waiting for a TLS ClientHello; real ones are well under 2 KiB.
const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// Checks one DNS label (a subdomain, or a part of the domain).
pub(crate) fn check_label(label: &str) -> Result<String, NameError> {
    names::check_subdomain(label, &[])
}

/// The relay's domain, and where the tunnels under it are looked up.
pub(crate) struct Vhost {
    pub(crate) domain: String,
    /// The relay's own hostnames (`hostname` in its config), lowercase: never a tunnel's.
    own_names: Vec<String>,
    claims: Arc<Claims<Route>>,
    store: Arc<dyn Store>,
    /// Names the store said nobody owns, for a few seconds.
    unowned: Unowned,
    http_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
}

/// Places the store said nobody holds or reserves, remembered for [`UNOWNED_FOR`] or until
/// the relay grants its next claim: a scanner's guesses and a burst of visitors to a dead name
/// then cost one store read per name, not per visit or handshake, which matters when the
/// store is etcd across the network.
#[derive(Default)]
struct Unowned(std::sync::Mutex<HashMap<Place, (Instant, u64)>>);

/// How long a place the store said nobody owns is taken as such.
const UNOWNED_FOR: Duration = Duration::from_secs(5);

/// Most places remembered; past it the memory starts over, so a scan cannot grow it.
const UNOWNED_MAX: usize = 10_000;

impl Unowned {
    /// Whether `place` was found unowned lately, with no claim granted since (`granted`).
    fn knows(&self, place: &Place, granted: u64) -> bool {
        sync::lock(&self.0).get(place).is_some_and(|(at, then)| at.elapsed() < UNOWNED_FOR && *then == granted)
    }

    fn remember(&self, place: &Place, granted: u64) {
        let mut places = sync::lock(&self.0);
        if places.len() >= UNOWNED_MAX {
            places.clear();
        }
        places.insert(place.clone(), (Instant::now(), granted));
    }
}

/// The bound public HTTP and HTTPS ports, until the relay runs them.
pub(crate) struct Listeners {
    http: Option<TcpListener>,
    https: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
}

/// Why a hostname has no session to serve it.
pub(crate) enum Missing {
    Unknown,
    /// Reserved for a tunnel whose agent is not connected.
    Offline,
}

/// Binds the HTTP and HTTPS ports if the relay has a domain.
pub(crate) fn bind(
    config: &RelayConfig,
    claims: Arc<Claims<Route>>,
    store: Arc<dyn Store>,
    acme: Option<Arc<crate::acme::Acme>>,
) -> Result<Option<(Vhost, Listeners)>, BindError> {
    let Some(domain) = config.domain.clone().map(|d| d.to_ascii_lowercase()) else {
        return Ok(None);
    };
    let http = config.http_listen.map(|addr| bind_tcp(addr, |source| BindError::HttpListen { addr, source }));
    let http = http.transpose()?;
    let https = match config.https_listen {
        None => None,
        Some(addr) => {
            let files = config.https_cert.as_deref().zip(config.https_key.as_deref());
            let cert = certs::HttpsCert::load(&domain, &config.data_dir, files, acme)?;
            tracing::info!(fingerprint = %cert.fingerprint(), "HTTPS certificate for *.{domain}");
            let listener = bind_tcp(addr, |source| BindError::HttpsListen { addr, source })?;
            Some((listener, cert.server_config()))
        }
    };
    let vhost = Vhost {
        claims,
        store,
        unowned: Unowned::default(),
        http_addr: http.as_ref().and_then(|l| l.local_addr().ok()),
        https_addr: https.as_ref().and_then(|(l, _)| l.local_addr().ok()),
        own_names: config.hostname.iter().map(|name| name.to_ascii_lowercase()).collect(),
        domain,
    };
    Ok(Some((vhost, Listeners { http, https })))
}

impl Vhost {
    pub(crate) fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub(crate) fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// Where visitors reach the tunnel at `place`: HTTPS first, as users should prefer it.
    pub(crate) fn urls(&self, place: &Place, kind: &RouteKind) -> Vec<String> {
        let Some(host) = self.host_of(place) else { return Vec::new() };
        let https = self.https_addr.map(|addr| url("https", &host, addr.port(), 443));
        let http = self.http_addr.map(|addr| url("http", &host, addr.port(), 80));
        match kind {
            RouteKind::Http(_) => https.into_iter().chain(http).collect(),
            RouteKind::Tls => https.into_iter().collect(),
            RouteKind::Tcp | RouteKind::Udp { .. } => Vec::new(),
        }
    }

    /// The HTTPS address of a plain-HTTP request, for the redirect.
    fn https_url(&self, host: &str, uri: &Uri) -> Option<String> {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        self.https_addr.map(|addr| format!("{}{path}", url("https", host, addr.port(), 443)))
    }

    /// The session serving `place` (see [`Vhost::place_of`]); for one that was lost, waits
    /// up to `park_for` for its agent to come back.
    pub(crate) async fn find(&self, place: &Place, park_for: Duration) -> Result<Arc<Route>, Missing> {
        match self.claims.lookup(place) {
            Lookup::Serving(route) => Ok(route),
            Lookup::Vacant if self.is_owned(place).await => Err(Missing::Offline),
            Lookup::Vacant => Err(Missing::Unknown),
            // Past `max_parked_visitors` waiting, more are told at once that the tunnel is away.
            Lookup::Parked(_, None) => Err(Missing::Offline),
            Lookup::Parked(mut successor, Some(_waiting)) => {
                match tokio::time::timeout(park_for, successor.wait_for(Option::is_some)).await {
                    Ok(Ok(route)) => route.clone().ok_or(Missing::Offline),
                    _ => Err(Missing::Offline),
                }
            }
        }
    }
}

impl Vhost {
    /// Whether `host` names a tunnel that is live, parked or reserved: the only names the
    /// relay spends an ACME order on.
    pub(crate) async fn is_tunnel_host(&self, host: &str) -> bool {
        let Some(place) = self.place_of(host) else { return false };
        match self.claims.lookup(&place) {
            Lookup::Serving(_) | Lookup::Parked(..) => true,
            Lookup::Vacant => self.is_owned(&place).await,
        }
    }

    /// Whether the store has a tunnel holding or keeping the vacant `place`.
    async fn is_owned(&self, place: &Place) -> bool {
        // Read before the store, so a claim granted meanwhile makes the answer stale.
        let granted = self.claims.granted();
        if self.unowned.knows(place, granted) {
            return false;
        }
        let owned = matches!(self.store.owner_of(place).await, Ok(Some(_)));
        if !owned {
            self.unowned.remember(place, granted);
        }
        owned
    }
}

fn url(scheme: &str, host: &str, port: u16, default_port: u16) -> String {
    if port == default_port { format!("{scheme}://{host}") } else { format!("{scheme}://{host}:{port}") }
}

/// Serves the HTTP and HTTPS ports until `cancel`. Each visitor connection runs on the
/// relay's visitor tracker, so the relay's drain gives it the grace period.
pub(crate) async fn serve(listeners: Listeners, shared: Arc<Shared>, cancel: CancellationToken) {
    let connections = shared.visitors.clone();
    let loops = TaskTracker::new();
    if let Some(listener) = listeners.http {
        let accepting = accept(listener, None, shared.clone(), connections.clone(), cancel.clone());
        loops.spawn(accepting.instrument(tracing::info_span!("http")));
    }
    if let Some((listener, tls)) = listeners.https {
        let accepting = accept(listener, Some(tls), shared.clone(), connections, cancel.clone());
        loops.spawn(accepting.instrument(tracing::info_span!("https")));
    }
    loops.close();
    loops.wait().await;
}

async fn accept(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shared: Arc<Shared>,
    connections: TaskTracker,
    cancel: CancellationToken,
) {
    // The tunnel is known only once a request names it; the address cap applies now.
    let admit = |ip| limits::admit_connection(&shared.per_ip, &shared.descriptors, ip);
    let serve = |tcp: TcpStream, peer: SocketAddr, slot: IpSlot| {
        // Responses are written in pieces (head, then body frames); Nagle would hold a small
        // one back until the visitor's delayed ACK, 40 ms later.
        tcp.set_nodelay(true).ok();
        let (shared, cancel, tls) = (shared.clone(), cancel.clone(), tls.clone());
        let served = async move {
            match tls {
                None => {
                    let visitor = Visitor { addr: peer, scheme: Scheme::Http, server_name: None, _slot: slot };
                    proxy::serve(tcp, visitor, shared, cancel).await;
                }
                Some(tls) => serve_tls(tcp, (peer, slot), tls, shared, cancel).await,
            }
        };
        connections.spawn(served.instrument(tracing::debug_span!("visitor", %peer)));
    };
    tunnel::accept_admitted(&listener, &shared, cancel.cancelled(), admit, serve).await;
}

/// Reads the ClientHello, then passes the connection through to a TLS tunnel of that name,
/// or ends the TLS here and serves HTTP.
async fn serve_tls(
    mut tcp: TcpStream,
    (peer, slot): (SocketAddr, IpSlot),
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let timeout = shared.config().http_header_timeout;
    let hello = match tokio::time::timeout(timeout, sni::read_client_hello(&mut tcp, MAX_CLIENT_HELLO)).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(e)) => return tracing::debug!("no TLS ClientHello: {e}"),
        Err(_) => return tracing::debug!("no TLS ClientHello within {timeout:?}"),
    };
    if hello.is_agent {
        drop(slot);
        return crate::tcp_links::arrived(sni::Rewind::new(hello.bytes, tcp), peer, &shared, &cancel);
    }
    if let Some(route) = passthrough_route(&shared, hello.server_name.as_deref()).await {
        return pass_through(tcp, peer, hello.bytes, &route, shared).await;
    }
    // The answer another relay of the fleet published, served through this handshake.
    let borrowed_answer = match (&shared.acme, hello.server_name.as_deref()) {
        (Some(acme), Some(name)) if hello.is_acme_check => acme.borrow_fleet_answer(name).await,
        _ => None,
    };
    if !hello.is_acme_check {
        wait_for_certificate(&shared, hello.server_name.as_deref()).await;
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let accepted = tokio::time::timeout(timeout, acceptor.accept(sni::Rewind::new(hello.bytes, tcp))).await;
    drop(borrowed_answer);
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
        Err(_) => return tracing::debug!("TLS handshake not done within {timeout:?}"),
    };
    if hello.is_acme_check {
        // The CA has seen the challenge certificate; nothing follows the handshake.
        return tracing::debug!(server_name = ?hello.server_name, "answered a TLS-ALPN-01 check");
    }
    let visitor = Visitor { addr: peer, scheme: Scheme::Https, server_name: hello.server_name, _slot: slot };
    proxy::serve(stream, visitor, shared, cancel).await;
}

/// Gets a tunnel's name its certificate from the ACME CA before the handshake that first asks
/// for it, waiting up to `acme.handshake_wait`; other names get the fallback at once.
async fn wait_for_certificate(shared: &Shared, server_name: Option<&str>) {
    let (Some(acme), Some(vhost), Some(name)) = (&shared.acme, &shared.vhost, server_name) else { return };
    if acme.certificate_for(name).is_none() && vhost.is_tunnel_host(name).await {
        acme.ensure(name).await;
    }
}

/// The TLS passthrough tunnel the SNI names, if there is one.
async fn passthrough_route(shared: &Shared, server_name: Option<&str>) -> Option<Arc<Route>> {
    let vhost = shared.vhost.as_ref()?;
    let place = vhost.place_of(server_name?)?;
    let route = vhost.find(&place, shared.config().park_visitors_for).await.ok()?;
    matches!(route.kind, RouteKind::Tls).then_some(route)
}

async fn pass_through(tcp: TcpStream, peer: SocketAddr, client_hello: Vec<u8>, route: &Route, shared: Arc<Shared>) {
    let admission = match limits::admit_to_tunnel(&route.places, &shared.metrics) {
        Ok(admission) => admission,
        Err(full) => {
            shared.metrics.visitors_refused.get_or_create(&full).inc();
            return burrow_common::splice::abort_tcp(tcp);
        }
    };
    // On the visitor tracker, so the relay's drain waits for it.
    let carried = tunnel::forward(tcp, peer, route.link.pick(), route.tunnel, shared, admission, client_hello);
    route.visitors.spawn(carried).await.ok();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unowned_place_is_remembered_until_the_next_granted_claim() {
        let (unowned, place) = (Unowned::default(), Place::Subdomain("ghost".into()));
        assert!(!unowned.knows(&place, 0));
        unowned.remember(&place, 0);
        assert!(unowned.knows(&place, 0));
        assert!(!unowned.knows(&Place::Subdomain("other".into()), 0));
        assert!(!unowned.knows(&place, 1), "a claim granted since may have taken it");
    }

    #[test]
    fn a_scan_cannot_grow_the_memory_past_its_bound() {
        let unowned = Unowned::default();
        for n in 0..=UNOWNED_MAX {
            unowned.remember(&Place::Subdomain(format!("guess{n}")), 0);
        }
        assert_eq!(sync::lock(&unowned.0).len(), 1, "full, it started over");
    }
}
