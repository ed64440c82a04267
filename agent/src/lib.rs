//! The burrow agent: dials a relay, registers tunnels, and forwards each stream the relay
//! opens to a local target. `run` reconnects with backoff until cancelled.

mod backoff;
pub mod cli;
pub mod config;
mod console;
mod dial;
pub mod embedded;
mod fleet;
mod flows;
mod forward;
mod human;
pub mod inspector;
mod links;
mod local_http;
mod logging;
pub mod proxy;
mod ready;
mod reload;
mod report;
pub mod requests;
mod session;
pub mod snapshot;
pub mod stats;
mod udp_memory;

use std::{fmt, time::Duration};

use anyhow::Context;
use burrow_common::{HttpAccess, PublicName, Secret, TunnelKind, TunnelSpec, tls::Trust};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use crate::fleet::Roster;
use crate::{
    backoff::Backoff,
    config::{AgentConfig, LocalTarget, Protocol, RelayAddr, TunnelConfig},
    session::SessionEnd,
    stats::Stats,
};

/// Everything one run needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub relay: RelayAddr,
    pub trust: Trust,
    pub token: Secret,
    pub tunnels: Vec<TunnelPlan>,
    pub keep_alive: Duration,
    pub idle_timeout: Duration,
    pub reconnect_max_delay: Duration,
    /// On TCP, how long until QUIC is tried again (doubling, up to ten times this).
    pub quic_probe_interval: Duration,
    /// QUIC links the agent keeps to the relay, as far as the relay allows.
    pub links: u8,
    /// Relays of the fleet kept in session, the dialed one included.
    pub max_relays: u8,
    /// Where the dialed relay's Welcomes publish the fleet's other relays; `None` in the
    /// sessions with those others, whose lists would name the dialed relay again.
    pub roster: Option<Roster>,
    /// QUIC, TLS over TCP, or QUIC with TCP raced against it.
    pub transport: config::TransportChoice,
    /// The proxy TCP links go through, if any.
    pub proxy: Option<proxy::Proxy>,
    /// Where the run records what it carries; clone it before `run` to watch.
    pub stats: Stats,
    /// New tunnel lists, when the config file changes: applied to the live session
    /// without touching the tunnels that stay, and used by every later session.
    pub reloads: Option<watch::Receiver<Vec<TunnelPlan>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelPlan {
    pub name: String,
    pub local: LocalTarget,
    pub remote_port: Option<u16>,
    /// `Tcp` and `Udp` use `remote_port`; `Http` and `Tls` use `public_name`.
    pub protocol: Protocol,
    /// The subdomain or custom hostname asked for; the relay picks a subdomain when absent.
    pub public_name: Option<PublicName>,
    /// Checked by the relay before a request crosses (HTTP).
    pub access: HttpAccess,
    /// Applied here, next to the local server (HTTP).
    pub rewrite: HttpRewrite,
    /// Visitors quiet both ways for this long are closed here (TCP, TLS).
    pub tcp_idle_timeout: Option<Duration>,
    /// Flows quiet both ways for this long are ended by the relay (UDP); its default if none.
    pub flow_idle: Option<Duration>,
}

/// What the agent changes in requests and responses on their way to and from the local server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpRewrite {
    /// The Host header the local server gets instead of the public hostname.
    pub host_header: Option<String>,
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
}

impl TunnelPlan {
    /// A TCP tunnel on a port the relay picks.
    pub fn tcp(name: &str, local: LocalTarget) -> Self {
        Self {
            name: name.to_string(),
            local,
            remote_port: None,
            protocol: Protocol::Tcp,
            public_name: None,
            access: HttpAccess::default(),
            rewrite: HttpRewrite::default(),
            tcp_idle_timeout: None,
            flow_idle: None,
        }
    }

    /// A UDP tunnel on a port the relay picks, its flows ending after the relay's idle time.
    pub fn udp(name: &str, local: LocalTarget) -> Self {
        Self { protocol: Protocol::Udp, ..Self::tcp(name, local) }
    }

    /// An HTTP tunnel at `subdomain`, or at a name the relay picks.
    pub fn http(name: &str, local: LocalTarget, subdomain: Option<&str>) -> Self {
        let public_name = subdomain.map(|label| PublicName::Subdomain(label.to_string()));
        Self { protocol: Protocol::Http, public_name, ..Self::tcp(name, local) }
    }

    pub(crate) fn from_config(tunnel: &TunnelConfig) -> Self {
        let host_header = tunnel.host_header.as_ref().map(|host| match host.as_str() {
            "rewrite" => tunnel.local.to_string(),
            literal => literal.to_string(),
        });
        let pairs = |headers: &std::collections::BTreeMap<String, String>| {
            headers.iter().map(|(name, value)| (name.clone(), value.clone())).collect()
        };
        Self {
            name: tunnel.name(),
            local: tunnel.local.clone(),
            remote_port: tunnel.remote_port,
            protocol: tunnel.protocol,
            public_name: tunnel.public_name(),
            access: HttpAccess {
                basic_auth: tunnel.basic_auth.clone(),
                allow: tunnel.allow.iter().map(|c| c.0).collect(),
                deny: tunnel.deny.iter().map(|c| c.0).collect(),
                upgrades: tunnel.upgrades.clone(),
            },
            rewrite: HttpRewrite {
                host_header,
                request_headers: pairs(&tunnel.request_headers),
                response_headers: pairs(&tunnel.response_headers),
            },
            tcp_idle_timeout: tunnel.tcp_idle_timeout,
            flow_idle: tunnel.flow_idle,
        }
    }

    /// The tunnel as the relay is asked for it.
    pub(crate) fn spec(&self) -> TunnelSpec {
        TunnelSpec { name: self.name.clone(), local: self.local.to_string(), kind: self.kind() }
    }

    fn kind(&self) -> TunnelKind {
        match self.protocol {
            Protocol::Tcp => TunnelKind::Tcp { port: self.remote_port },
            Protocol::Http => TunnelKind::Http { name: self.public_name.clone(), access: self.access.clone() },
            Protocol::Tls => TunnelKind::Tls { name: self.public_name.clone() },
            Protocol::Udp => TunnelKind::Udp { port: self.remote_port, flow_idle: self.flow_idle },
        }
    }
}

impl Plan {
    /// Resolves a config that names a relay. The embedded relay builds its plan itself.
    pub fn for_relay(config: &AgentConfig, relay: RelayAddr) -> anyhow::Result<Self> {
        let token = config.token.clone().context(
            "no token: pass --token, set BURROW_TOKEN, or put `token` in the config file \
             (the relay prints one at its first start; `relay token add NAME` makes more)",
        )?;
        let trust = match (&config.fingerprint, &config.ca, config.insecure) {
            (Some(_), Some(_), _) => anyhow::bail!("give either --fingerprint or --ca, not both"),
            (Some(fp), None, _) => Trust::Pinned(*fp),
            (None, Some(ca), _) => Trust::CaFile(ca.clone()),
            (None, None, true) => Trust::Insecure,
            (None, None, false) => Trust::PublicRoots,
        };
        let mut plan = Self::new(config, relay, trust, token);
        // Only here, for the command line: tests and the embedded relay ignore the
        // environment's proxies.
        plan.proxy = proxy::from_settings(config.proxy.as_ref(), &plan.relay.host, |name| std::env::var(name).ok())?;
        Ok(plan)
    }

    pub fn new(config: &AgentConfig, relay: RelayAddr, trust: Trust, token: Secret) -> Self {
        let tunnels = config.tunnels.iter().map(TunnelPlan::from_config).collect();
        Self {
            relay,
            trust,
            token,
            tunnels,
            keep_alive: config.keep_alive,
            idle_timeout: config.idle_timeout,
            reconnect_max_delay: config.reconnect_max_delay,
            quic_probe_interval: config.quic_probe_interval,
            links: config.links,
            max_relays: config.max_relays,
            roster: None,
            proxy: config.proxy.as_ref().and_then(proxy::ProxySetting::proxy).cloned(),
            transport: config.transport,
            stats: Stats::default(),
            reloads: None,
        }
    }

    /// The tunnels to ask for now: the last reloaded list, or the first.
    pub fn current_tunnels(&self) -> Vec<TunnelPlan> {
        match &self.reloads {
            Some(reloads) => reloads.borrow().clone(),
            None => self.tunnels.clone(),
        }
    }
}

/// A session that served this long was healthy; the next reconnect starts quickly again.
pub(crate) const STABLE_SESSION: Duration = Duration::from_secs(10);

/// What the agent is doing now; `run` publishes every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Connecting,
    Online(Vec<PublicTunnel>),
    Retrying { attempt: u32, delay: Duration, reason: String },
}

/// A tunnel as the relay granted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicTunnel {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub local: LocalTarget,
    /// An HTTP or TLS tunnel's addresses, HTTPS first; empty for TCP and UDP.
    pub urls: Vec<String>,
    pub protocol: Protocol,
}

impl PublicTunnel {
    /// Where visitors go: `tcp://HOST:PORT` or `udp://HOST:PORT`, or the first of `urls`.
    pub fn url(&self) -> String {
        match self.urls.first() {
            Some(url) => url.clone(),
            None => format!("{}://{}", self.port_scheme(), config::HostPort(&self.host, self.port)),
        }
    }

    /// The scheme of a tunnel reached at a public port, as its URL starts.
    pub fn port_scheme(&self) -> Protocol {
        match self.protocol {
            Protocol::Udp => Protocol::Udp,
            _ => Protocol::Tcp,
        }
    }
}

impl fmt::Display for PublicTunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.url(), self.local)
    }
}

/// Keeps the tunnels up until `cancel`: reconnects forever on transient failures, returns an
/// error on ones the user must fix (bad token, untrusted relay on first contact, refusals).
pub async fn run(mut plan: Plan, status: watch::Sender<Status>, cancel: CancellationToken) -> anyhow::Result<()> {
    let stats = plan.stats.clone();
    stats.set_relay(plan.relay.to_string());
    let members = fleet::Members::start(&mut plan, &cancel);
    let result = keep_up(plan, status, cancel, FirstContact::ChecksSetup).await;
    members.stop().await;
    stats.stopped(result.as_ref().err().map(|e| format!("{e:#}")));
    result
}

/// What a failure before the first Welcome means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirstContact {
    /// The relay the user named: a refusal or an untrusted certificate is a setup mistake.
    ChecksSetup,
    /// A relay its fleet named: it may just be starting, or refuse for a while.
    Retries,
}

pub(crate) async fn keep_up(
    plan: Plan,
    status: watch::Sender<Status>,
    cancel: CancellationToken,
    first_contact: FirstContact,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !plan.current_tunnels().is_empty(),
        "nothing to expose: pass --local PORT or list [[tunnels]] in the config file"
    );
    let dialer = dial::Dialer::new(&plan)?;
    let mut backoff = Backoff::new(plan.reconnect_max_delay);
    // Until the first Welcome, a refusal or an untrusted certificate is a setup mistake.
    let mut never_online = first_contact == FirstContact::ChecksSetup;
    loop {
        plan.stats.publish(&status, Status::Connecting);
        let span = tracing::info_span!("session", relay = %plan.relay, attempt = backoff.attempt());
        match session::run(&plan, &dialer, &status, never_online, &cancel).instrument(span).await {
            SessionEnd::Stopped => return Ok(()),
            SessionEnd::Fatal(e) => return Err(e),
            SessionEnd::Retry { reason, online_for } => {
                never_online &= online_for.is_none();
                // Only a session that lasted resets the backoff, so a relay that welcomes
                // and then drops agents is not hammered with reconnects.
                if online_for.is_some_and(|d| d >= STABLE_SESSION) {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                let attempt = backoff.attempt();
                tracing::warn!(attempt, retry_in = ?delay, "{reason}");
                plan.stats.publish(&status, Status::Retrying { attempt, delay, reason });
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
