//! What a claim is on, and whose it is: the words both the claims table and the store use.
//! Their serde shape is the reservation file's format.

use serde::{Deserialize, Serialize};

/// A token name and a tunnel name: what holds a claim and owns a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct TunnelKey {
    pub(crate) token: String,
    pub(crate) tunnel: String,
}

/// A public name a tunnel can hold on the relay: a TCP port, or a subdomain of its domain.
/// UDP ports and custom hostnames are further variants.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Place {
    Port(u16),
    Subdomain(String),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Port(port) => write!(f, "port {port}"),
            Place::Subdomain(name) => write!(f, "subdomain {name}"),
        }
    }
}
