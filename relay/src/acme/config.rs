//! The `[acme]` settings: which CA signs the relay's certificates, and how it checks that the
//! relay answers for a name.

use std::{path::PathBuf, time::Duration};

use burrow_common::config::{SettingError, check_duration, duration};
use serde::{Deserialize, Serialize};

/// Let's Encrypt's directories, by the names the `directory` setting accepts for them.
const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// Contact address of the CA account; setting it turns certificates from the CA on.
    pub email: Option<String>,
    /// The CA's directory URL, or `production` / `staging` for Let's Encrypt's.
    pub directory: String,
    /// A root certificate (PEM) the CA's directory is trusted by, instead of the system's:
    /// for a private or test CA such as Pebble.
    pub ca_root: Option<PathBuf>,
    /// How the CA checks a name: `tls-alpn-01` on the HTTPS port, `http-01` on the HTTP port,
    /// or `dns-01` through `dns_hook`, which also gets one wildcard certificate for every tunnel.
    pub challenge: Challenge,
    /// Program called as `HOOK set|clear NAME VALUE` to publish a DNS-01 TXT record; it should
    /// return once the record is visible to the CA.
    pub dns_hook: Option<PathBuf>,
    /// How long a visitor's first TLS handshake for a name waits for its certificate before it
    /// gets the fallback certificate.
    #[serde(with = "duration")]
    pub handshake_wait: Duration,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            email: None,
            directory: "production".into(),
            ca_root: None,
            challenge: Challenge::TlsAlpn01,
            dns_hook: None,
            handshake_wait: Duration::from_secs(10),
        }
    }
}

/// The ACME challenge types the relay answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Challenge {
    TlsAlpn01,
    Http01,
    Dns01,
}

impl TryFrom<String> for Challenge {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        [Challenge::TlsAlpn01, Challenge::Http01, Challenge::Dns01]
            .into_iter()
            .find(|challenge| challenge.as_str() == text)
            .ok_or_else(|| format!("invalid value {text:?}: expected tls-alpn-01, http-01 or dns-01"))
    }
}

impl From<Challenge> for &'static str {
    fn from(challenge: Challenge) -> Self {
        challenge.as_str()
    }
}

impl Challenge {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Http01 => "http-01",
            Challenge::Dns01 => "dns-01",
        }
    }
}

impl AcmeConfig {
    pub fn enabled(&self) -> bool {
        self.email.is_some()
    }

    /// The directory URL, with the Let's Encrypt aliases resolved.
    pub(crate) fn directory_url(&self) -> &str {
        match self.directory.as_str() {
            "production" => LETS_ENCRYPT,
            "staging" => LETS_ENCRYPT_STAGING,
            url => url,
        }
    }

    /// Checks the settings; `domain` is the relay's, which certificates are for.
    pub(crate) fn validate(&self, domain: Option<&str>, https_cert: bool) -> Result<(), SettingError> {
        let Some(email) = &self.email else { return Ok(()) };
        let unexpected =
            |key, value: &str, expected| SettingError::Unexpected { key, value: format!("{value:?}"), expected };
        if !email.contains('@') || email.contains([' ', ',']) {
            return Err(unexpected("acme.email", email, "one email address, like ops@example.com"));
        }
        if domain.is_none() {
            return Err(unexpected("acme.email", email, "a domain too (--domain): certificates are for its names"));
        }
        if https_cert {
            return Err(unexpected(
                "acme.email",
                email,
                "no https_cert: certificates come from the CA or from files, not both",
            ));
        }
        if !self.directory_url().starts_with("https://") {
            return Err(unexpected("acme.directory", &self.directory, "an https:// URL, production or staging"));
        }
        if self.challenge == Challenge::Dns01 && self.dns_hook.is_none() {
            let expected = "a dns_hook too: dns-01 publishes TXT records through it";
            return Err(unexpected("acme.challenge", self.challenge.as_str(), expected));
        }
        check_duration("acme.handshake_wait", self.handshake_wait, Duration::from_millis(100))
    }
}
