//! The relay's counters, in Prometheus text format at the admin endpoint's `/metrics`.

use burrow_common::{link::Transport, sync};
use std::sync::{Arc, Mutex, atomic::AtomicU64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    acme::CertificateView,
    claims::{Counts, SessionId},
    sessions::AgentView,
    traffic::Traffic,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LinkTransport {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Reason {
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CredentialKind {
    pub(crate) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Direction {
    pub(crate) direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct JoinResult {
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OrderResult {
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateName {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SessionLabels {
    pub(crate) token: String,
    pub(crate) session: SessionId,
}

/// Each live session's QUIC path, set from the sessions at every scrape.
#[derive(Default)]
struct Paths {
    rtt: Family<SessionLabels, Gauge<f64, AtomicU64>>,
    lost: Family<SessionLabels, Gauge>,
    cwnd: Family<SessionLabels, Gauge>,
    /// Held from refresh to encoding, so a concurrent scrape cannot clear the series between.
    scrape: Mutex<()>,
}

pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) sessions: Gauge,
    pub(crate) sessions_total: Counter,
    /// Set from the claims table at every scrape.
    pub(crate) tunnels: Gauge,
    pub(crate) visitors: Gauge,
    pub(crate) visitors_total: Counter,
    pub(crate) visitors_refused: Family<Reason, Counter>,
    /// Set from the claims table at every scrape.
    pub(crate) parked_visitors: Gauge,
    pub(crate) visitors_unparked: Counter,
    runtime_tasks: Gauge,
    pub(crate) auth_failures: Counter,
    pub(crate) migrations: Counter,
    pub(crate) handshakes_retried: Counter,
    pub(crate) handshakes_refused: Family<Reason, Counter>,
    pub(crate) stream_open: Histogram,
    pub(crate) guessing: Guessing,
    pub(crate) traffic: Arc<Traffic>,
    paths: Paths,
    /// Set from the sessions at every scrape.
    links: Family<LinkTransport, Gauge>,
    pub(crate) link_joins: Family<JoinResult, Counter>,
    pub(crate) acme_orders: Family<OrderResult, Counter>,
    /// Set from the ACME certificates at every scrape.
    certificate_expiry: Family<CertificateName, Gauge>,
}

/// Why a visitor was turned away, as the `reason` label says it.
pub(crate) const REFUSED_TUNNEL_LIMIT: Reason = Reason { reason: "tunnel_limit" };
pub(crate) const REFUSED_IP_LIMIT: Reason = Reason { reason: "ip_limit" };
pub(crate) const REFUSED_NO_STREAM: Reason = Reason { reason: "agent_unavailable" };
pub(crate) const REFUSED_PARK_FULL: Reason = Reason { reason: "park_full" };
pub(crate) const REFUSED_RELAY_LIMIT: Reason = Reason { reason: "relay_limit" };
/// Which secret a credential check compared, as the `kind` label says it.
pub(crate) const CHECKED_TOKEN: CredentialKind = CredentialKind { kind: "token" };
pub(crate) const CHECKED_BASIC_AUTH: CredentialKind = CredentialKind { kind: "basic_auth" };
/// Why a QUIC client was refused before its handshake, as the `reason` label says it.
pub(crate) const HANDSHAKE_GUESSING: Reason = Reason { reason: "guessing" };
pub(crate) const HANDSHAKE_ADDRESS_LIMIT: Reason = Reason { reason: "address_limit" };
pub(crate) const HANDSHAKE_TOTAL_LIMIT: Reason = Reason { reason: "total_limit" };
pub(crate) const VISITOR_TO_LOCAL: Direction = Direction { direction: "visitor_to_local" };
pub(crate) const LOCAL_TO_VISITOR: Direction = Direction { direction: "local_to_visitor" };
pub(crate) const CHECKED_JOIN_TICKET: CredentialKind = CredentialKind { kind: "join_ticket" };
/// How an attempt to add a link to a session ended, as the `result` label says it.
pub(crate) const JOIN_JOINED: JoinResult = JoinResult { result: "joined" };
pub(crate) const JOIN_UNKNOWN: JoinResult = JoinResult { result: "unknown_session" };
pub(crate) const JOIN_LINK_LIMIT: JoinResult = JoinResult { result: "link_limit" };
pub(crate) const JOIN_TRY_LATER: JoinResult = JoinResult { result: "try_later" };
/// How an ACME order ended, as the `result` label says it.
pub(crate) const ORDER_ISSUED: OrderResult = OrderResult { result: "issued" };
pub(crate) const ORDER_FAILED: OrderResult = OrderResult { result: "failed" };

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("burrow");
        let metrics = Self {
            sessions: Gauge::default(),
            sessions_total: Counter::default(),
            tunnels: Gauge::default(),
            visitors: Gauge::default(),
            visitors_total: Counter::default(),
            visitors_refused: Family::default(),
            parked_visitors: Gauge::default(),
            visitors_unparked: Counter::default(),
            runtime_tasks: Gauge::default(),
            auth_failures: Counter::default(),
            migrations: Counter::default(),
            handshakes_retried: Counter::default(),
            handshakes_refused: Family::default(),
            // 0.1 ms (a free stream slot opens without a round trip) to 3.3 s (an agent out of
            // slots, near the 5 s stream timeout).
            stream_open: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            guessing: Guessing::default(),
            traffic: Arc::default(),
            paths: Paths::default(),
            links: Family::default(),
            link_joins: Family::default(),
            acme_orders: Family::default(),
            certificate_expiry: Family::default(),
            registry: Registry::default(),
        };
        registry.register("sessions", "Agent sessions open now", metrics.sessions.clone());
        registry.register("sessions_admitted", "Agent sessions admitted", metrics.sessions_total.clone());
        registry.register("tunnels", "Tunnels open now", metrics.tunnels.clone());
        registry.register("visitors", "Visitor connections open now", metrics.visitors.clone());
        registry.register("visitors_accepted", "Visitor connections accepted", metrics.visitors_total.clone());
        registry.register("visitors_refused", "Visitor connections turned away", metrics.visitors_refused.clone());
        registry.register(
            "parked_visitors",
            "Visitors waiting for their tunnel's agent to reconnect",
            metrics.parked_visitors.clone(),
        );
        registry.register(
            "visitors_unparked",
            "Parked visitors carried over the agent's next session",
            metrics.visitors_unparked.clone(),
        );
        registry.register("runtime_tasks", "Tokio tasks alive in the relay's runtime", metrics.runtime_tasks.clone());
        registry.register("auth_failures", "Sessions refused for a bad token", metrics.auth_failures.clone());
        registry.register(
            "migrations",
            "Agent links that followed their agent to a new address, one count per link that moved",
            metrics.migrations.clone(),
        );
        registry.register(
            "handshakes_retried",
            "New clients asked to prove their address during a handshake flood",
            metrics.handshakes_retried.clone(),
        );
        registry.register(
            "handshakes_refused",
            "New QUIC clients refused before their handshake, by the cap they met",
            metrics.handshakes_refused.clone(),
        );
        registry.register("bytes", "Bytes carried for visitors, open ones included", metrics.traffic.all_bytes.clone());
        metrics.register_tunnels_and_paths(&mut registry);
        registry.register("links", "Links of the agent sessions open now, by transport", metrics.links.clone());
        registry.register("link_joins", "Links that asked to join a session, by result", metrics.link_joins.clone());
        metrics.guessing.register(&mut registry);
        registry.register("acme_orders", "Certificate orders at the ACME CA, by result", metrics.acme_orders.clone());
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When each certificate from the ACME CA expires, by its first name, in Unix seconds",
            metrics.certificate_expiry.clone(),
        );
        Self { registry, ..metrics }
    }

    fn register_tunnels_and_paths(&self, registry: &mut Registry) {
        registry.register(
            "tunnel_bytes",
            "Bytes carried for visitors, open ones included, by token and tunnel",
            self.traffic.bytes.clone(),
        );
        let udp = &self.traffic.udp;
        registry.register(
            "udp_datagrams",
            "UDP tunnels' datagrams carried, by token and tunnel",
            udp.datagrams.clone(),
        );
        registry.register(
            "udp_tunnel_drops",
            "UDP tunnels' packets dropped, by token, tunnel and reason",
            udp.drops.clone(),
        );
        registry.register("udp_drops", "UDP packets dropped, by reason, tunnel known or not", udp.all_drops.clone());
        registry.register(
            "reconnects",
            "Agent sessions admitted for a tunnel this relay had carried before",
            self.traffic.reconnects.clone(),
        );
        registry.register(
            "stream_open_seconds",
            "Time from a visitor's arrival to its stream being open, header written",
            self.stream_open.clone(),
        );
        let paths = &self.paths;
        registry.register("session_rtt_seconds", "Round-trip time of each live session's path", paths.rtt.clone());
        registry.register("session_lost_packets", "Packets each live session has lost", paths.lost.clone());
        registry.register("session_cwnd_bytes", "Congestion window of each live session", paths.cwnd.clone());
    }

    /// The metrics page, with `agents` as the live sessions' paths, `claims` as the claims
    /// table counts them now and `certificates` as the ACME CA's.
    pub(crate) fn encode(&self, agents: &[AgentView], claims: &Counts, certificates: &[CertificateView]) -> String {
        let _scrape = sync::lock(&self.paths.scrape);
        self.paths.set(agents);
        self.certificate_expiry.clear();
        for certificate in certificates {
            if let (Some(name), Some(not_after)) = (certificate.names.first(), certificate.not_after) {
                let label = CertificateName { name: name.clone() };
                self.certificate_expiry.get_or_create(&label).set(saturating_i64(not_after));
            }
        }
        for transport in [Transport::Quic, Transport::Tcp] {
            let links = agents.iter().flat_map(|agent| &agent.links).filter(|link| link.transport == transport);
            let label = LinkTransport { transport: if transport == Transport::Quic { "quic" } else { "tcp" } };
            self.links.get_or_create(&label).set(saturating_i64(links.count() as u64));
        }
        self.tunnels.set(saturating_i64(claims.serving as u64));
        self.parked_visitors.set(saturating_i64(claims.parked_visitors as u64));
        self.traffic.catch_up();
        // Read at scrape time: a count that creeps up between scrapes is a task leak.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.runtime_tasks.set(i64::try_from(runtime.metrics().num_alive_tasks()).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!("metrics encoding failed: {e}");
        }
        text
    }
}

/// What guessing credentials costs the relay: the checks actually performed.
#[derive(Default)]
pub(crate) struct Guessing {
    pub(crate) credential_checks: Family<CredentialKind, Counter>,
    pub(crate) token_store_errors: Counter,
}

impl Guessing {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "credential_checks",
            "Credentials actually compared (tokens, basic-auth passwords), by kind",
            self.credential_checks.clone(),
        );
        registry.register(
            "token_store_errors",
            "Hellos answered with try-later because the token store could not be read",
            self.token_store_errors.clone(),
        );
    }
}

impl Paths {
    /// Replaces every series, so sessions that ended leave none behind.
    fn set(&self, agents: &[AgentView]) {
        self.rtt.clear();
        self.lost.clear();
        self.cwnd.clear();
        for agent in agents {
            let labels = SessionLabels { token: agent.token.clone(), session: agent.session };
            self.rtt.get_or_create(&labels).set(agent.rtt.as_secs_f64());
            self.lost.get_or_create(&labels).set(saturating_i64(agent.lost_packets));
            self.cwnd.get_or_create(&labels).set(saturating_i64(agent.cwnd));
        }
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
