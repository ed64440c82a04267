//! Which place a hostname names: a subdomain of the relay's domain, a custom hostname, or
//! nothing a tunnel can hold (the relay's own names). Routing (Host, SNI), claims and
//! certificates all ask here, so they agree on what a name is.

use burrow_common::PublicName;

use super::{Vhost, names};
use crate::claims::Place;

impl Vhost {
    /// The place a Host header or SNI value names: `myapp.DOMAIN` is the subdomain `myapp`,
    /// any other valid hostname outside the domain is a custom hostname. The bare domain,
    /// the relay's own names, deeper names under the domain and what is not a hostname at all
    /// name no place.
    pub(crate) fn place_of(&self, host: &str) -> Option<Place> {
        place_of(host, &self.domain, &self.own_names)
    }

    /// The place an agent asks for by name, or why it cannot have it. A hostname under the
    /// relay's domain is that subdomain; the subdomain's own checks (valid, not reserved)
    /// are the caller's.
    pub(crate) fn place_asked(&self, name: &PublicName) -> Result<Place, names::NameError> {
        place_asked(name, &self.domain, &self.own_names)
    }

    /// The hostname visitors use for `place`, if it is a name.
    pub(crate) fn host_of(&self, place: &Place) -> Option<String> {
        match place {
            Place::Subdomain(label) => Some(format!("{label}.{}", self.domain)),
            Place::Hostname(host) => Some(host.clone()),
            Place::Port(_) | Place::UdpPort(_) => None,
        }
    }

    /// Whether `host` (lowercase) is the relay's domain or one of its own names.
    pub(crate) fn is_own(&self, host: &str) -> bool {
        host == self.domain || self.own_names.iter().any(|own| own == host)
    }
}

fn place_of(host: &str, domain: &str, own_names: &[String]) -> Option<Place> {
    let host = names::request_host(host)?;
    if host == domain || own_names.contains(&host) {
        return None;
    }
    if let Some(label) = names::subdomain_of(&host, domain) {
        return Some(Place::Subdomain(label.to_string()));
    }
    // Deeper names under the domain are the operator's, not anyone's custom hostname.
    if host.strip_suffix(domain).is_some_and(|rest| rest.ends_with('.')) {
        return None;
    }
    names::check_hostname(&host).ok().map(Place::Hostname)
}

fn place_asked(name: &PublicName, domain: &str, own_names: &[String]) -> Result<Place, names::NameError> {
    let host = match name {
        PublicName::Subdomain(label) => return Ok(Place::Subdomain(label.clone())),
        PublicName::Hostname(host) => names::check_hostname(host)?,
    };
    if host == domain || own_names.contains(&host) {
        return Err(names::NameError::RelayName(host));
    }
    // `None` here is a name under the domain, but more than one label deep.
    place_of(&host, domain, own_names).ok_or(names::NameError::Invalid(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = "relay.example.com";

    fn place(host: &str) -> Option<Place> {
        place_of(host, DOMAIN, &["relay.example.net".to_string()])
    }

    #[test]
    fn a_name_one_label_under_the_domain_is_a_subdomain() {
        let myapp = Some(Place::Subdomain("myapp".into()));
        for host in ["myapp.relay.example.com", "MyApp.Relay.Example.com:8443", "myapp.relay.example.com."] {
            assert_eq!(place(host), myapp, "{host}");
        }
    }

    #[test]
    fn other_hostnames_are_custom_hostnames() {
        let custom = Some(Place::Hostname("app.example.org".into()));
        for host in ["app.example.org", "APP.example.org:443", "app.example.org."] {
            assert_eq!(place(host), custom, "{host}");
        }
        // Beside the domain, not under it.
        assert_eq!(place("evilrelay.example.com"), Some(Place::Hostname("evilrelay.example.com".into())));
        assert_eq!(place("example.com"), Some(Place::Hostname("example.com".into())));
    }

    #[test]
    fn an_asked_hostname_is_a_custom_hostname_or_a_subdomain() {
        let own = ["relay.example.net".to_string()];
        let asked = |name: PublicName| place_asked(&name, DOMAIN, &own);
        let hostname = |host: &str| PublicName::Hostname(host.into());
        assert_eq!(asked(hostname("App.Example.org")), Ok(Place::Hostname("app.example.org".into())));
        assert_eq!(asked(hostname("myapp.relay.example.com")), Ok(Place::Subdomain("myapp".into())));
        assert_eq!(asked(PublicName::Subdomain("myapp".into())), Ok(Place::Subdomain("myapp".into())));
        assert_eq!(asked(hostname("relay.example.net")), Err(names::NameError::RelayName("relay.example.net".into())));
        assert_eq!(asked(hostname("relay.example.com")), Err(names::NameError::RelayName("relay.example.com".into())));
        assert_eq!(
            asked(hostname("a.b.relay.example.com")),
            Err(names::NameError::Invalid("a.b.relay.example.com".into()))
        );
        assert_eq!(
            asked(hostname("app_1.example.org")),
            Err(names::NameError::InvalidHostname("app_1.example.org".into()))
        );
    }

    #[test]
    fn the_relays_own_names_and_non_hostnames_name_no_place() {
        for host in [
            "relay.example.com",
            "Relay.Example.com:80",
            "relay.example.net",
            "a.b.relay.example.com",
            "localhost",
            "192.0.2.7",
            "[::1]:8080",
            "under_score.example.org",
            "",
            "bad host",
        ] {
            assert_eq!(place(host), None, "{host:?}");
        }
    }
}
