//! Where each record lives in etcd, under the fleet's prefix `P`:
//!
//! | key | value | lease |
//! |---|---|---|
//! | `P tokens/<sha256 hex>` | the token's record (JSON) | none |
//! | `P token-names/<name>` | the token's sha256 hex: names are unique | none |
//! | `P places/<kind>/<name>` | the [`TunnelKey`] whose place it is (JSON) | none while held; a reservation's once released |
//! | `P held/<kind>/<name>/<lease hex>` | the holding relay's name | the holding relay's |
//! | `P tunnels/<token id>/<tunnel>` | the place's path (`port/20001`) | as its `places/` key |
//! | `P members/<lease hex>` | the relay (JSON) | the relay's |
//! | `P acme/certificates/<ca>/<name>` | a certificate and its key (JSON) | none |
//! | `P acme/orders/<ca>/<name>` | the ordering relay's lease, hex | the ordering relay's |
//! | `P acme/answers/http-01/<token>` | the key authorization | the ordering relay's |
//! | `P acme/answers/tls-alpn-01/<name>` | the key authorization's SHA-256, hex | the ordering relay's |
//!
//! No segment can hold a `/`: token ids and digests are hex, tunnel and token names are
//! [`is_valid_name`](burrow_common::protocol::is_valid_name), hostnames are DNS names, `<ca>`
//! is hex, and ACME tokens are base64url.

use crate::{
    claims::{Place, TunnelKey},
    store::ChallengeKey,
};

/// The keys of one fleet.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` starts and ends with `/` (checked with the config).
    pub(crate) fn new(prefix: &str) -> Self {
        Self { prefix: prefix.into() }
    }

    pub(crate) fn tokens(&self) -> String {
        format!("{}tokens/", self.prefix)
    }

    pub(crate) fn token(&self, digest: &[u8; 32]) -> String {
        format!("{}{}", self.tokens(), hex::encode(digest))
    }

    pub(crate) fn token_name(&self, name: &str) -> String {
        format!("{}token-names/{name}", self.prefix)
    }

    /// The prefix of every place's record.
    pub(crate) fn places(&self) -> String {
        format!("{}places/", self.prefix)
    }

    pub(crate) fn place(&self, place: &Place) -> String {
        format!("{}{}", self.places(), place_path(place))
    }

    /// The prefix of every `held/` key.
    pub(crate) fn held_all(&self) -> String {
        format!("{}held/", self.prefix)
    }

    /// The prefix of the `held/` keys of `place`: one per relay holding it.
    pub(crate) fn held_by_any(&self, place: &Place) -> String {
        format!("{}{}/", self.held_all(), place_path(place))
    }

    pub(crate) fn held(&self, place: &Place, lease: i64) -> String {
        format!("{}{lease:x}", self.held_by_any(place))
    }

    /// The prefix of the tunnels' indexes of the token `token_id`.
    pub(crate) fn tunnels_of(&self, token_id: &str) -> String {
        format!("{}tunnels/{token_id}/", self.prefix)
    }

    pub(crate) fn tunnel(&self, key: &TunnelKey) -> String {
        format!("{}{}", self.tunnels_of(&key.token_id), key.tunnel)
    }

    pub(crate) fn members(&self) -> String {
        format!("{}members/", self.prefix)
    }

    pub(crate) fn member(&self, lease: i64) -> String {
        format!("{}members/{lease:x}", self.prefix)
    }

    pub(crate) fn acme_certificate(&self, id: &str) -> String {
        format!("{}acme/certificates/{id}", self.prefix)
    }

    pub(crate) fn acme_order(&self, id: &str) -> String {
        format!("{}acme/orders/{id}", self.prefix)
    }

    pub(crate) fn acme_answer(&self, challenge: &ChallengeKey) -> String {
        match challenge {
            ChallengeKey::Http(token) => format!("{}acme/answers/http-01/{token}", self.prefix),
            ChallengeKey::TlsAlpn(name) => format!("{}acme/answers/tls-alpn-01/{name}", self.prefix),
        }
    }
}

/// `port/20001`, `udp/20001`, `sub/myapp` or `host/app.example.org`.
pub(crate) fn place_path(place: &Place) -> String {
    match place {
        Place::Port(port) => format!("port/{port}"),
        Place::UdpPort(port) => format!("udp/{port}"),
        Place::Subdomain(name) => format!("sub/{name}"),
        Place::Hostname(host) => format!("host/{host}"),
    }
}

/// The place a [`place_path`] names.
pub(crate) fn place_from_path(path: &str) -> Option<Place> {
    let (kind, name) = path.split_once('/')?;
    let valid_name = !name.is_empty() && !name.contains('/');
    match kind {
        "port" => name.parse().ok().map(Place::Port),
        "udp" => name.parse().ok().map(Place::UdpPort),
        "sub" if valid_name => Some(Place::Subdomain(name.into())),
        "host" if valid_name => Some(Place::Hostname(name.into())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_round_trip_through_their_paths() {
        for place in [
            Place::Port(20001),
            Place::UdpPort(20001),
            Place::Subdomain("myapp".into()),
            Place::Hostname("app.example.org".into()),
        ] {
            assert_eq!(place_from_path(&place_path(&place)), Some(place));
        }
        for bad in ["port/x", "port/", "sub/", "sub/a/b", "tcp/1", "port"] {
            assert_eq!(place_from_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn one_place_is_never_a_prefix_of_another() {
        let keys = Keys::new("/burrow/");
        assert_eq!(keys.held(&Place::Port(2000), 0xab), "/burrow/held/port/2000/ab");
        assert!(!keys.held(&Place::Port(20001), 1).starts_with(&keys.held_by_any(&Place::Port(2000))));
        assert_eq!(keys.tunnel(&TunnelKey::of("0a1b", "web")), "/burrow/tunnels/0a1b/web");
    }
}
