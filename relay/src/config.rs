//! The relay's settings, resolved to final values at load.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use burrow_common::{
    PortRange, Secret,
    config::{EnvSource, SettingError, check_duration, duration, optional_duration, parsed},
};
use serde::{Deserialize, Serialize};

pub use crate::store::{StoreConfig, StoreUrl};

/// Environment variables read by the relay: `BURROW_RELAY_LISTEN`, `BURROW_RELAY_PORTS`, ...
pub const ENV: EnvSource<'static> =
    EnvSource { prefix: "BURROW_RELAY", skip: &["BURROW_RELAY_CONFIG"], list_keys: &["hostname", "reserved_names"] };

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// UDP address for agents' QUIC sessions.
    #[serde(with = "parsed")]
    pub listen: SocketAddr,
    /// Address the public tunnel ports are bound on.
    #[serde(with = "parsed")]
    pub public_bind: IpAddr,
    /// Ports tunnels may use.
    pub ports: PortRange,
    /// Certificate, keys, token hashes and reservations.
    pub data_dir: PathBuf,
    /// Names of this relay: certificate SANs, and the first is shown in public addresses.
    pub hostname: Vec<String>,
    /// A token accepted besides those in the data directory (e.g. from BURROW_RELAY_TOKEN).
    pub token: Option<Secret>,
    /// PEM certificate chain to use instead of the generated self-signed one.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// How long a port stays reserved for a token and tunnel name after its agent left.
    #[serde(with = "duration")]
    pub reservation_ttl: Duration,
    /// How long open visitor connections may finish after a shutdown signal.
    #[serde(with = "duration")]
    pub grace_period: Duration,
    /// How long a lost session's ports stay open, with new visitors waiting, for the agent to
    /// reconnect; `0s` frees them at once.
    #[serde(with = "duration")]
    pub park_visitors_for: Duration,
    /// A session with no packets for this long is closed.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Time an agent has to complete its Hello.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// Tunnels one session may open.
    pub max_tunnels_per_session: usize,
    /// Tunnels one token may hold at once, across all its sessions: a leaked or hostile
    /// token cannot take every port by opening many sessions.
    pub max_tunnels_per_token: usize,
    /// Visitors one tunnel may have open at once; more are reset at once.
    pub max_visitors_per_tunnel: usize,
    /// Visitors one source address may have open at once, across all tunnels.
    pub max_visitors_per_ip: usize,
    /// A UDP tunnel's flow quiet both ways this long ends, unless the agent asks for another
    /// time for the tunnel (RFC 9298 asks proxies for at least 2 minutes).
    #[serde(with = "duration")]
    pub udp_flow_idle: Duration,
    /// Visitors one parked tunnel may hold waiting; more are reset at once.
    pub max_parked_visitors: usize,
    /// QUIC clients from one address (an IPv6 /64) that have not yet authenticated; more are
    /// refused before any TLS work.
    pub max_unauthenticated_per_address: usize,
    /// QUIC clients that have not yet authenticated, from all addresses together.
    pub max_unauthenticated: usize,
    /// Sessions one token may hold at once: a leaked token cannot fill the relay with them.
    pub max_sessions_per_token: usize,
    /// QUIC links one agent session may have, its first included: more links spread its
    /// visitors over more cores and congestion windows.
    pub max_links_per_session: usize,
    /// Visitors and public ports the relay holds at once, across all tunnels. Unset: the
    /// open files limit (raised to its hard limit at start) less a reserve for the relay's
    /// own files; a larger value is lowered to that.
    pub max_visitors: Option<usize>,
    /// Address of the admin endpoint (dashboard, `/api`, `/metrics`, `/healthz`, `/readyz`), or `off`.
    #[serde(with = "optional_addr")]
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token the admin endpoint requires; mandatory when it listens beyond loopback.
    pub admin_token: Option<Secret>,
    /// Handshakes in progress above which a new client must first prove its address (QUIC
    /// Retry, one extra round trip), so a spoofed flood cannot buy TLS work from the relay.
    pub retry_handshakes_above: usize,
    /// Follow an agent whose address changes (NAT rebinding). Off only to prove, in tests,
    /// what it is worth.
    pub migration: bool,
    /// The domain whose subdomains name HTTP and TLS tunnels (`myapp.DOMAIN`); wildcard DNS
    /// for it must point here. Without it, only TCP tunnels are served.
    pub domain: Option<String>,
    /// TCP address where agents that cannot use UDP connect (TLS over TCP), or `off`; by
    /// default the `listen` address, on TCP.
    #[serde(with = "tcp_listen")]
    pub tcp_listen: TcpListen,
    /// TCP address of the shared plain-HTTP port, or `off`.
    #[serde(with = "optional_addr")]
    pub http_listen: Option<SocketAddr>,
    /// TCP address of the shared HTTPS port (TLS ended here, or passed through by SNI), or `off`.
    #[serde(with = "optional_addr")]
    pub https_listen: Option<SocketAddr>,
    /// PEM certificate chain for `*.DOMAIN`, e.g. certbot's fullchain.pem; re-read when it
    /// changes. Without it a self-signed wildcard certificate is generated.
    pub https_cert: Option<PathBuf>,
    /// PEM private key for `https_cert`.
    pub https_key: Option<PathBuf>,
    /// Certificates for the HTTPS port from an ACME CA (Let's Encrypt by default), instead
    /// of `https_cert` or the self-signed fallback: on when `acme.email` is set.
    pub acme: crate::acme::AcmeConfig,
    /// Where tokens and claims are kept: the data directory, or etcd for a fleet of relays.
    pub store: StoreConfig,
    /// Answer plain-HTTP requests with a redirect to HTTPS.
    pub http_redirect_https: bool,
    /// Subdomains no agent may take.
    pub reserved_names: Vec<String>,
    /// Time a visitor has to send a request's headers (slowloris protection).
    #[serde(with = "duration")]
    pub http_header_timeout: Duration,
    /// Largest request head a visitor may send.
    pub http_max_header_bytes: usize,
    /// Time the local server has to start answering a request before the visitor gets a 504.
    #[serde(with = "duration")]
    pub http_response_timeout: Duration,
    /// Time a write to a visitor may wait for it to read (TCP and HTTP); a visitor that
    /// stops reading is then cut off instead of holding its places for ever.
    #[serde(with = "duration")]
    pub visitor_write_timeout: Duration,
    /// Time a visitor may pause in the middle of a request body before it gets a 408.
    #[serde(with = "duration")]
    pub http_body_idle_timeout: Duration,
    /// A TCP visitor with no bytes moving either way for this long is closed, or `off`.
    #[serde(with = "optional_duration")]
    pub tcp_idle_timeout: Option<Duration>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, burrow_common::protocol::DEFAULT_RELAY_PORT)),
            public_bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ports: PortRange { start: 20000, end: 29999 },
            data_dir: default_data_dir(),
            hostname: Vec::new(),
            token: None,
            tls_cert: None,
            tls_key: None,
            reservation_ttl: Duration::from_secs(24 * 3600),
            grace_period: Duration::from_secs(10),
            // One capped reconnect delay of the agent (its reconnect_max_delay, 30 s).
            park_visitors_for: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_tunnels_per_session: 32,
            max_tunnels_per_token: 128,
            // The agent accepts this many streams at once; more would only queue unseen.
            max_visitors_per_tunnel: burrow_common::transport::AGENT_MAX_STREAMS as usize,
            max_visitors_per_ip: 256,
            udp_flow_idle: Duration::from_secs(120),
            max_parked_visitors: 256,
            max_unauthenticated_per_address: 16,
            max_unauthenticated: 1024,
            max_sessions_per_token: 16,
            max_links_per_session: 4,
            max_visitors: None,
            admin_listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9470))),
            admin_token: None,
            migration: true,
            retry_handshakes_above: 64,
            tcp_listen: TcpListen::SameAsListen,
            domain: None,
            // Not 8080 or 8000: those are the dev servers people expose.
            http_listen: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8880))),
            https_listen: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8443))),
            https_cert: None,
            https_key: None,
            acme: crate::acme::AcmeConfig::default(),
            store: StoreConfig::default(),
            http_redirect_https: false,
            reserved_names: crate::vhost::default_reserved_names(),
            http_header_timeout: Duration::from_secs(10),
            http_max_header_bytes: 64 * 1024,
            http_response_timeout: Duration::from_secs(60),
            visitor_write_timeout: Duration::from_secs(60),
            http_body_idle_timeout: Duration::from_secs(30),
            // Off: quiet SSH or database connections are what tunnels are for.
            tcp_idle_timeout: None,
        }
    }
}

/// An address, or `off`.
mod optional_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text == "off" {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("invalid value {text:?}: expected IP:PORT, like 127.0.0.1:9470, or off"))
        })
    }

    pub(super) fn serialize<S: Serializer>(value: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str("off"),
        }
    }
}

/// Where agents reach the relay over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpListen {
    /// The `listen` address, on TCP: 4443/tcp beside 4443/udp.
    SameAsListen,
    Off,
    At(SocketAddr),
}

impl TcpListen {
    pub fn resolve(self, listen: SocketAddr) -> Option<SocketAddr> {
        match self {
            TcpListen::SameAsListen => Some(listen),
            TcpListen::Off => None,
            TcpListen::At(addr) => Some(addr),
        }
    }
}

mod tcp_listen {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::TcpListen;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TcpListen, D::Error> {
        let text = String::deserialize(d)?;
        Ok(match text.as_str() {
            "listen" => TcpListen::SameAsListen,
            "off" => TcpListen::Off,
            addr => TcpListen::At(addr.parse().map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid value {text:?}: expected IP:PORT, like 0.0.0.0:443, listen (the listen address) or off"
                ))
            })?),
        })
    }

    pub(super) fn serialize<S: Serializer>(value: &TcpListen, s: S) -> Result<S::Ok, S::Error> {
        match value {
            TcpListen::SameAsListen => s.serialize_str("listen"),
            TcpListen::Off => s.serialize_str("off"),
            TcpListen::At(addr) => s.collect_str(addr),
        }
    }
}

/// `$XDG_DATA_HOME/burrow/relay`, i.e. `~/.local/share/burrow/relay` on Linux.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("burrow").join("relay")
}

/// Why the relay's settings cannot be used together; each message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Setting(#[from] SettingError),
    #[error(
        "invalid configuration: admin_listen = {0} is reachable beyond this machine: \
         set admin_token, or listen on 127.0.0.1"
    )]
    ExposedAdmin(SocketAddr),
}

impl RelayConfig {
    /// Checks what serde cannot: relations between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        paired(("tls_cert", &self.tls_cert), ("tls_key", &self.tls_key))?;
        for (key, value) in [
            ("max_tunnels_per_session", self.max_tunnels_per_session),
            ("max_tunnels_per_token", self.max_tunnels_per_token),
            ("max_visitors_per_tunnel", self.max_visitors_per_tunnel),
            ("max_visitors_per_ip", self.max_visitors_per_ip),
            ("max_parked_visitors", self.max_parked_visitors),
            ("max_unauthenticated_per_address", self.max_unauthenticated_per_address),
            ("max_unauthenticated", self.max_unauthenticated),
            ("max_sessions_per_token", self.max_sessions_per_token),
            ("max_links_per_session", self.max_links_per_session),
            ("max_visitors", self.max_visitors.unwrap_or(1)),
        ] {
            at_least(key, value, 1)?;
        }
        if let Some(token) = &self.token {
            token.check_token("token")?;
        }
        if let Some(token) = &self.admin_token {
            token.check_token("admin_token")?;
        }
        if let Some(addr) = self.admin_listen
            && !addr.ip().is_loopback()
            && self.admin_token.is_none()
        {
            return Err(ConfigError::ExposedAdmin(addr));
        }
        check_duration("idle_timeout", self.idle_timeout, Duration::from_secs(1))?;
        check_duration("udp_flow_idle", self.udp_flow_idle, Duration::from_secs(1))?;
        check_duration("handshake_timeout", self.handshake_timeout, Duration::from_millis(100))?;
        check_duration("visitor_write_timeout", self.visitor_write_timeout, Duration::from_millis(100))?;
        check_duration("http_body_idle_timeout", self.http_body_idle_timeout, Duration::from_millis(100))?;
        if let Some(idle) = self.tcp_idle_timeout {
            check_duration("tcp_idle_timeout", idle, Duration::from_secs(1))?;
        }
        self.validate_http()?;
        self.store.validate()?;
        for name in &self.hostname {
            let valid = !name.is_empty() && !name.contains(['/', ' ', ':']) || name.parse::<IpAddr>().is_ok();
            if !valid {
                return Err(unexpected("hostname", name, "a DNS name or IP address, like relay.example.com").into());
            }
        }
        Ok(())
    }

    fn validate_http(&self) -> Result<(), SettingError> {
        paired(("https_cert", &self.https_cert), ("https_key", &self.https_key))?;
        if let Some(domain) = &self.domain {
            let labels_valid = domain.split('.').all(|label| crate::vhost::check_label(label).is_ok());
            if !labels_valid || domain.parse::<IpAddr>().is_ok() {
                let expected = "a DNS name whose subdomains point at this relay, like relay.example.com";
                return Err(unexpected("domain", domain, expected));
            }
        }
        self.acme.validate(self.domain.as_deref(), self.https_cert.is_some())?;
        for name in &self.reserved_names {
            if crate::vhost::check_label(name).is_err() {
                let expected = "names of 1-63 letters, digits or '-', not starting or ending with '-'";
                return Err(unexpected("reserved_names", name, expected));
            }
        }
        check_duration("http_header_timeout", self.http_header_timeout, Duration::from_millis(100))?;
        check_duration("http_response_timeout", self.http_response_timeout, Duration::from_millis(100))?;
        // hyper refuses a read buffer below 8 KiB.
        at_least("http_max_header_bytes", self.http_max_header_bytes, 8192)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.data_dir.join(file)
    }

    /// Loads layered config; `flags` are the command-line values that were given.
    /// For the binary: a file being applied by a reload reports errors the same way.
    pub fn load(file: Option<&Path>, flags: &impl Serialize) -> anyhow::Result<Self> {
        let config: Self = burrow_common::config::load(file, &ENV, flags)?;
        config.validate()?;
        Ok(config)
    }
}

fn paired<T>(first: (&'static str, &Option<T>), second: (&'static str, &Option<T>)) -> Result<(), SettingError> {
    if first.1.is_some() != second.1.is_some() {
        return Err(SettingError::Unpaired { first: first.0, second: second.0 });
    }
    Ok(())
}

fn at_least(key: &'static str, value: usize, min: usize) -> Result<(), SettingError> {
    if value < min {
        return Err(SettingError::BelowMinimum { key, value: value.to_string(), min: min.to_string() });
    }
    Ok(())
}

fn unexpected(key: &'static str, value: &str, expected: &'static str) -> SettingError {
    SettingError::Unexpected { key, value: format!("{value:?}"), expected }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct NoFlags {}

    #[test]
    fn deploy_example_parses() -> anyhow::Result<()> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/relay.toml");
        let config = RelayConfig::load(Some(&path), &NoFlags {})?;
        assert_eq!(config.listen.port(), 4443);
        assert_eq!(config.data_dir, Path::new("/var/lib/burrow"));
        assert_eq!(config.park_visitors_for, Duration::from_secs(30));
        Ok(())
    }

    #[test]
    fn deploy_fleet_example_parses() -> anyhow::Result<()> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/relay-fleet.toml");
        let config = RelayConfig::load(Some(&path), &NoFlags {})?;
        assert!(matches!(&config.store.url, StoreUrl::Etcd { endpoints, .. } if endpoints.len() == 3));
        assert_eq!(config.store.advertise.as_deref(), Some("r1.example.com:4443"));
        Ok(())
    }

    #[test]
    fn bad_values_name_key_value_and_form() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("relay.toml");
        for (text, words) in [
            ("listen = \"4443\"", ["listen", "\"4443\"", "IP:PORT"]),
            ("ports = \"30000-20000\"", ["ports", "30000-20000", "START-END"]),
            ("grace_period = \"ten\"", ["grace_period", "\"ten\"", "30s"]),
            ("lisen = \"0.0.0.0:1\"", ["lisen", "unknown field", "listen"]),
            ("token = \"\"", ["token", "0 characters", "at least 16"]),
            ("idle_timeout = \"0s\"", ["idle_timeout", "0s", "at least 1s"]),
            ("park_visitors_for = \"soon\"", ["park_visitors_for", "\"soon\"", "30s"]),
            ("max_parked_visitors = 0", ["max_parked_visitors", "0", "at least 1"]),
            ("admin_listen = \"0.0.0.0:9470\"", ["admin_listen", "0.0.0.0:9470", "admin_token"]),
            ("admin_listen = \"on\"", ["admin_listen", "\"on\"", "or off"]),
            ("domain = \"not a domain\"", ["domain", "\"not a domain\"", "relay.example.com"]),
            ("https_listen = \"443\"", ["https_listen", "\"443\"", "IP:PORT"]),
            ("https_cert = \"/x.pem\"", ["https_cert and https_key", "together", ""]),
            ("reserved_names = [\"a_b\"]", ["reserved_names", "a_b", "letters, digits or '-'"]),
            ("http_header_timeout = \"0s\"", ["http_header_timeout", "0s", "at least"]),
            ("http_max_header_bytes = 100", ["http_max_header_bytes", "100", "at least 8192"]),
            ("visitor_write_timeout = \"0s\"", ["visitor_write_timeout", "0s", "at least 100ms"]),
            ("http_body_idle_timeout = \"1ms\"", ["http_body_idle_timeout", "1ms", "at least 100ms"]),
            ("tcp_idle_timeout = \"never\"", ["tcp_idle_timeout", "\"never\"", "or off"]),
            ("tcp_idle_timeout = \"10ms\"", ["tcp_idle_timeout", "10ms", "at least 1s"]),
            ("[acme]\nemail = \"ops\"", ["acme.email", "\"ops\"", "ops@example.com"]),
            ("[store]\nurl = \"etcd:/a\"", ["store.url", "\"etcd:/a\"", "etcd://HOST:PORT"]),
            ("[store]\nendpoints = \"a\"", ["endpoints", "unknown field", "url"]),
            ("[store]\nurl = \"etcd://a:1\"\nuser = \"u\"", ["store.user and store.password", "together", ""]),
            ("[store]\nlease_ttl = \"1s\"", ["store.lease_ttl", "1s", "at least 2s"]),
            ("[store]\nadvertise = \"r1.example.com\"", ["store.advertise", "r1.example.com", "HOST:PORT"]),
            ("[acme]\nemail = \"o@x.org\"", ["acme.email", "a domain too", "--domain"]),
            (
                "domain = \"x.org\"\n[acme]\nemail = \"o@x.org\"\nchallenge = \"dns-01\"",
                ["acme.challenge", "dns-01", "dns_hook"],
            ),
            (
                "domain = \"x.org\"\n[acme]\nemail = \"o@x.org\"\nchallenge = \"dns\"",
                ["challenge", "dns", "tls-alpn-01"],
            ),
            (
                "domain = \"x.org\"\n[acme]\nemail = \"o@x.org\"\ndirectory = \"http://ca\"",
                ["acme.directory", "http://ca", "https://"],
            ),
        ] {
            std::fs::write(&path, text)?;
            let err = format!("{:#}", RelayConfig::load(Some(&path), &NoFlags {}).unwrap_err());
            for word in words {
                assert!(err.contains(word), "{text}: {err} lacks {word}");
            }
        }
        Ok(())
    }
}
