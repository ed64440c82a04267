//! Hostnames of HTTP tunnels: the subdomain or custom hostname an agent may hold, the host a
//! request asks for, and the match between the two under the relay's domain.

use std::net::Ipv6Addr;

use rand::Rng;

/// Why an agent cannot hold the subdomain it asked for; the agent shows this to its user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum NameError {
    #[error("{0:?} is not a valid subdomain: use 1-63 letters, digits or '-', not starting or ending with '-'")]
    Invalid(String),
    #[error("{0:?} is reserved on this relay; choose another name")]
    Reserved(String),
    #[error(
        "{0:?} is not a valid hostname: use a full DNS name like app.example.org (labels of 1-63 letters, digits or '-')"
    )]
    InvalidHostname(String),
    #[error("{0:?} is this relay's own name; ask for a subdomain of it or a hostname of your own")]
    RelayName(String),
}

/// The longest label DNS allows (RFC 1035, section 2.3.4).
const MAX_LABEL_LEN: usize = 63;
/// The longest name DNS allows, written out without the trailing dot.
const MAX_HOST_LEN: usize = 253;

/// Checks that `name` can be a label under the relay's domain and that the operator has not
/// kept it; returns it lowercased, the form every later comparison uses.
pub(crate) fn check_subdomain(name: &str, reserved: &[String]) -> Result<String, NameError> {
    let label = name.to_ascii_lowercase();
    if !is_subdomain_label(&label) {
        return Err(NameError::Invalid(name.into()));
    }
    if reserved.iter().any(|kept| kept.eq_ignore_ascii_case(&label)) {
        return Err(NameError::Reserved(label));
    }
    Ok(label)
}

/// Checks that `name` is a full DNS name a tunnel could be reached at (two labels at least,
/// letters, digits and inner hyphens, not an IPv4 address); returns it lowercased.
pub(crate) fn check_hostname(name: &str) -> Result<String, NameError> {
    let host = name.to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let valid = host.len() <= MAX_HOST_LEN
        && labels.len() >= 2
        && labels.iter().all(|label| is_subdomain_label(label))
        // A numeric top label is an address, never a name; no TLD is all digits.
        && labels.last().is_some_and(|top| !top.bytes().all(|b| b.is_ascii_digit()));
    if valid { Ok(host) } else { Err(NameError::InvalidHostname(name.into())) }
}

fn is_subdomain_label(label: &str) -> bool {
    (1..=MAX_LABEL_LEN).contains(&label.len())
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The hostname a request asks for, from its Host header or SNI: lowercased, without the port
/// or a trailing dot. IPv6 literals keep their brackets, so they can never equal a tunnel's
/// hostname. `None` when the value is not a hostname, so nothing downstream sees its bytes.
pub(crate) fn request_host(header: &str) -> Option<String> {
    let (host, port) = split_port(header.trim())?;
    // RFC 3986 allows an empty port; anything but digits after the colon is not a port.
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let host = match host.strip_prefix('[').and_then(|literal| literal.strip_suffix(']')) {
        Some(address) => address.parse::<Ipv6Addr>().is_ok().then_some(host)?,
        None => {
            let host = host.strip_suffix('.').unwrap_or(host);
            is_hostname(host).then_some(host)?
        }
    };
    Some(host.to_ascii_lowercase())
}

/// Splits "host:port" (the port possibly absent or empty), keeping an IPv6 literal's colons
/// inside its brackets.
fn split_port(authority: &str) -> Option<(&str, &str)> {
    if authority.starts_with('[') {
        let (literal, rest) = authority.split_at(authority.find(']')? + 1);
        let port = if rest.is_empty() { rest } else { rest.strip_prefix(':')? };
        return Some((literal, port));
    }
    Some(authority.split_once(':').unwrap_or((authority, "")))
}

/// Dot-separated labels of letters, digits, '-' and '_' (which some real hosts carry).
fn is_hostname(host: &str) -> bool {
    (1..=MAX_HOST_LEN).contains(&host.len())
        && host.split('.').all(|label| {
            (1..=MAX_LABEL_LEN).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The single label in front of `domain` in `host`, both lowercase: the tunnel's subdomain.
/// The bare domain, deeper names and other domains have none.
pub(crate) fn subdomain_of<'a>(host: &'a str, domain: &str) -> Option<&'a str> {
    if domain.is_empty() {
        return None;
    }
    // Requiring the dot is what keeps "evilrelay.example.com" out of "relay.example.com".
    let label = host.strip_suffix(domain)?.strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then_some(label)
}

/// Names an operator keeps for itself: its own services on the domain, names a visitor would
/// take for the operator's (a phishing page at login.… or admin.…), and the hosts mail clients
/// probe on their own and trust with credentials.
const DEFAULT_RESERVED: [&str; 12] = [
    "www",
    "api",
    "admin",
    "relay",
    "status",
    "dashboard",
    "auth",
    "login",
    "static",
    "mail",
    "autoconfig",
    "autodiscover",
];

pub(crate) fn default_reserved() -> Vec<String> {
    DEFAULT_RESERVED.map(String::from).into()
}

const ADJECTIVES: [&str; 64] = [
    "amber", "bold", "brave", "breezy", "bright", "brisk", "calm", "clever", "cosy", "crisp", "curious", "dapper",
    "eager", "early", "fair", "fancy", "fluffy", "gentle", "glad", "golden", "happy", "hardy", "honest", "humble",
    "jolly", "keen", "kind", "lively", "lucky", "merry", "mighty", "misty", "modest", "nimble", "noble", "plucky",
    "polite", "proud", "quick", "quiet", "rapid", "ready", "rosy", "rustic", "shiny", "silver", "sleek", "smart",
    "snowy", "spry", "steady", "sunny", "swift", "tidy", "trusty", "upbeat", "valiant", "vivid", "warm", "wise",
    "witty", "zesty", "zippy", "cheery",
];

const NOUNS: [&str; 64] = [
    "acorn", "badger", "beaver", "birch", "bison", "camel", "canyon", "cedar", "comet", "crane", "dolphin", "eagle",
    "falcon", "ferret", "finch", "fox", "gecko", "hare", "harbour", "heron", "ibis", "koala", "lemur", "llama", "lynx",
    "magpie", "maple", "marten", "meadow", "moose", "newt", "otter", "owl", "panda", "parrot", "pebble", "pelican",
    "penguin", "puffin", "quail", "rabbit", "raven", "river", "robin", "salmon", "seal", "sparrow", "stoat", "swan",
    "tiger", "toucan", "turtle", "vole", "walrus", "whale", "willow", "wombat", "wren", "yak", "zebra", "orchid",
    "island", "glacier", "lantern",
];

/// The symbols of a random name's last part: lowercase letters and digits, without 0, o, 1
/// and l, which read alike.
const SUFFIX_ALPHABET: &[u8; 32] = b"23456789abcdefghijkmnpqrstuvwxyz";
const SUFFIX_LEN: usize = 8;

/// The randomness of one name: enough that a stranger cannot find a tunnel by guessing names
/// (2^52 of them, against the relay's pace for unknown names), while the words keep it
/// readable.
const RANDOM_NAME_BITS: u32 =
    ADJECTIVES.len().ilog2() + NOUNS.len().ilog2() + SUFFIX_LEN as u32 * SUFFIX_ALPHABET.len().ilog2();
// A shorter list or suffix would not build.
const _: () = assert!(RANDOM_NAME_BITS >= 48, "random names need at least 48 random bits");

/// A name for an agent that asked for none, easy to read aloud: "brave-otter-k3x9m2qa".
pub(crate) fn random_subdomain() -> String {
    let mut rng = rand::rng();
    let adjective = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
    let noun = NOUNS[rng.random_range(0..NOUNS.len())];
    let suffix: String =
        (0..SUFFIX_LEN).map(|_| char::from(SUFFIX_ALPHABET[rng.random_range(0..SUFFIX_ALPHABET.len())])).collect();
    format!("{adjective}-{noun}-{suffix}")
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn valid_labels_are_accepted_and_lowercased() {
        for (name, expected) in
            [("myapp", "myapp"), ("My-App", "my-app"), ("a", "a"), ("0", "0"), ("a-b-1", "a-b-1"), ("a--b", "a--b")]
        {
            assert_eq!(check_subdomain(name, &[]), Ok(expected.to_string()), "{name}");
        }
        let longest = "a".repeat(63);
        assert_eq!(check_subdomain(&longest, &[]), Ok(longest.clone()));
    }

    #[test]
    fn invalid_labels_are_refused() {
        let too_long = "a".repeat(64);
        for name in ["", "a_b", "-a", "a-", "-", "a.b", "a b", "é", "my/app", too_long.as_str()] {
            assert_eq!(check_subdomain(name, &[]), Err(NameError::Invalid(name.into())), "{name:?}");
        }
    }

    #[test]
    fn reserved_names_are_refused_whatever_their_case() {
        let reserved = default_reserved();
        assert_eq!(check_subdomain("WWW", &reserved), Err(NameError::Reserved("www".into())));
        assert_eq!(check_subdomain("api", &reserved), Err(NameError::Reserved("api".into())));
        let upper_list = vec!["Admin".to_string()];
        assert_eq!(check_subdomain("admin", &upper_list), Err(NameError::Reserved("admin".into())));
        assert!(check_subdomain("myapp", &reserved).is_ok());
    }

    #[test]
    fn errors_read_as_sentences_for_the_agent_user() {
        let invalid = check_subdomain("My_App", &[]).unwrap_err().to_string();
        assert_eq!(
            invalid,
            "\"My_App\" is not a valid subdomain: use 1-63 letters, digits or '-', not starting or ending with '-'"
        );
        let reserved = check_subdomain("www", &default_reserved()).unwrap_err().to_string();
        assert_eq!(reserved, "\"www\" is reserved on this relay; choose another name");
    }

    #[test]
    fn default_reserved_names_are_valid_lowercase_labels() {
        let reserved = default_reserved();
        for required in ["www", "api", "admin"] {
            assert!(reserved.iter().any(|name| name == required), "{required}");
        }
        assert!(reserved.iter().all(|name| is_subdomain_label(name)));
    }

    #[test]
    fn hostnames_are_full_dns_names() {
        for (name, expected) in [("App.Example.org", "app.example.org"), ("a.b.c.example.co.uk", "a.b.c.example.co.uk")]
        {
            assert_eq!(check_hostname(name), Ok(expected.to_string()), "{name}");
        }
        let too_long = format!("{}.example.org", vec!["a".repeat(63); 4].join("."));
        for name in [
            "",
            "localhost",
            "example.org.",
            ".example.org",
            "a..b",
            "a_b.example.org",
            "-a.example.org",
            "192.0.2.7",
            "*.example.org",
            too_long.as_str(),
        ] {
            assert_eq!(check_hostname(name), Err(NameError::InvalidHostname(name.into())), "{name:?}");
        }
    }

    #[test]
    fn request_host_is_lowercased_without_port_or_trailing_dot() {
        for (header, expected) in [
            ("MyApp.Relay.Example.com:8443", "myapp.relay.example.com"),
            ("myapp.relay.example.com", "myapp.relay.example.com"),
            ("myapp.relay.example.com.", "myapp.relay.example.com"),
            ("myapp.relay.example.com.:80", "myapp.relay.example.com"),
            ("myapp.relay.example.com:", "myapp.relay.example.com"),
            ("  localhost ", "localhost"),
            ("192.0.2.7:8880", "192.0.2.7"),
            ("[::1]:8880", "[::1]"),
            ("[2001:DB8::1]", "[2001:db8::1]"),
        ] {
            assert_eq!(request_host(header).as_deref(), Some(expected), "{header:?}");
        }
    }

    #[test]
    fn request_host_refuses_what_is_not_a_hostname() {
        for header in [
            "",
            " ",
            ".",
            ":80",
            "a..b",
            ".example.com",
            "example.com:http",
            "example.com:80:80",
            "::1",
            "[::1",
            "[::1]x",
            "[not-ip]:80",
            "<script>.example.com",
            "a b.example.com",
            "user@example.com",
        ] {
            assert_eq!(request_host(header), None, "{header:?}");
        }
    }

    #[test]
    fn subdomain_is_the_one_label_under_the_domain() {
        let domain = "relay.example.com";
        assert_eq!(subdomain_of("myapp.relay.example.com", domain), Some("myapp"));
        assert_eq!(subdomain_of("relay.example.com", domain), None, "bare domain");
        assert_eq!(subdomain_of(".relay.example.com", domain), None, "empty label");
        assert_eq!(subdomain_of("a.b.relay.example.com", domain), None, "deeper name");
        assert_eq!(subdomain_of("myapp.other.example.com", domain), None, "other domain");
        assert_eq!(subdomain_of("evilrelay.example.com", domain), None, "suffix without a dot");
        assert_eq!(subdomain_of("myapp.evilrelay.example.com", domain), None);
        assert_eq!(subdomain_of("[::1]", domain), None);
        assert_eq!(subdomain_of("myapp.", ""), None, "no domain configured");
    }

    #[test]
    fn random_names_are_valid_and_varied() {
        let reserved = default_reserved();
        let names: Vec<String> = (0..1000).map(|_| random_subdomain()).collect();
        for name in &names {
            assert_eq!(check_subdomain(name, &reserved).as_ref(), Ok(name), "{name}");
            let parts: Vec<&str> = name.split('-').collect();
            assert!(matches!(parts.as_slice(), [_, _, suffix] if suffix.len() == SUFFIX_LEN), "{name}");
        }
        let distinct: HashSet<&String> = names.iter().collect();
        assert!(distinct.len() > 990, "only {} distinct names in 1000", distinct.len());
    }

    #[test]
    fn random_names_carry_at_least_48_bits() {
        // Each list's length is a power of two, so every draw carries exactly its log2.
        for len in [ADJECTIVES.len(), NOUNS.len(), SUFFIX_ALPHABET.len()] {
            assert!(len.is_power_of_two(), "{len}");
        }
        assert_eq!(RANDOM_NAME_BITS, 52, "6 + 6 + 8 * 5; at least 48 is also checked at build");
        assert_eq!(SUFFIX_ALPHABET.iter().collect::<HashSet<_>>().len(), SUFFIX_ALPHABET.len());
        assert!(!SUFFIX_ALPHABET.iter().any(|b| b"0o1l".contains(b)), "no symbols that read alike");
        for _ in 0..200 {
            let name = random_subdomain();
            let parts: Vec<&str> = name.split('-').collect();
            let [adjective, noun, suffix] = parts.as_slice() else { panic!("three parts: {name}") };
            assert!(ADJECTIVES.contains(adjective) && NOUNS.contains(noun), "{name}");
            assert!(suffix.len() == SUFFIX_LEN && suffix.bytes().all(|b| SUFFIX_ALPHABET.contains(&b)), "{name}");
        }
    }

    #[test]
    fn word_lists_are_distinct_lowercase_words() {
        for list in [&ADJECTIVES, &NOUNS] {
            assert!(list.iter().all(|word| !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase())));
            assert_eq!(list.iter().collect::<HashSet<_>>().len(), list.len(), "a word is listed twice");
        }
    }

    proptest! {
        #[test]
        fn every_rfc_1035_label_is_accepted(label in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?") {
            prop_assert_eq!(check_subdomain(&label, &[]), Ok(label.clone()));
            let host = format!("{label}.relay.example.com");
            prop_assert_eq!(subdomain_of(&host, "relay.example.com"), Some(label.as_str()));
        }

        #[test]
        fn request_host_returns_only_safe_bytes(header in any::<String>()) {
            if let Some(host) = request_host(&header) {
                let safe = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.:[]".contains(&b);
                prop_assert!(host.bytes().all(safe), "{host:?}");
            }
        }

        #[test]
        fn request_host_is_idempotent(header in "[a-zA-Z0-9.:_\\[\\]-]{0,40}") {
            if let Some(host) = request_host(&header) {
                prop_assert_eq!(request_host(&host), Some(host.clone()));
            }
        }
    }
}
