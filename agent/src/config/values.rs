//! The values a user writes in the agent's config and flags: addresses, address ranges and
//! tunnel protocols, each parsed from text with an error that names the expected form.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::DEFAULT_RELAY_PORT;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Tcp,
    Http,
    Tls,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Tls => "tls",
            Protocol::Udp => "udp",
        })
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "http" => Ok(Protocol::Http),
            "tls" => Ok(Protocol::Tls),
            "udp" => Ok(Protocol::Udp),
            _ => Err(format!("invalid protocol {s:?}: expected tcp, http, tls or udp")),
        }
    }
}

/// Where the agent connects for each visitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTarget {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for LocalTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", HostPort(&self.host, self.port))
    }
}

impl FromStr for LocalTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid local address {s:?}: expected PORT or HOST:PORT, like 8080 or 127.0.0.1:8080");
        let (host, port) = split_host_port(s, None).ok_or_else(bad)?;
        Ok(Self { host: host.unwrap_or_else(|| "127.0.0.1".into()), port })
    }
}

/// A source address range, like `203.0.113.0/24`; a bare address is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let range = text.parse::<ipnet::IpNet>().or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        range.map(Cidr).map_err(|_| {
            format!("invalid address range {s:?}: expected an IP or a CIDR range, like 203.0.113.0/24 or 2001:db8::/32")
        })
    }
}

/// The relay's QUIC address as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAddr {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for RelayAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", HostPort(&self.host, self.port))
    }
}

impl FromStr for RelayAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid relay address {s:?}: expected HOST or HOST:PORT, like relay.example.com or 203.0.113.7:4443"
            )
        };
        match split_host_port(s, Some(DEFAULT_RELAY_PORT)).ok_or_else(bad)? {
            (Some(host), port) => Ok(Self { host, port }),
            (None, _) => Err(bad()),
        }
    }
}

/// Displays as `host:port`, bracketing an IPv6 address.
pub(crate) struct HostPort<'a>(pub(crate) &'a str, pub(crate) u16);

impl fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self(host, port) = self;
        if host.contains(':') { write!(f, "[{host}]:{port}") } else { write!(f, "{host}:{port}") }
    }
}

/// Splits `host:port`, `[v6]:port`, a bare port (no host) or, with a default port, a bare host.
fn split_host_port(s: &str, default_port: Option<u16>) -> Option<(Option<String>, u16)> {
    let s = s.trim();
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => port(p)?,
            None if after.is_empty() => default_port?,
            None => return None,
        };
        return Some((Some(host.to_string()), port));
    }
    if s.chars().all(|c| c.is_ascii_digit()) && default_port.is_none() {
        return Some((None, port(s)?));
    }
    let valid_host =
        |h: &str| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    match s.matches(':').count() {
        0 if valid_host(s) => Some((Some(s.to_string()), default_port?)),
        1 => {
            let (host, p) = s.split_once(':')?;
            valid_host(host).then_some(())?;
            Some((Some(host.to_string()), port(p)?))
        }
        // A bare IPv6 address.
        _ if s.parse::<std::net::Ipv6Addr>().is_ok() => Some((Some(s.to_string()), default_port?)),
        _ => None,
    }
}

macro_rules! serde_via_str {
    ($ty:ty) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    Number(u64),
                    Text(String),
                }
                match Raw::deserialize(d)? {
                    Raw::Number(n) => n.to_string().parse(),
                    Raw::Text(s) => s.parse(),
                }
                .map_err(serde::de::Error::custom)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

serde_via_str!(LocalTarget);
serde_via_str!(RelayAddr);
serde_via_str!(Protocol);
serde_via_str!(Cidr);

/// A duration whose absence leaves the choice to the relay. Unlike `optional_duration`, it
/// takes no `off`: the relay always ends idle flows, absent only means its default.
pub(crate) mod relay_default {
    use std::time::Duration;

    use burrow_common::config::duration;
    use serde::{Deserializer, Serializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        duration::deserialize(d).map(Some)
    }

    pub(crate) fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => duration::serialize(value, s),
            None => s.serialize_none(),
        }
    }
}
