//! The relay's counters, in Prometheus text format at the admin endpoint's `/metrics`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Reason {
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Direction {
    pub(crate) direction: &'static str,
}

pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) sessions: Gauge,
    pub(crate) sessions_total: Counter,
    pub(crate) tunnels: Gauge,
    pub(crate) visitors: Gauge,
    pub(crate) visitors_total: Counter,
    pub(crate) visitors_refused: Family<Reason, Counter>,
    pub(crate) parked_visitors: Gauge,
    pub(crate) visitors_unparked: Counter,
    runtime_tasks: Gauge,
    pub(crate) auth_failures: Counter,
    pub(crate) migrations: Counter,
    pub(crate) handshakes_retried: Counter,
    pub(crate) bytes_to_local: Counter,
    pub(crate) bytes_to_visitor: Counter,
}

/// Why a visitor was turned away, as the `reason` label says it.
pub(crate) const REFUSED_TUNNEL_LIMIT: Reason = Reason { reason: "tunnel_limit" };
pub(crate) const REFUSED_IP_LIMIT: Reason = Reason { reason: "ip_limit" };
pub(crate) const REFUSED_NO_STREAM: Reason = Reason { reason: "agent_unavailable" };
pub(crate) const REFUSED_PARK_FULL: Reason = Reason { reason: "park_full" };
pub(crate) const VISITOR_TO_LOCAL: Direction = Direction { direction: "visitor_to_local" };
pub(crate) const LOCAL_TO_VISITOR: Direction = Direction { direction: "local_to_visitor" };

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
            bytes_to_local: Counter::default(),
            bytes_to_visitor: Counter::default(),
            registry: Registry::default(),
        };
        // Handles into the family, taken once, so finishing a visitor does not look them up.
        // One statement each: `get_or_create` returns a guard on the family's lock, and a
        // second call while the first guard lives would wait for it forever.
        let bytes = Family::<Direction, Counter>::default();
        let bytes_to_local = bytes.get_or_create(&VISITOR_TO_LOCAL).clone();
        let bytes_to_visitor = bytes.get_or_create(&LOCAL_TO_VISITOR).clone();
        let metrics = Self { bytes_to_local, bytes_to_visitor, ..metrics };
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
        registry.register("migrations", "Agent sessions that moved to a new address", metrics.migrations.clone());
        registry.register(
            "handshakes_retried",
            "New clients asked to prove their address during a handshake flood",
            metrics.handshakes_retried.clone(),
        );
        registry.register("bytes", "Bytes carried for visitors that finished", bytes);
        Self { registry, ..metrics }
    }

    pub(crate) fn encode(&self) -> String {
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
