//! The agent's settings: which relay, how to trust it, and which local targets to expose.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use burrow_common::{
    Fingerprint, Secret,
    config::{EnvSource, check_duration, duration, optional_duration},
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
    /// reconnects. Defaults to the subdomain, or `PROTOCOL-<local port>`.
    pub name: Option<String>,
    /// `PORT` or `HOST:PORT`; the host defaults to 127.0.0.1.
    pub local: LocalTarget,
    /// `tcp` (a public port), `http` (a subdomain over HTTP and HTTPS) or `tls` (a
    /// subdomain whose TLS the local server ends).
    #[serde(default)]
    pub protocol: Protocol,
    /// Public port to ask for (TCP); the relay picks one when absent.
    pub remote_port: Option<u16>,
    /// Subdomain to ask for (HTTP, TLS); the relay picks a readable one when absent.
    pub subdomain: Option<String>,
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
            basic_auth: None,
            basic_auth_file: None,
            upgrades: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            host_header: None,
            request_headers: BTreeMap::new(),
            response_headers: BTreeMap::new(),
            tcp_idle_timeout: None,
        }
    }

    pub fn name(&self) -> String {
        let protocol = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Tls => "tls",
        };
        self.name
            .clone()
            .or_else(|| self.subdomain.clone())
            .unwrap_or_else(|| format!("{protocol}-{}", self.local.port))
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
        anyhow::ensure!(
            self.remote_port.is_none() || self.protocol == Protocol::Tcp,
            "invalid configuration: tunnel {name:?}: remote_port applies to TCP tunnels only; HTTP and TLS tunnels get a subdomain"
        );
        anyhow::ensure!(
            self.subdomain.is_none() || self.protocol != Protocol::Tcp,
            "invalid configuration: tunnel {name:?}: subdomain applies to HTTP and TLS tunnels only (protocol = \"http\" or \"tls\")"
        );
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

impl TunnelConfig {
    fn validate_idle(&self, name: &str) -> anyhow::Result<()> {
        let Some(idle) = self.tcp_idle_timeout else { return Ok(()) };
        anyhow::ensure!(
            self.protocol != Protocol::Http,
            "invalid configuration: tunnel {name:?}: tcp_idle_timeout applies to TCP and TLS tunnels only"
        );
        check_duration("tcp_idle_timeout", idle, Duration::from_secs(1))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct NoFlags {}

    #[test]
    fn addresses_parse() {
        let local = |s: &str| s.parse::<LocalTarget>().map(|t| t.to_string());
        assert_eq!(local("8080"), Ok("127.0.0.1:8080".into()));
        assert_eq!(local("localhost:3000"), Ok("localhost:3000".into()));
        assert_eq!(local("[::1]:22"), Ok("[::1]:22".into()));
        assert!(local("host:").unwrap_err().contains("expected PORT or HOST:PORT"));
        assert!(local("0").is_err());

        let relay = |s: &str| s.parse::<RelayAddr>().map(|t| t.to_string());
        assert_eq!(relay("relay.example.com"), Ok("relay.example.com:4443".into()));
        assert_eq!(relay("127.0.0.1:5000"), Ok("127.0.0.1:5000".into()));
        assert_eq!(relay("::1"), Ok("[::1]:4443".into()));
        assert_eq!(relay("[::1]:7"), Ok("[::1]:7".into()));
        assert!(relay("http://x").unwrap_err().contains("expected HOST or HOST:PORT"));
    }

    proptest::proptest! {
        #[test]
        fn addresses_parse_any_text_and_round_trip(text in ".{0,40}|[a-z0-9.-]{1,20}:[0-9]{1,5}|\\[[0-9a-f:]{2,20}\\]:[0-9]{1,5}") {
            if let Ok(local) = text.parse::<LocalTarget>() {
                proptest::prop_assert_eq!(local.to_string().parse::<LocalTarget>(), Ok(local));
            }
            if let Ok(relay) = text.parse::<RelayAddr>() {
                proptest::prop_assert_eq!(relay.to_string().parse::<RelayAddr>(), Ok(relay));
            }
        }
    }

    #[test]
    fn deploy_example_parses() -> anyhow::Result<()> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml");
        let config = AgentConfig::load(Some(&path), &NoFlags {})?;
        assert_eq!(config.relay, Some("relay.example.com".parse().map_err(anyhow::Error::msg)?));
        assert_eq!(config.tunnels.len(), 3);
        assert_eq!(config.tunnels[2].protocol, Protocol::Http);
        assert_eq!(config.tunnels[1].name(), "ssh");
        assert_eq!(config.inspect, Some("127.0.0.1:4040".parse()?));
        Ok(())
    }

    #[test]
    fn bad_values_name_key_value_and_form() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("agent.toml");
        for (text, words) in [
            ("fingerprint = \"sha256:12\"", ["fingerprint", "sha256:12", "64 hex digits"]),
            ("relay = \"a b\"", ["relay", "\"a b\"", "HOST:PORT"]),
            ("keep_alive = \"often\"", ["keep_alive", "often", "30s"]),
            ("keep_alive = \"40s\"", ["keep_alive = 40s", "shorter than", "idle_timeout = 30s"]),
            ("token = \"short\"", ["token is 5 characters long", "at least 16", "relay token add"]),
            ("[[tunnels]]\nlocal = \"x:y\"", ["tunnels", "x:y", "HOST:PORT"]),
            ("[[tunnels]]\nlocal = 80\nremote = 1", ["unknown field `remote`", "remote_port", "tunnels"]),
            ("inspect = \"on\"", ["inspect", "\"on\"", "or off"]),
            ("links = 0", ["links = 0", "out of range", "1 to 8"]),
            ("links = 9", ["links = 9", "out of range", "1 to 8"]),
            ("inspect = \"0.0.0.0:4040\"", ["inspect = 0.0.0.0:4040", "beyond this machine", "inspect_token"]),
            ("inspect_token = \"short\"", ["inspect_token", "5 characters", "at least 16"]),
            ("log_format = \"xml\"", ["log_format", "xml", "json"]),
            ("proxy = \"ftp://al:hunter2@x\"", ["proxy", "ftp://al:***@x", "socks5h://"]),
            ("[[tunnels]]\nlocal = 80\nprotocol = \"ftp\"", ["protocol", "ftp", "http"]),
            ("[[tunnels]]\nlocal = 80\nbasic_auth = \"a:b\"", ["tcp-80", "basic_auth", "HTTP tunnels only"]),
            ("[[tunnels]]\nlocal = 80\nupgrades = [\"h2c\"]", ["tcp-80", "upgrades", "HTTP tunnels only"]),
            (
                "[[tunnels]]\nlocal = 80\nprotocol = \"http\"\nupgrades = [\"h2 c\"]",
                ["http-80", "upgrades", "not a protocol name"],
            ),
            (
                "[[tunnels]]\nlocal = 80\nprotocol = \"http\"\nbasic_auth = \"nocolon\"",
                ["http-80", "basic_auth", "USER:PASSWORD"],
            ),
            (
                "[[tunnels]]\nlocal = 80\nprotocol = \"http\"\nallow = [\"10.0.0/8\"]",
                ["allow", "10.0.0/8", "CIDR range"],
            ),
            (
                "[[tunnels]]\nlocal = 80\nprotocol = \"http\"\nremote_port = 20000",
                ["http-80", "remote_port", "TCP tunnels only"],
            ),
            ("[[tunnels]]\nlocal = 80\ntcp_idle_timeout = \"soon\"", ["tcp_idle_timeout", "soon", "or off"]),
            ("[[tunnels]]\nlocal = 80\ntcp_idle_timeout = \"5ms\"", ["tcp_idle_timeout", "5ms", "at least 1s"]),
            (
                "[[tunnels]]\nlocal = 80\nprotocol = \"http\"\ntcp_idle_timeout = \"5m\"",
                ["http-80", "tcp_idle_timeout", "TCP and TLS tunnels only"],
            ),
        ] {
            std::fs::write(&path, text)?;
            let err = format!("{:#}", AgentConfig::load(Some(&path), &NoFlags {}).unwrap_err());
            for word in words {
                assert!(err.contains(word), "{text}: {err} lacks {word}");
            }
        }
        Ok(())
    }
}
