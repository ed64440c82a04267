//! The `[store]` settings: where the relay keeps its tokens and claims. `file` (the data
//! directory) serves one relay; `etcd://` serves a fleet of relays that share them.

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use burrow_common::{
    Secret,
    config::{SettingError, check_duration, duration},
};
use serde::{Deserialize, Serialize};

const EXPECTED_URL: &str = "file, or etcd://HOST:PORT[,HOST:PORT...] (etcds:// for TLS)";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `file`, or the etcd cluster's client endpoints.
    pub url: StoreUrl,
    /// Every key the relay writes in etcd starts with this; relays of one fleet share it.
    pub prefix: String,
    /// How long this relay's claims outlive its last renewal: after a crash, or when it is
    /// cut off from etcd. Long enough to ride out an etcd outage.
    #[serde(with = "duration")]
    pub lease_ttl: Duration,
    /// Time one request to etcd may take before the relay gives up on it.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// PEM root certificate(s) the etcd servers are trusted by; required by `etcds://`.
    pub ca: Option<PathBuf>,
    /// PEM client certificate presented to etcd, with `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// etcd user (role-based access), with `password`.
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// Where agents reach this relay, `HOST:PORT`, as the other relays of the fleet list it
    /// in their Welcome; by default the first `hostname` and the agent port. A relay with
    /// neither is in the fleet but not offered to agents.
    pub advertise: Option<String>,
    /// This relay's failure domain (a data centre, a region), for agents to spread their
    /// sessions across.
    pub zone: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: StoreUrl::File,
            prefix: "/burrow/".into(),
            // The default session TTL of etcd's own Go client.
            lease_ttl: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
            ca: None,
            cert: None,
            key: None,
            user: None,
            password: None,
            advertise: None,
            zone: None,
        }
    }
}

/// Where tokens and claims live.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum StoreUrl {
    /// `tokens.json` and `reservations.json` in the data directory.
    File,
    /// An etcd cluster, by its client endpoints as `http://` or (with `tls`) `https://` URLs.
    Etcd { endpoints: Vec<String>, tls: bool },
}

impl FromStr for StoreUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || format!("invalid value {text:?}: expected {EXPECTED_URL}");
        if text == "file" {
            return Ok(StoreUrl::File);
        }
        let (tls, hosts) = match text.split_once("://") {
            Some(("etcd", hosts)) => (false, hosts),
            Some(("etcds", hosts)) => (true, hosts),
            _ => return Err(invalid()),
        };
        let scheme = if tls { "https" } else { "http" };
        let endpoints = hosts
            .split(',')
            .map(|host| is_host_port(host).then(|| format!("{scheme}://{host}")).ok_or_else(invalid))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StoreUrl::Etcd { endpoints, tls })
    }
}

/// `HOST:PORT` or `[IPv6]:PORT`, with nothing else (no path, no user).
fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else { return false };
    let host_valid = !host.is_empty() && !host.contains(['/', '@', ' ', '?', '#']);
    host_valid && port.parse::<u16>().is_ok_and(|port| port > 0)
}

impl TryFrom<String> for StoreUrl {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<StoreUrl> for String {
    fn from(url: StoreUrl) -> Self {
        url.to_string()
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::File => f.write_str("file"),
            StoreUrl::Etcd { endpoints, tls } => {
                let hosts: Vec<&str> =
                    endpoints.iter().map(|e| e.split_once("://").map_or(e.as_str(), |(_, h)| h)).collect();
                write!(f, "{}://{}", if *tls { "etcds" } else { "etcd" }, hosts.join(","))
            }
        }
    }
}

impl StoreConfig {
    /// Checks what serde cannot: relations between values. Every message names the key.
    pub(crate) fn validate(&self) -> Result<(), SettingError> {
        let unexpected =
            |key, value: &str, expected| SettingError::Unexpected { key, value: format!("{value:?}"), expected };
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') {
            return Err(unexpected(
                "store.prefix",
                &self.prefix,
                "a key prefix that starts and ends with /, like /burrow/",
            ));
        }
        // etcd raises shorter TTLs to its own minimum anyway.
        check_duration("store.lease_ttl", self.lease_ttl, Duration::from_secs(2))?;
        check_duration("store.request_timeout", self.request_timeout, Duration::from_millis(100))?;
        if self.cert.is_some() != self.key.is_some() {
            return Err(SettingError::Unpaired { first: "store.cert", second: "store.key" });
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(SettingError::Unpaired { first: "store.user", second: "store.password" });
        }
        let tls = matches!(self.url, StoreUrl::Etcd { tls: true, .. });
        let url = self.url.to_string();
        if tls && self.ca.is_none() {
            return Err(unexpected(
                "store.url",
                &url,
                "a store.ca too: the root certificate etcd's servers are trusted by",
            ));
        }
        if !tls && (self.ca.is_some() || self.cert.is_some()) {
            return Err(unexpected("store.url", &url, "etcds://, since store.ca or store.cert is set"));
        }
        if let Some(advertise) = &self.advertise
            && !is_host_port(advertise)
        {
            return Err(unexpected("store.advertise", advertise, "HOST:PORT, where agents reach this relay"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_endpoints() {
        assert_eq!("file".parse(), Ok(StoreUrl::File));
        let plain = StoreUrl::Etcd { endpoints: vec!["http://10.0.0.5:2379".into(), "http://b:2".into()], tls: false };
        assert_eq!("etcd://10.0.0.5:2379,b:2".parse(), Ok(plain.clone()));
        assert_eq!(plain.to_string(), "etcd://10.0.0.5:2379,b:2");
        let tls = StoreUrl::Etcd { endpoints: vec!["https://[::1]:2379".into()], tls: true };
        assert_eq!("etcds://[::1]:2379".parse(), Ok(tls));
        for bad in
            ["", "etcd://", "etcd://a", "etcd://a:1,", "etcd://a:0", "http://a:1", "etcd://a:1/x", "etcd://u@a:1"]
        {
            let err = bad.parse::<StoreUrl>().unwrap_err();
            assert!(err.contains(EXPECTED_URL), "{bad}: {err}");
        }
    }

    #[test]
    fn relations_between_keys_are_checked() {
        let etcd = |text: &str| StoreConfig { url: text.parse().unwrap_or(StoreUrl::File), ..StoreConfig::default() };
        assert!(StoreConfig::default().validate().is_ok());
        assert!(etcd("etcd://a:1").validate().is_ok());
        for (config, words) in [
            (StoreConfig { prefix: "burrow".into(), ..etcd("etcd://a:1") }, ["store.prefix", "/burrow/"]),
            (StoreConfig { lease_ttl: Duration::from_secs(1), ..etcd("etcd://a:1") }, ["store.lease_ttl", "2s"]),
            (etcd("etcds://a:1"), ["store.url", "store.ca"]),
            (StoreConfig { ca: Some("/ca.pem".into()), ..etcd("etcd://a:1") }, ["store.url", "etcds://"]),
            (StoreConfig { user: Some("burrow".into()), ..etcd("etcd://a:1") }, ["store.user", "store.password"]),
            (StoreConfig { key: Some("/k.pem".into()), ..etcd("etcd://a:1") }, ["store.cert", "store.key"]),
        ] {
            let err = config.validate().err().map(|e| e.to_string()).unwrap_or_default();
            for word in words {
                assert!(err.contains(word), "{config:?}: {err:?} lacks {word}");
            }
        }
    }

    #[test]
    fn the_password_is_masked() {
        let config = StoreConfig { password: Some(Secret::new("hunter2")), ..StoreConfig::default() };
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
