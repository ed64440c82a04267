//! Which proxy, if any, leads to the relay: the `proxy` setting, or else the environment's
//! `https_proxy` and `all_proxy` (lowercase first, as curl reads them) unless `no_proxy`
//! names the relay.

use std::net::IpAddr;

use super::{Proxy, ProxyError, ProxySetting, setting};

/// Variables naming a proxy for TLS connections, in the order they are read.
const PROXY_VARIABLES: [&str; 4] = ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];
const NO_PROXY_VARIABLES: [&str; 2] = ["no_proxy", "NO_PROXY"];

/// The proxy to reach `relay_host` through: `explicit` when given (`none` meaning no proxy
/// at all), else the first proxy variable `env` sets, unless `no_proxy` exempts the relay.
pub fn from_settings(
    explicit: Option<&ProxySetting>,
    relay_host: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Proxy>, ProxyError> {
    if let Some(setting) = explicit {
        return Ok(setting.proxy().cloned());
    }
    let set = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    let Some((variable, url)) = PROXY_VARIABLES.iter().find_map(|name| set(name).map(|url| (*name, url))) else {
        return Ok(None);
    };
    if NO_PROXY_VARIABLES.iter().find_map(|name| set(name)).is_some_and(|list| exempts(&list, relay_host)) {
        return Ok(None);
    }
    let proxy = setting::parse(&url, variable)
        .map_err(|source| ProxyError::Environment { variable, source: Box::new(source) })?;
    Ok(Some(proxy))
}

/// Whether the `no_proxy` list exempts `host`: `*`, the host itself, a domain it is in
/// (`example.com` or `.example.com`), its IP address or a CIDR range holding it; case does
/// not matter and a port after an entry is ignored.
pub(super) fn exempts(list: &str, host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase();
    let host_ip = host.parse::<IpAddr>().ok();
    list.split(',').map(str::trim).filter(|entry| !entry.is_empty()).any(|entry| {
        if entry == "*" {
            return true;
        }
        let entry = without_port(entry).to_ascii_lowercase();
        match host_ip {
            Some(ip) => {
                entry.parse::<IpAddr>().is_ok_and(|listed| listed == ip)
                    || entry.parse::<ipnet::IpNet>().is_ok_and(|range| range.contains(&ip))
            }
            None => {
                let domain = entry.trim_start_matches("*.").trim_start_matches('.').trim_end_matches('.');
                !domain.is_empty()
                    && (host == domain || host.strip_suffix(domain).is_some_and(|sub| sub.ends_with('.')))
            }
        }
    })
}

/// `host:port` without its port; `[v6]:port` and `[v6]` without brackets; a bare IPv6
/// address as it is.
fn without_port(entry: &str) -> &str {
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    match entry.split_once(':') {
        Some((host, port)) if !port.contains(':') => host,
        _ => entry,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn chosen(explicit: Option<&str>, vars: &[(&str, &str)], relay: &str) -> Option<String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let explicit = explicit.map(|text| text.parse::<ProxySetting>().expect("a valid setting"));
        let proxy = from_settings(explicit.as_ref(), relay, |name| vars.get(name).cloned()).expect("a valid choice");
        proxy.map(|p| p.to_string())
    }

    #[test]
    fn the_explicit_setting_wins_and_none_ignores_the_environment() {
        let env = [("HTTPS_PROXY", "http://env:3128"), ("NO_PROXY", "*")];
        assert_eq!(chosen(Some("socks5://flag:1"), &env, "relay.example.com").as_deref(), Some("socks5://flag:1"));
        assert_eq!(chosen(Some("none"), &env, "relay.example.com"), None);
        assert_eq!(chosen(None, &env, "relay.example.com"), None, "no_proxy = * exempts every host");
    }

    #[test]
    fn https_proxy_comes_before_all_proxy_and_lowercase_first() {
        let relay = "relay.example.com";
        let all = [("ALL_PROXY", "socks5h://all:1"), ("all_proxy", "socks5h://all-lower:1")];
        assert_eq!(chosen(None, &all, relay).as_deref(), Some("socks5h://all-lower:1"));
        let both = [("ALL_PROXY", "socks5h://all:1"), ("HTTPS_PROXY", "http://https:2")];
        assert_eq!(chosen(None, &both, relay).as_deref(), Some("http://https:2"));
        let cases = [("HTTPS_PROXY", "http://upper:2"), ("https_proxy", "http://lower:2")];
        assert_eq!(chosen(None, &cases, relay).as_deref(), Some("http://lower:2"));
        let empty = [("https_proxy", " "), ("ALL_PROXY", "http://all:3")];
        assert_eq!(chosen(None, &empty, relay).as_deref(), Some("http://all:3"), "an empty variable is unset");
        assert_eq!(chosen(None, &[("http_proxy", "http://plain:1")], relay), None, "http_proxy is for http:// only");
    }

    #[test]
    fn a_bad_url_in_the_environment_names_the_variable_and_hides_the_password() {
        let err = from_settings(None, "relay", |name| (name == "ALL_PROXY").then(|| "https://u:hunter2@p".into()))
            .expect_err("https:// is refused");
        let message =
            format!("{err}: {}", std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default());
        assert!(message.contains("ALL_PROXY") && message.contains("not supported"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn no_proxy_matches_hosts_domains_addresses_and_ranges() {
        let list = " Example.COM, .corp.internal,10.1.2.3 , 192.168.0.0/16,[::1]:443, localhost:8080, *.wild.test";
        for host in [
            "example.com",
            "relay.example.com",
            "EXAMPLE.com.",
            "corp.internal",
            "a.b.corp.internal",
            "10.1.2.3",
            "192.168.7.9",
            "::1",
            "[::1]",
            "localhost",
            "x.wild.test",
        ] {
            assert!(exempts(list, host), "{host} should be exempt");
        }
        for host in ["notexample.com", "example.com.evil", "internal", "10.1.2.4", "172.16.0.1", "::2", "relay"] {
            assert!(!exempts(list, host), "{host} should go through the proxy");
        }
        assert!(exempts("a, *", "anything"));
        assert!(!exempts("", "anything"));
        assert!(!exempts(" , ", "anything"));
    }
}
