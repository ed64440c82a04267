//! Which custom hostnames a token may claim: `app.example.org,*.dev.example.org`. A pattern
//! is a full DNS name; a leading `*.` stands for exactly one more label, as in a TLS
//! wildcard certificate. A token allows no custom hostname unless it lists some.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::vhost;

/// One allowed hostname, or every name one label under it when it starts with `*.`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPattern {
    /// Lowercase; a valid hostname, or `*.` and one.
    text: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid hostname pattern {0:?}: expected a full DNS name like app.example.org, or *.example.org for any one label under it"
)]
pub struct HostPatternError(String);

impl HostPattern {
    /// Whether `host` (a valid lowercase hostname) is one of the names this pattern allows.
    pub fn matches(&self, host: &str) -> bool {
        match self.text.strip_prefix("*.") {
            None => self.text == host,
            Some(parent) => host
                .strip_suffix(parent)
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

impl std::str::FromStr for HostPattern {
    type Err = HostPatternError;

    fn from_str(text: &str) -> Result<Self, HostPatternError> {
        let text = text.trim().to_ascii_lowercase();
        let name = text.strip_prefix("*.").unwrap_or(&text);
        match vhost::check_hostname(name) {
            Ok(_) => Ok(Self { text }),
            Err(_) => Err(HostPatternError(text)),
        }
    }
}

impl TryFrom<String> for HostPattern {
    type Error = HostPatternError;

    fn try_from(text: String) -> Result<Self, HostPatternError> {
        text.parse()
    }
}

impl From<HostPattern> for String {
    fn from(pattern: HostPattern) -> String {
        pattern.text
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{describe_list, parse_list};

    fn patterns(text: &str) -> Vec<HostPattern> {
        parse_list::<HostPattern>(text).expect("valid patterns")
    }

    fn allowed(patterns: &[HostPattern], host: &str) -> bool {
        patterns.iter().any(|p| p.matches(host))
    }

    #[test]
    fn an_exact_pattern_allows_that_name_only() {
        let list = patterns("app.example.org");
        assert!(allowed(&list, "app.example.org"));
        for other in ["example.org", "x.app.example.org", "app.example.org.evil", "myapp.example.org", "app.example"] {
            assert!(!allowed(&list, other), "{other}");
        }
    }

    #[test]
    fn a_wildcard_allows_exactly_one_more_label() {
        let list = patterns("*.dev.example.org");
        for host in ["a.dev.example.org", "feature-1.dev.example.org"] {
            assert!(allowed(&list, host), "{host}");
        }
        for host in ["dev.example.org", "a.b.dev.example.org", "adev.example.org", ".dev.example.org", "a.dev.example"]
        {
            assert!(!allowed(&list, host), "{host}");
        }
    }

    #[test]
    fn patterns_are_lowercased_and_listed_as_written() {
        let list = patterns(" App.Example.ORG , *.Dev.Example.org");
        assert_eq!(describe_list(&list), "app.example.org,*.dev.example.org");
        assert!(allowed(&list, "app.example.org"));
        assert_eq!(describe_list(&patterns("none")), "none");
        assert!(patterns("none").is_empty());
    }

    #[test]
    fn invalid_patterns_are_refused_naming_the_pattern() {
        for bad in [
            "",
            "localhost",
            "*",
            "*.org",
            "app.*.example.org",
            "a*.example.org",
            "**.example.org",
            "*example.org",
            "app_1.example.org",
            "-app.example.org",
            "app-.example.org",
            "app..example.org",
            "app.example.org.",
            "192.0.2.7",
            "app example.org",
            "xn--é.example.org",
        ] {
            let err = bad.parse::<HostPattern>().expect_err(bad);
            assert!(err.to_string().starts_with(&format!("invalid hostname pattern {:?}", bad.trim())), "{err}");
        }
        let err = parse_list::<HostPattern>("app.example.org,bad_name.example.org").expect_err("one bad pattern");
        assert_eq!(
            err.to_string(),
            "invalid hostname pattern \"bad_name.example.org\": expected a full DNS name like app.example.org, or *.example.org for any one label under it"
        );
    }

    #[test]
    fn patterns_read_back_from_their_stored_form() -> anyhow::Result<()> {
        let list = patterns("app.example.org,*.dev.example.org");
        let json = serde_json::to_string(&list)?;
        assert_eq!(json, r#"["app.example.org","*.dev.example.org"]"#);
        assert_eq!(serde_json::from_str::<Vec<HostPattern>>(&json)?, list);
        assert!(serde_json::from_str::<Vec<HostPattern>>(r#"["*.org"]"#).is_err());
        Ok(())
    }
}
