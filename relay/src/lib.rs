//! The burrow relay: accepts agents' QUIC sessions and visitors' TCP connections, and carries
//! each visitor over its own stream to the agent that owns the tunnel.
//!
//! `Relay::bind` creates everything that touches the machine (data directory, certificate,
//! UDP socket); `Relay::run` serves until its cancellation token fires, then drains.

pub mod acme;
mod admin;
mod auth_limit;
pub mod bind_error;
mod cid;
mod claims;
pub mod cli;
mod closing;
pub mod config;
mod endpoint;
mod files;
mod identity;
mod invite;
mod limit_table;
mod limits;
mod liveness;
mod metrics;
mod parking;
pub mod reload;
mod session;
mod sessions;
mod store;
mod tcp_links;
pub mod tokens;
mod traffic;
mod tunnel;
mod udp;
mod vhost;

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock, atomic::AtomicU64},
    time::Duration,
};

pub use bind_error::BindError;
use burrow_common::{CloseCode, Fingerprint, sync, tls, transport};
pub use config::RelayConfig;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    auth_limit::FailureLimiter,
    claims::{Claims, Route},
    store::{FileStore, Store},
};

/// How often idle bookkeeping (forgetting quiet addresses) runs.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60);

/// How long sessions get, once visitors are drained, to tell their agents to reconnect.
const SESSIONS_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How long a relay stopping waits for its store to keep what it holds as reservations.
const STORE_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// State every session reads.
pub(crate) struct Shared {
    /// Swapped whole when an edited config file is applied; see [`reload`].
    config: RwLock<Arc<RelayConfig>>,
    /// Tokens and reservations; never called under a lock.
    pub(crate) store: Arc<dyn Store>,
    /// Who holds each public place now.
    pub(crate) claims: Arc<Claims<Route>>,
    pub(crate) limiter: FailureLimiter,
    pub(crate) per_ip: limits::PerIpLimit,
    pub(crate) metrics: Arc<metrics::Metrics>,
    pub(crate) unauthenticated: limits::Unauthenticated,
    /// Visitors' connections and public ports, under the open files limit.
    pub(crate) descriptors: limits::Descriptors,
    pub(crate) next_session: AtomicU64,
    pub(crate) live: Arc<sessions::LiveSessions>,
    /// The relay's domain and its HTTP and HTTPS ports, when it has a domain.
    pub(crate) vhost: Option<vhost::Vhost>,
    /// Certificates from the ACME CA for the HTTPS port, when `acme.email` is set.
    pub(crate) acme: Option<Arc<acme::Acme>>,
    /// Every visitor's work (TCP splices, HTTP connections, upgrades, parked visitors): the
    /// relay's one drain waits for it on shutdown.
    pub(crate) visitors: TaskTracker,
    /// Fired when the drain is over: sessions then tell their agents to reconnect.
    pub(crate) drained: CancellationToken,
    /// Fired when a reload changed the configured token: its sessions are checked again.
    pub(crate) token_reloaded: tokio::sync::Notify,
    /// Every agent's link, whichever port it came on.
    pub(crate) sessions: TaskTracker,
    /// TLS for agents over TCP: the certificate agents pin, and only the burrow ALPN.
    pub(crate) agent_tls: Arc<rustls::ServerConfig>,
    /// Where agents connect: QUIC, and TCP unless that is off.
    pub(crate) agent_addrs: (SocketAddr, Option<SocketAddr>),
}

impl Shared {
    /// The settings in force now.
    pub(crate) fn config(&self) -> Arc<RelayConfig> {
        sync::read(&self.config).clone()
    }

    /// A place among the clients waiting to authenticate for one from `ip`, or why it is
    /// refused. Each check is a refusal reason of its own, cheapest and most specific first.
    pub(crate) fn place_for(&self, ip: std::net::IpAddr) -> Result<limits::Pending, metrics::Reason> {
        // An address over its guessing quota would only be asked to try later: refused
        // before any TLS work, its next Hello costs nothing.
        if self.limiter.throttled(ip) {
            return Err(metrics::HANDSHAKE_GUESSING);
        }
        let config = self.config();
        let (per_address, total) = (config.max_unauthenticated_per_address, config.max_unauthenticated);
        self.unauthenticated.try_enter(ip, per_address, total).map_err(|full| match full {
            limits::Full::Address => metrics::HANDSHAKE_ADDRESS_LIMIT,
            limits::Full::Total => metrics::HANDSHAKE_TOTAL_LIMIT,
        })
    }

    /// The host shown in public addresses, when the relay knows its own name.
    pub(crate) fn public_host(&self) -> Option<String> {
        self.config().hostname.first().cloned()
    }
}

pub struct Relay {
    endpoint: quinn::Endpoint,
    tcp_agents: Option<tokio::net::TcpListener>,
    admin: Option<tokio::net::TcpListener>,
    vhost_listeners: Option<vhost::Listeners>,
    shared: Arc<Shared>,
    fingerprint: Fingerprint,
}

/// Times a relay asked for any free port tries for one free on both UDP and TCP.
const FREE_PORT_TRIES: usize = 16;

/// The QUIC endpoint and the TCP agent port. Agents reach both at one port number, so where
/// `listen` asks for any free port the TCP port must be free at the number UDP got too.
fn bind_agent_ports(
    config: &RelayConfig,
    server: &quinn::ServerConfig,
    keys: &identity::QuicKeys,
) -> Result<(quinn::Endpoint, Option<tokio::net::TcpListener>), BindError> {
    let any_port = config.listen.port() == 0 && config.tcp_listen == config::TcpListen::SameAsListen;
    let mut tries = 1..=if any_port { FREE_PORT_TRIES } else { 1 };
    loop {
        let endpoint = endpoint::bind(config.listen, server.clone(), keys)?;
        let quic_addr = endpoint.local_addr().map_err(BindError::Endpoint)?;
        match tcp_links::bind(config, quic_addr) {
            Ok(tcp) => return Ok((endpoint, tcp)),
            Err(BindError::TcpListen { .. }) if any_port && tries.next().is_some() => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The ACME state kept in the data directory, when the relay gets certificates from a CA.
fn load_acme(config: &RelayConfig, store: Arc<dyn Store>) -> Result<Option<Arc<acme::Acme>>, BindError> {
    let Some(domain) = config.domain.as_deref().filter(|_| config.acme.enabled()) else { return Ok(None) };
    let domain = domain.to_ascii_lowercase();
    let acme = acme::Acme::load(&config.acme, &domain, &config.hostname, &config.data_dir, store)
        .map_err(|e| BindError::AcmeCertificates(e.into()))?;
    Ok(Some(acme))
}

fn bind_admin(addr: SocketAddr) -> Result<tokio::net::TcpListener, BindError> {
    endpoint::bind_tcp(addr, |source| BindError::AdminListen { addr, source })
}

impl Relay {
    /// Prepares the data directory and binds the QUIC endpoint. Needs a tokio runtime. On
    /// failure, the [`BindError`] names the setting, listener or file at fault. Keeps tokens
    /// and claims in the data directory: a store on the network is opened by [`Relay::open`].
    pub fn bind(config: RelayConfig) -> Result<Self, BindError> {
        if config.store.url != config::StoreUrl::File {
            let source = "a store on the network is opened by Relay::open, which can wait for it".into();
            return Err(BindError::Store { url: config.store.url.to_string(), source });
        }
        let identity = Self::prepare(&config)?;
        Self::bind_with(config, identity, None)
    }

    /// [`Relay::bind`], with tokens and claims in the store `store.url` names: the data
    /// directory, or etcd shared by a fleet of relays.
    pub async fn open(config: RelayConfig) -> Result<Self, BindError> {
        let identity = Self::prepare(&config)?;
        // The fleet's roster lists this relay's certificate, so it is known before the store.
        let store = store::open_shared(&config, &identity.fingerprint()).await?;
        Self::bind_with(config, identity, store)
    }

    /// Checks `config`, creates the data directory, and loads or creates the relay's
    /// certificate there.
    fn prepare(config: &RelayConfig) -> Result<tls::Identity, BindError> {
        config.validate()?;
        files::create_private_dir(&config.data_dir)
            .map_err(|source| BindError::DataDir { path: config.data_dir.clone(), source })?;
        Ok(identity::load_or_create_certificate(config)?)
    }

    /// Binds with the prepared `identity` and with `store`, or the data directory's files
    /// when it is `None`.
    fn bind_with(
        config: RelayConfig,
        identity: tls::Identity,
        store: Option<Arc<dyn Store>>,
    ) -> Result<Self, BindError> {
        let fingerprint = identity.fingerprint();
        let keys = identity::load_or_create_quic_keys(&config).map_err(BindError::QuicKeys)?;
        let agent_tls = Arc::new(tls::server_tls(identity)?);
        let mut server = tls::quic_server_config(&agent_tls, transport::relay(config.idle_timeout))?;
        server.migration(config.migration);
        let (endpoint, tcp_agents) = bind_agent_ports(&config, &server, &keys)?;
        let quic_addr = endpoint.local_addr().map_err(BindError::Endpoint)?;
        let store: Arc<dyn Store> = match store {
            Some(store) => store,
            None => Arc::new(
                FileStore::open(&config.data_dir, config.token.as_ref(), config.reservation_ttl)
                    .map_err(|e| BindError::Reservations(e.into()))?,
            ),
        };
        let claims = Arc::new(Claims::new(config.max_tunnels_per_token));
        let acme = load_acme(&config, store.clone())?;
        let (vhost, vhost_listeners) = vhost::bind(&config, claims.clone(), store.clone(), acme.clone())?.unzip();
        let admin = config.admin_listen.map(bind_admin).transpose()?;
        let metrics = Arc::new(metrics::Metrics::new());
        let shared = Shared {
            store,
            claims,
            limiter: FailureLimiter::new(),
            per_ip: limits::PerIpLimit::new(config.max_visitors_per_ip),
            live: Arc::new(sessions::LiveSessions::new(metrics.traffic.clone())),
            metrics,
            unauthenticated: limits::Unauthenticated::default(),
            descriptors: limits::Descriptors::for_this_process(config.max_visitors),
            next_session: AtomicU64::new(1),
            vhost,
            acme,
            visitors: TaskTracker::new(),
            drained: CancellationToken::new(),
            token_reloaded: tokio::sync::Notify::new(),
            sessions: TaskTracker::new(),
            agent_tls,
            agent_addrs: (quic_addr, tcp_agents.as_ref().and_then(|l| l.local_addr().ok())),
            config: RwLock::new(Arc::new(config)),
        };
        Ok(Self { endpoint, tcp_agents, admin, vhost_listeners, shared: Arc::new(shared), fingerprint })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Where agents connect over TCP, unless that is off.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_agents.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where the dashboard, `/api/*`, `/metrics`, `/healthz` and `/readyz` are served, unless
    /// the admin endpoint is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared plain-HTTP port, when the relay has a domain and the port is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.shared.vhost.as_ref().and_then(|v| v.http_addr())
    }

    /// The shared HTTPS port, when the relay has a domain and the port is on.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.shared.vhost.as_ref().and_then(|v| v.https_addr())
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The settings in force now.
    pub fn config(&self) -> Arc<RelayConfig> {
        self.shared.config()
    }

    /// Every limit in force and its value, by config key, with `max_visitors` as resolved
    /// from the open files limit and `open_files` itself.
    pub fn limits(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        limit_table::limits(&self.shared)
    }

    /// Applies edited settings to this relay while it runs; see [`reload::Reloader`].
    pub fn reloader(&self) -> reload::Reloader {
        reload::Reloader::new(self.shared.clone())
    }

    /// Decides, before any TLS work, whether a new QUIC client is served: refused outright,
    /// asked to prove its address under load, or served with its place among the clients
    /// waiting to authenticate.
    fn admit_incoming(&self, incoming: quinn::Incoming) -> Option<(quinn::Incoming, limits::Pending)> {
        match self.shared.place_for(incoming.remote_address().ip()) {
            Ok(pending) => Some((self.validate_under_load(incoming)?, pending)),
            Err(reason) => self.refuse(incoming, reason),
        }
    }

    /// Turns a client away with CONNECTION_REFUSED: quinn answers from the Initial keys alone,
    /// keeping no state for it.
    fn refuse<T>(&self, incoming: quinn::Incoming, reason: metrics::Reason) -> Option<T> {
        self.shared.metrics.handshakes_refused.get_or_create(&reason).inc();
        incoming.refuse();
        None
    }

    /// Under a flood of handshakes, makes a new client prove its address with a QUIC Retry
    /// before the relay spends a TLS handshake on it; spoofed sources never answer. Returns
    /// the connection to serve now, if any.
    fn validate_under_load(&self, incoming: quinn::Incoming) -> Option<quinn::Incoming> {
        // The newcomer is counted among the waiting already.
        let busy = self.shared.unauthenticated.in_progress() > self.shared.config().retry_handshakes_above;
        if !busy || incoming.remote_address_validated() || !incoming.may_retry() {
            return Some(incoming);
        }
        match incoming.retry() {
            Ok(()) => {
                self.shared.metrics.handshakes_retried.inc();
                None
            }
            Err(refused) => Some(refused.into_incoming()),
        }
    }

    /// Forgets quiet addresses, and tunnels whose reservation would have expired.
    fn housekeeping(&self) {
        self.shared.limiter.forget_quiet();
        let claimed = self.shared.claims.held();
        self.shared.metrics.traffic.forget_idle(self.shared.config().reservation_ttl, &claimed);
    }

    /// Serves until `cancel`, then stops accepting, lets visitors finish for the grace period
    /// and closes every session with [`CloseCode::Shutdown`] so agents reconnect.
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let sessions = self.shared.sessions.clone();
        // Should this future be dropped instead of finishing, sessions waiting for the drain
        // end anyway.
        let _drained_on_drop = self.shared.drained.clone().drop_guard();
        // The admin endpoint outlives `cancel` until the drain is over, so `/readyz` can say
        // that the relay is shutting down.
        let admin = TaskTracker::new();
        let stop_admin = CancellationToken::new();
        // Should this future be dropped instead of finishing, the admin endpoint stops too.
        let _stop_admin_on_drop = stop_admin.clone().drop_guard();
        if let Some(listener) = self.admin.take() {
            admin.spawn(admin::serve(listener, self.shared.clone(), cancel.clone(), stop_admin.clone()));
        }
        if let Some(listeners) = self.vhost_listeners.take() {
            sessions.spawn(vhost::serve(listeners, self.shared.clone(), cancel.clone()));
        }
        sessions.spawn(closing::close_sessions_of_revoked_tokens(self.shared.clone(), cancel.clone()));
        sessions.spawn(closing::close_sessions_when_fenced(self.shared.clone(), cancel.clone()));
        if let Some(acme) = self.shared.acme.clone() {
            sessions.spawn(acme.run(self.shared.clone(), cancel.clone()));
        }
        if let Some(listener) = self.tcp_agents.take() {
            sessions.spawn(tcp_links::accept(listener, self.shared.clone(), cancel.clone()));
        }
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => {
                        if let Some((incoming, pending)) = self.admit_incoming(incoming) {
                            sessions.spawn(session::serve_quic(incoming, pending, self.shared.clone(), cancel.clone()));
                        }
                    }
                    None => break,
                },
                _ = housekeeping.tick() => self.housekeeping(),
            }
        }
        tracing::info!("shutting down: no new agents or visitors");
        self.endpoint.set_server_config(None);
        self.drain().await;
        sessions.close();
        if tokio::time::timeout(SESSIONS_CLOSE_WAIT, sessions.wait()).await.is_err() {
            tracing::warn!("sessions still open after the grace period");
        }
        self.endpoint.close(CloseCode::Shutdown.code(), CloseCode::Shutdown.describe().as_bytes());
        tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await.ok();
        self.close_store().await;
        stop_admin.cancel();
        admin.close();
        admin.wait().await;
        tracing::info!("relay stopped");
        Ok(())
    }

    /// Hands what this relay still holds back to the store as reservations, once no session
    /// can claim or release any more. A failure is only logged: the store's own expiry (the
    /// lease, or the next start's reading of the files) keeps the same places reserved.
    async fn close_store(&self) {
        match tokio::time::timeout(STORE_CLOSE_WAIT, self.shared.store.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("closing the store failed: {e:#}"),
            Err(_) => tracing::warn!("closing the store took longer than {STORE_CLOSE_WAIT:?}"),
        }
    }

    /// The one drain: every visitor, whatever carried it in, gets the same grace period.
    async fn drain(&self) {
        let visitors = &self.shared.visitors;
        visitors.close();
        if tokio::time::timeout(self.shared.config().grace_period, visitors.wait()).await.is_err() {
            tracing::info!("grace period over; closing remaining visitors");
        }
        self.shared.drained.cancel();
    }
}
