//! Proxy URLs as users write them, read the way curl reads them: `http://` when no scheme is
//! given, port 1080 when none is, `user:password@` percent-decoded.

use std::{fmt, str::FromStr};

use burrow_common::Secret;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Credentials, Proxy, ProxyError, Scheme};
use crate::config::HostPort;

/// curl's default proxy port, for every scheme it shares with burrow.
pub(super) const DEFAULT_PORT: u16 = 1080;

/// What `user` and `password` must escape to stay one part of a URL.
pub(super) const USERINFO: &AsciiSet = &CONTROLS.add(b' ').add(b':').add(b'@').add(b'/').add(b'%');

/// The `proxy` setting: a proxy URL, or `none` / `off` to go straight even when the
/// environment names a proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxySetting {
    Off,
    Via(Proxy),
}

impl ProxySetting {
    /// The proxy this setting names, if any.
    pub fn proxy(&self) -> Option<&Proxy> {
        match self {
            ProxySetting::Off => None,
            ProxySetting::Via(proxy) => Some(proxy),
        }
    }
}

impl FromStr for ProxySetting {
    type Err = ProxyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "off" => Ok(ProxySetting::Off),
            _ => parse(s, "--proxy").map(ProxySetting::Via),
        }
    }
}

/// Parses a proxy URL; `origin` says where it was given, for later hints.
pub(super) fn parse(text: &str, origin: &'static str) -> Result<Proxy, ProxyError> {
    let invalid = |reason: &str| ProxyError::Invalid { value: masked(text), reason: reason.to_string() };
    let text = text.trim();
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("http".to_string(), text),
    };
    let scheme = match scheme.as_str() {
        "http" => Scheme::Http,
        "socks5" => Scheme::Socks5,
        "socks5h" => Scheme::Socks5h,
        "https" => {
            return Err(invalid(
                "https:// proxies (TLS to the proxy) are not supported: use http://, socks5:// or socks5h://",
            ));
        }
        _ => return Err(invalid("unknown scheme: use http://, socks5:// or socks5h://, or none")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(invalid("a proxy URL has no path: expected SCHEME://[USER:PASSWORD@]HOST[:PORT]"));
    }
    let (credentials, host_port) = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(credentials(userinfo).map_err(&invalid)?), host_port),
        None => (None, authority),
    };
    let (host, port) = host_and_port(host_port).map_err(invalid)?;
    Ok(Proxy { scheme, host, port, credentials, origin })
}

fn credentials(userinfo: &str) -> Result<Credentials, &'static str> {
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let decode = |part: &str| {
        percent_decode_str(part)
            .decode_utf8()
            .map(|text| text.into_owned())
            .map_err(|_| "the user and password must be UTF-8 once percent-decoded")
    };
    let user = decode(user)?;
    if user.is_empty() {
        return Err("the user is empty: expected USER:PASSWORD@ before the host");
    }
    Ok(Credentials { user, password: Secret::new(decode(password)?) })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn host_and_port(text: &str) -> Result<(String, u16), &'static str> {
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']').ok_or("unclosed [ in the host")?;
            host.parse::<std::net::Ipv6Addr>().map_err(|_| "expected an IPv6 address between [ and ]")?;
            (host, after.strip_prefix(':').or(if after.is_empty() { None } else { Some(after) }))
        }
        None => match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        },
    };
    if host.is_empty() {
        return Err("missing host: expected SCHEME://[USER:PASSWORD@]HOST[:PORT]");
    }
    let valid =
        text.starts_with('[') || host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !valid {
        return Err("the host may hold only letters, digits, '.', '-' and '_'; IPv6 addresses go in [ ]");
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => port.parse::<u16>().ok().filter(|p| *p != 0).ok_or("the port must be 1-65535")?,
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// `text` with the password of its `user:password@` part replaced by `***`.
pub(super) fn masked(text: &str) -> String {
    let (scheme, rest) = match text.find("://") {
        Some(at) => text.split_at(at + 3),
        None => ("", text),
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}{user}:***@{host}"),
            None => text.to_string(),
        },
        None => text.to_string(),
    }
}

impl Proxy {
    /// The whole URL, password included: only for the config layers, never for people.
    fn url_with_password(&self) -> String {
        let Some(credentials) = &self.credentials else { return self.to_string() };
        let encode = |part| percent_encoding::utf8_percent_encode(part, USERINFO).to_string();
        let (user, password) = (encode(&credentials.user), encode(credentials.password.expose()));
        format!("{}://{user}:{password}@{}", self.scheme.name(), HostPort(&self.host, self.port))
    }
}

impl fmt::Display for ProxySetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxySetting::Off => f.write_str("none"),
            ProxySetting::Via(proxy) => proxy.fmt(f),
        }
    }
}

impl<'de> Deserialize<'de> for ProxySetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The whole URL, like [`Secret`]: the config layers pass it on as text.
impl Serialize for ProxySetting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ProxySetting::Off => s.serialize_str("none"),
            ProxySetting::Via(proxy) => s.serialize_str(&proxy.url_with_password()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(text: &str) -> Proxy {
        match parse(text, "--proxy") {
            Ok(proxy) => proxy,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    fn error(text: &str) -> String {
        match text.parse::<ProxySetting>() {
            Ok(setting) => panic!("{text} parsed as {setting:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn schemes_hosts_and_default_ports_read_as_curl_reads_them() {
        for (text, scheme, host, port) in [
            ("http://proxy.corp:3128", Scheme::Http, "proxy.corp", 3128),
            ("http://proxy.corp", Scheme::Http, "proxy.corp", DEFAULT_PORT),
            ("HTTP://Proxy.Corp:80/", Scheme::Http, "proxy.corp", 80),
            ("proxy.corp:8080", Scheme::Http, "proxy.corp", 8080),
            ("socks5://10.0.0.1", Scheme::Socks5, "10.0.0.1", 1080),
            ("socks5h://[::1]:9050", Scheme::Socks5h, "::1", 9050),
            ("socks5h://[2001:db8::2]", Scheme::Socks5h, "2001:db8::2", 1080),
        ] {
            let parsed = proxy(text);
            assert_eq!((parsed.scheme, parsed.host.as_str(), parsed.port), (scheme, host, port), "{text}");
        }
        assert_eq!(proxy("socks5h://[::1]:9050").to_string(), "socks5h://[::1]:9050");
        assert_eq!(proxy("proxy.corp").to_string(), "http://proxy.corp:1080");
    }

    #[test]
    fn credentials_are_percent_decoded_and_only_the_user_is_shown() {
        let parsed = proxy("http://al%20ice:p%40ss%3Aw%2Frd@proxy.corp:3128");
        let credentials = parsed.credentials.as_ref().expect("the URL has credentials");
        assert_eq!(credentials.user, "al ice");
        assert_eq!(credentials.password.expose(), "p@ss:w/rd");
        assert_eq!(parsed.to_string(), "http://al%20ice@proxy.corp:3128");
        let debug = format!("{parsed:?}");
        assert!(!debug.contains("p@ss") && !debug.contains("p%40ss"), "{debug}");
        // The config layers pass the whole URL on; it must come back the same.
        let setting = ProxySetting::Via(parsed.clone());
        let text = serde_json::to_value(&setting).expect("a proxy serialises");
        let back: ProxySetting = serde_json::from_value(text).expect("and parses again");
        assert_eq!(back, setting);
        assert_eq!(proxy("socks5://bob@h").credentials.map(|c| c.password.expose().to_string()), Some(String::new()));
    }

    #[test]
    fn none_and_off_turn_proxies_off() {
        for text in ["none", "off", " OFF "] {
            assert!(matches!(text.parse::<ProxySetting>(), Ok(ProxySetting::Off)), "{text}");
        }
    }

    #[test]
    fn bad_urls_say_what_is_wrong_without_the_password() {
        for (text, words) in [
            ("https://proxy:443", &["https://", "not supported", "http://"][..]),
            ("ftp://proxy", &["unknown scheme", "socks5h://"]),
            ("socks4://proxy", &["unknown scheme"]),
            ("http://", &["missing host"]),
            ("http://:3128", &["missing host"]),
            ("http://proxy:0", &["port", "1-65535"]),
            ("http://proxy:99999", &["port"]),
            ("http://proxy:3128/path", &["no path"]),
            ("http://pro xy", &["host may hold only"]),
            ("http://[::1", &["unclosed"]),
            ("http://:hunter2@proxy", &["user is empty"]),
            ("http://alice:hunter2@proxy:x", &["port", "alice:***@proxy:x"]),
            ("gopher://alice:hunter2@proxy", &["unknown scheme", "alice:***@proxy"]),
        ] {
            let message = error(text);
            for word in words {
                assert!(message.contains(word), "{text}: {message} lacks {word}");
            }
            assert!(!message.contains("hunter2"), "{text}: {message} shows the password");
        }
    }
}
