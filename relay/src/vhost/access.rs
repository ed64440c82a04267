//! Who may reach an HTTP tunnel: source ranges and basic auth, checked before a request
//! crosses the tunnel.

use std::net::IpAddr;

use base64::Engine;
use burrow_common::{HttpAccess, upgrade};
use hyper::{HeaderMap, header::AUTHORIZATION};
use subtle::ConstantTimeEq;

/// A tunnel's [`HttpAccess`], prepared for checking every request.
pub(crate) struct Access {
    allow: Vec<ipnet::IpNet>,
    deny: Vec<ipnet::IpNet>,
    /// SHA-256 of the whole `Authorization` header value a visitor must send: digests of
    /// equal length compare in constant time whatever the visitor sent.
    expected_authorization: Option<[u8; 32]>,
    /// Protocols besides WebSocket a visitor may switch to.
    upgrades: Vec<String>,
}

pub(crate) enum Denied {
    /// The visitor's address is outside the allowed ranges or inside a denied one.
    Address,
    /// Basic auth is required and was missing or wrong.
    Credentials,
}

impl Access {
    pub(crate) fn new(access: &HttpAccess) -> Self {
        let expected_authorization = access.basic_auth.as_ref().map(|credentials| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(credentials.expose().as_bytes());
            burrow_common::tls::sha256(format!("Basic {encoded}").as_bytes())
        });
        Self {
            allow: access.allow.clone(),
            deny: access.deny.clone(),
            expected_authorization,
            upgrades: access.upgrades.clone(),
        }
    }

    pub(crate) fn requires_credentials(&self) -> bool {
        self.expected_authorization.is_some()
    }

    /// Whether a request may switch protocols on this tunnel (see [`upgrade::permitted`]).
    pub(crate) fn may_switch(&self, headers: &HeaderMap) -> bool {
        upgrade::permitted(headers, &self.upgrades)
    }

    /// Whether the visitor's address may reach the tunnel at all; costs no credential check.
    pub(crate) fn check_address(&self, visitor: IpAddr) -> Result<(), Denied> {
        // An IPv4 visitor on a dual-stack socket arrives as ::ffff:a.b.c.d; ranges are
        // written in IPv4.
        let visitor = visitor.to_canonical();
        let allowed = self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&visitor));
        if !allowed || self.deny.iter().any(|net| net.contains(&visitor)) {
            return Err(Denied::Address);
        }
        Ok(())
    }

    /// Compares the request's credentials, when the tunnel needs any: the one step a guesser
    /// pays for, so the caller counts and paces it.
    pub(crate) fn check_credentials(&self, headers: &HeaderMap) -> Result<(), Denied> {
        if let Some(expected) = &self.expected_authorization {
            let sent = headers.get(AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
            if !bool::from(burrow_common::tls::sha256(sent).ct_eq(expected)) {
                return Err(Denied::Credentials);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(auth: Option<&str>, allow: &[&str], deny: &[&str]) -> Access {
        let nets = |list: &[&str]| list.iter().map(|n| n.parse().unwrap()).collect();
        Access::new(&HttpAccess {
            basic_auth: auth.map(burrow_common::Secret::new),
            allow: nets(allow),
            deny: nets(deny),
            upgrades: Vec::new(),
        })
    }

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn ranges_allow_and_deny() {
        let rules = access(None, &["10.0.0.0/8", "::1/128"], &["10.9.0.0/16"]);
        let ok = |ip: &str| rules.check_address(ip.parse().unwrap()).is_ok();
        assert!(ok("10.1.2.3"));
        assert!(ok("::ffff:10.1.2.3"), "a mapped IPv4 address is its IPv4 address");
        assert!(ok("::1"));
        assert!(!ok("10.9.1.1"), "deny wins over allow");
        assert!(!ok("192.0.2.1"), "outside every allowed range");
        assert!(access(None, &[], &["192.0.2.0/24"]).check_address("198.51.100.1".parse().unwrap()).is_ok());
    }

    #[test]
    fn basic_auth_must_match_exactly() {
        let rules = access(Some("alice:correct-horse"), &[], &[]);
        assert!(rules.check_credentials(&with_auth("Basic YWxpY2U6Y29ycmVjdC1ob3JzZQ==")).is_ok());
        assert!(matches!(rules.check_credentials(&with_auth("Basic YWxpY2U6d3Jvbmc=")), Err(Denied::Credentials)));
        assert!(matches!(rules.check_credentials(&HeaderMap::new()), Err(Denied::Credentials)));
    }
}
