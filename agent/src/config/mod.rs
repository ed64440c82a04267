//! The agent's settings: which relay, how to trust it, and which local targets to expose.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use burrow_common::{
    Fingerprint, PublicName, Secret,
    config::{EnvSource, check_duration, duration, optional_duration},
    protocol::is_valid_name,
};
use serde::{Deserialize, Serialize};

pub use crate::logging::LogFormat;

/// `transport` in the config, `--transport` on the command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TransportChoice {
    /// QUIC, and TLS over TCP where QUIC gets no answer.
    #[default]
    Auto,
    /// QUIC only: retry on UDP whatever happens.
    Quic,
    /// TLS over TCP only (through `proxy` if one is set).
    Tcp,
}

impl<'de> Deserialize<'de> for TransportChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "auto" => Ok(Self::Auto),
            "quic" => Ok(Self::Quic),
            "tcp" => Ok(Self::Tcp),
            other => Err(serde::de::Error::custom(format!("invalid value {other:?}: expected auto, quic or tcp"))),
        }
    }
}

/// `BURROW_TOKEN`, `BURROW_RELAY`, `BURROW_FINGERPRINT`, ...; the relay's own
/// `BURROW_RELAY_*` variables may share the environment.
pub const ENV: EnvSource<'static> =
    EnvSource { prefix: "BURROW", skip: &["BURROW_RELAY_", "BURROW_CONFIG", secrets::BASIC_AUTH_ENV], list_keys: &[] };

pub use burrow_common::protocol::DEFAULT_RELAY_PORT;

/// Most relays of a fleet one agent keeps sessions with: each more carries the same
/// tunnels again, for a smaller share of visitors.
pub const MAX_RELAYS: u8 = 16;

/// Most QUIC links one agent opens to its relay: beyond the cores of a small relay, more
/// links add sockets and handshakes but no speed.
pub const MAX_LINKS: u8 = 8;

mod secrets;
mod values;

pub use secrets::BASIC_AUTH_ENV;
pub(crate) use values::HostPort;
pub use values::{Cidr, LocalTarget, Protocol, RelayAddr};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// `HOST[:PORT]` of the relay; none runs a relay inside the agent.
    pub relay: Option<RelayAddr>,
    pub token: Option<Secret>,
    /// Trust the relay whose certificate has this SHA-256 fingerprint.
    pub fingerprint: Option<Fingerprint>,
    /// Trust relays whose certificate chains to a CA in this PEM file.
    pub ca: Option<PathBuf>,
    /// Skip all certificate checks (local experiments only).
    pub insecure: bool,
    #[serde(with = "duration")]
    pub keep_alive: Duration,
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Longest wait between reconnect attempts.
    #[serde(with = "duration")]
    pub reconnect_max_delay: Duration,
    /// On TCP with `transport = "auto"`, how long until QUIC is tried again; the wait doubles
    /// after each failed try, up to ten times this.
    #[serde(with = "duration")]
    pub quic_probe_interval: Duration,
    /// QUIC links to the relay, 1 to 8, each with its own UDP socket and congestion window;
    /// visitors are spread over them. The relay may allow fewer.
    pub links: u8,
    /// Relays of a fleet the agent keeps a session with, the one it dials included: the
    /// relay's Welcome lists the others, each opens the same tunnels, and losing one relay
    /// loses only the visitors it carried. `1` keeps to the dialed relay.
    pub max_relays: u8,
    /// How the agent reaches the relay: `auto` (QUIC, with TLS over TCP raced against it
    /// when QUIC does not answer within 300 ms), `quic` or `tcp`.
    pub transport: TransportChoice,
    /// Proxy URL for TCP links (`http://`, `socks5://`, `socks5h://`), or `none`; when
    /// absent, `https_proxy` or `all_proxy` from the environment, unless `no_proxy` names
    /// the relay.
    pub proxy: Option<crate::proxy::ProxySetting>,
    /// Address of the web inspector, or `off`; the next 9 ports are tried if it is taken.
    #[serde(with = "crate::inspector::listen")]
    pub inspect: Option<SocketAddr>,
    /// Token the inspector requires, as a bearer token or a Basic password; mandatory when
    /// it listens beyond loopback, where others could read the tunnels' requests.
    pub inspect_token: Option<Secret>,
    /// `text`, or `json` for log collectors (which also turns off the live console).
    pub log_format: LogFormat,
    pub tunnels: Vec<TunnelConfig>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            relay: None,
            token: None,
            fingerprint: None,
            ca: None,
            insecure: false,
            // Below the 30 s UDP timeout of common NATs, so the mapping stays open.
            keep_alive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            reconnect_max_delay: Duration::from_secs(30),
            quic_probe_interval: Duration::from_secs(60),
            links: 4,
            max_relays: 4,
            transport: TransportChoice::Auto,
            proxy: None,
            inspect: Some(crate::inspector::DEFAULT_ADDR),
            inspect_token: None,
            log_format: LogFormat::Text,
            tunnels: Vec::new(),
        }
    }
}

impl AgentConfig {
    pub fn load(file: Option<&Path>, flags: &impl Serialize) -> anyhow::Result<Self> {
        let mut config: Self = burrow_common::config::load(file, &ENV, flags)?;
        for tunnel in &mut config.tunnels {
            tunnel.read_basic_auth_file()?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: ranges and relations between values.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(token) = &self.token {
            token.check_token("token")?;
        }
        self.validate_inspector()?;
        check_duration("idle_timeout", self.idle_timeout, Duration::from_secs(1))?;
        check_duration("keep_alive", self.keep_alive, Duration::from_millis(100))?;
        for tunnel in &self.tunnels {
            tunnel.validate()?;
        }
        check_duration("reconnect_max_delay", self.reconnect_max_delay, Duration::from_millis(100))?;
        check_duration("quic_probe_interval", self.quic_probe_interval, Duration::from_secs(1))?;
        anyhow::ensure!(
            (1..=MAX_LINKS).contains(&self.links),
            "invalid configuration: links = {} is out of range: give 1 to {MAX_LINKS}",
            self.links
        );
        anyhow::ensure!(
            (1..=MAX_RELAYS).contains(&self.max_relays),
            "invalid configuration: max_relays = {} is out of range: give 1 to {MAX_RELAYS}",
            self.max_relays
        );
        anyhow::ensure!(
            self.keep_alive < self.idle_timeout,
            "invalid configuration: keep_alive = {} must be shorter than idle_timeout = {}, or idle sessions time out",
            duration::format(self.keep_alive),
            duration::format(self.idle_timeout)
        );
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// Stable name: with the token it keeps the same public port or subdomain across
    /// reconnects. Defaults to the subdomain or hostname, or `PROTOCOL-<local port>`.
    pub name: Option<String>,
    /// `PORT` or `HOST:PORT`; the host defaults to 127.0.0.1.
    pub local: LocalTarget,
    /// `tcp` (a public port), `http` (a subdomain or hostname over HTTP and HTTPS), `tls` (a
    /// subdomain or hostname whose TLS the local server ends) or `udp` (a public UDP port).
    #[serde(default)]
    pub protocol: Protocol,
    /// Public port to ask for (TCP, UDP); the relay picks one when absent.
    pub remote_port: Option<u16>,
    /// Subdomain to ask for (HTTP, TLS); the relay picks a readable one when absent.
    pub subdomain: Option<String>,
    /// A custom hostname to ask for instead of a subdomain, like `app.example.org` (HTTP,
    /// TLS): its DNS must point at the relay (a CNAME), and the token must allow it.
    pub hostname: Option<String>,
    /// `USER:PASSWORD` visitors must give (HTTP).
    pub basic_auth: Option<Secret>,
    /// A file holding `basic_auth`, read at load, so the password stays out of this file
    /// and the command line (HTTP).
    pub basic_auth_file: Option<PathBuf>,
    /// Protocols besides WebSocket that visitors may switch to with `Upgrade`, like `h2c`;
    /// other upgrades reach the local server as plain requests (HTTP).
    #[serde(default)]
    pub upgrades: Vec<String>,
    /// Source ranges allowed (HTTP), like `203.0.113.0/24`; empty allows all.
    #[serde(default)]
    pub allow: Vec<Cidr>,
    /// Source ranges refused (HTTP).
    #[serde(default)]
    pub deny: Vec<Cidr>,
    /// `rewrite` sets the Host header to the local address, for dev servers that check it;
    /// any other value is sent as the Host header as is (HTTP).
    pub host_header: Option<String>,
    /// Headers added to each request before it reaches the local server (HTTP).
    #[serde(default)]
    pub request_headers: BTreeMap<String, String>,
    /// Headers added to each response before it leaves for the visitor (HTTP).
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    /// Close a visitor's connection once no bytes have moved either way for this long, or
    /// `off` (TCP, TLS).
    #[serde(default, with = "optional_duration")]
    pub tcp_idle_timeout: Option<Duration>,
    /// End a visitor's flow once no packet has crossed either way for this long, 1s to 1h
    /// (UDP); the relay's default (2m) when absent. The relay keeps the time.
    #[serde(default, with = "values::relay_default", skip_serializing_if = "Option::is_none")]
    pub flow_idle: Option<Duration>,
}

impl TunnelConfig {
    /// A TCP tunnel to `local` with every option at its default.
    pub fn tcp(local: LocalTarget) -> Self {
        Self {
            name: None,
            local,
            protocol: Protocol::Tcp,
            remote_port: None,
            subdomain: None,
            hostname: None,
            basic_auth: None,
            basic_auth_file: None,
            upgrades: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            host_header: None,
            request_headers: BTreeMap::new(),
            response_headers: BTreeMap::new(),
            tcp_idle_timeout: None,
            flow_idle: None,
        }
    }

    pub fn name(&self) -> String {
        self.name
            .clone()
            .or_else(|| self.subdomain.clone())
            .or_else(|| self.hostname.clone().filter(|host| is_valid_name(host)))
            .unwrap_or_else(|| format!("{}-{}", self.protocol, self.local.port))
    }

    /// Checks the options against the protocol, naming the tunnel and the key at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        let name = self.name();
        let http_only = [
            ("basic_auth", self.basic_auth.is_some()),
            ("upgrades", !self.upgrades.is_empty()),
            ("allow", !self.allow.is_empty()),
            ("deny", !self.deny.is_empty()),
            ("host_header", self.host_header.is_some()),
            ("request_headers", !self.request_headers.is_empty()),
            ("response_headers", !self.response_headers.is_empty()),
        ];
        for (key, given) in http_only {
            anyhow::ensure!(
                !given || self.protocol == Protocol::Http,
                "invalid configuration: tunnel {name:?}: {key} applies to HTTP tunnels only (protocol = \"http\", or --http)"
            );
        }
        let public_port = matches!(self.protocol, Protocol::Tcp | Protocol::Udp);
        anyhow::ensure!(
            self.remote_port.is_none() || public_port,
            "invalid configuration: tunnel {name:?}: remote_port applies to TCP and UDP tunnels only; HTTP and TLS tunnels get a subdomain"
        );
        for (key, given) in [("subdomain", self.subdomain.is_some()), ("hostname", self.hostname.is_some())] {
            anyhow::ensure!(
                !given || !public_port,
                "invalid configuration: tunnel {name:?}: {key} applies to HTTP and TLS tunnels only (protocol = \"http\" or \"tls\")"
            );
        }
        self.validate_hostname(&name)?;
        if let Some(credentials) = &self.basic_auth {
            secrets::check_basic_auth(&name, credentials)?;
        }
        for protocol in &self.upgrades {
            anyhow::ensure!(
                burrow_common::upgrade::is_token(protocol),
                "invalid configuration: tunnel {name:?}: upgrades: {protocol:?} is not a protocol name, like h2c"
            );
        }
        self.validate_idle(&name)?;
        for (key, headers) in [("request_headers", &self.request_headers), ("response_headers", &self.response_headers)]
        {
            for (header, value) in headers {
                let valid = hyper::header::HeaderName::from_bytes(header.as_bytes()).is_ok()
                    && hyper::header::HeaderValue::from_str(value).is_ok();
                anyhow::ensure!(
                    valid,
                    "invalid configuration: tunnel {name:?}: {key}: {header:?} = {value:?} is not a valid HTTP header"
                );
            }
        }
        Ok(())
    }
}

impl TunnelConfig {
    /// The name the relay is asked for, if any.
    pub(crate) fn public_name(&self) -> Option<PublicName> {
        let hostname = self.hostname.clone().map(PublicName::Hostname);
        hostname.or_else(|| self.subdomain.clone().map(PublicName::Subdomain))
    }

    /// A hostname is a whole DNS name; which ones a tunnel may have is the relay's to say.
    fn validate_hostname(&self, name: &str) -> anyhow::Result<()> {
        let Some(host) = &self.hostname else { return Ok(()) };
        anyhow::ensure!(
            self.subdomain.is_none(),
            "invalid configuration: tunnel {name:?}: give either subdomain or hostname, not both"
        );
        let labels_valid = host
            .split('.')
            .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        anyhow::ensure!(
            host.contains('.') && labels_valid,
            "invalid configuration: tunnel {name:?}: hostname = {host:?} is not a full DNS name, like app.example.org"
        );
        Ok(())
    }
}

impl AgentConfig {
    fn validate_inspector(&self) -> anyhow::Result<()> {
        if let Some(token) = &self.inspect_token {
            token.check_token("inspect_token")?;
        }
        if let Some(addr) = self.inspect {
            anyhow::ensure!(
                addr.ip().is_loopback() || self.inspect_token.is_some(),
                "invalid configuration: inspect = {addr} is reachable beyond this machine: \
                 set inspect_token (or BURROW_INSPECT_TOKEN), or listen on 127.0.0.1"
            );
        }
        Ok(())
    }
}

/// The range of `flow_idle`: a flow needs a second to be worth opening, and an hour of
/// quiet is past any keep-alive a UDP protocol sends, while each idle flow holds a socket
/// here and a stream on the link.
const FLOW_IDLE: std::ops::RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(3600);

impl TunnelConfig {
    fn validate_idle(&self, name: &str) -> anyhow::Result<()> {
        if let Some(idle) = self.tcp_idle_timeout {
            anyhow::ensure!(
                matches!(self.protocol, Protocol::Tcp | Protocol::Tls),
                "invalid configuration: tunnel {name:?}: tcp_idle_timeout applies to TCP and TLS tunnels only"
            );
            check_duration("tcp_idle_timeout", idle, Duration::from_secs(1))?;
        }
        if let Some(idle) = self.flow_idle {
            anyhow::ensure!(
                self.protocol == Protocol::Udp,
                "invalid configuration: tunnel {name:?}: flow_idle applies to UDP tunnels only (protocol = \"udp\", or --udp)"
            );
            anyhow::ensure!(
                FLOW_IDLE.contains(&idle),
                "invalid configuration: tunnel {name:?}: flow_idle = {}: expected {} to {}",
                duration::format(idle),
                duration::format(*FLOW_IDLE.start()),
                duration::format(*FLOW_IDLE.end())
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
