//! What a claim is on, and whose it is: the words both the claims table and the store use.
//! Their serde shape is the reservation file's format.

use serde::{Deserialize, Serialize};

/// A token and a tunnel name: what holds a claim and owns a reservation.
///
/// Two keys are the same tunnel when their token *id* and tunnel name are: a token added
/// again under a revoked token's name is another token, and inherits none of its places.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TunnelKey {
    /// The token's name, for people (metrics, the admin API); not part of the identity.
    pub(crate) token: String,
    /// The token's id (see [`crate::tokens::Grant::id`]). Empty only in a reservation file
    /// written before keys had ids, until the store maps it.
    #[serde(default)]
    pub(crate) token_id: String,
    pub(crate) tunnel: String,
}

impl TunnelKey {
    pub(crate) fn new(grant: &crate::tokens::Grant, tunnel: &str) -> Self {
        Self { token: grant.name.clone(), token_id: grant.id.clone(), tunnel: tunnel.into() }
    }

    /// A key whose token id is its name, for tests.
    #[cfg(test)]
    pub(crate) fn of(token: &str, tunnel: &str) -> Self {
        Self { token: token.into(), token_id: token.into(), tunnel: tunnel.into() }
    }
}

impl PartialEq for TunnelKey {
    fn eq(&self, other: &Self) -> bool {
        self.token_id == other.token_id && self.tunnel == other.tunnel
    }
}

impl Eq for TunnelKey {}

impl std::hash::Hash for TunnelKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.token_id.hash(state);
        self.tunnel.hash(state);
    }
}

/// A public name a tunnel can hold on the relay: a TCP port, a UDP port (a number space of
/// its own), a subdomain of its domain, or a custom hostname (a whole DNS name outside the
/// domain, lowercase, that the holder's token allows).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Place {
    Port(u16),
    #[serde(rename = "udp_port")]
    UdpPort(u16),
    Subdomain(String),
    Hostname(String),
}

/// Which of the two port number spaces a port tunnel claims in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortSpace {
    Tcp,
    Udp,
}

impl PortSpace {
    pub(crate) fn place(self, port: u16) -> Place {
        match self {
            PortSpace::Tcp => Place::Port(port),
            PortSpace::Udp => Place::UdpPort(port),
        }
    }

    /// The port of `place` if it is one of this space.
    pub(crate) fn port_of(self, place: &Place) -> Option<u16> {
        match (self, place) {
            (PortSpace::Tcp, Place::Port(port)) | (PortSpace::Udp, Place::UdpPort(port)) => Some(*port),
            _ => None,
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Port(port) => write!(f, "port {port}"),
            Place::UdpPort(port) => write!(f, "UDP port {port}"),
            Place::Subdomain(name) => write!(f, "subdomain {name}"),
            Place::Hostname(host) => write!(f, "hostname {host}"),
        }
    }
}
