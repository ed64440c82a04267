//! Which subdomains a token may claim: `app-*,docs`. A pattern is a DNS label in which one
//! `*` may stand for one or more letters, digits or hyphens; `none` allows no subdomain.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::vhost;

/// The word that closes a kind of place to a token: `--ports none`, `--subdomains none`.
pub const NONE: &str = "none";

/// One allowed subdomain, or a family of them when it holds a `*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NamePattern {
    /// Lowercase; at most one `*`.
    text: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid subdomain pattern {0:?}: expected a DNS label (letters, digits, inner hyphens) with at most one `*`")]
pub struct PatternError(String);

impl NamePattern {
    /// Whether `name` (a valid lowercase label) is one of the names this pattern allows.
    pub fn matches(&self, name: &str) -> bool {
        match self.text.split_once('*') {
            None => self.text == name,
            Some((before, after)) => {
                name.len() > before.len() + after.len()
                    && name.starts_with(before)
                    && name.ends_with(after)
                    && name[before.len()..name.len() - after.len()]
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            }
        }
    }

    /// A name of this pattern with `random` in place of its `*`, if it has one and the
    /// result is a valid label.
    pub(crate) fn fill(&self, random: &str) -> Option<String> {
        let (before, after) = self.text.split_once('*')?;
        vhost::check_subdomain(&format!("{before}{random}{after}"), &[]).ok()
    }

    pub(crate) fn is_wildcard(&self) -> bool {
        self.text.contains('*')
    }
}

impl std::str::FromStr for NamePattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, PatternError> {
        let text = text.trim().to_ascii_lowercase();
        let invalid = || PatternError(text.clone());
        if text.matches('*').count() > 1 {
            return Err(invalid());
        }
        // The `*` stands for at least one label character, so the pattern is a label when
        // one is put in its place.
        vhost::check_subdomain(&text.replace('*', "x"), &[]).map_err(|_| invalid())?;
        Ok(Self { text })
    }
}

impl TryFrom<String> for NamePattern {
    type Error = PatternError;

    fn try_from(text: String) -> Result<Self, PatternError> {
        text.parse()
    }
}

impl From<NamePattern> for String {
    fn from(pattern: NamePattern) -> String {
        pattern.text
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses a token's list of patterns, `app-*,docs` or `app.example.org,*.dev.example.org`,
/// or `none` for an empty list.
pub fn parse_list<P: std::str::FromStr>(text: &str) -> Result<Vec<P>, P::Err> {
    if text.trim() == NONE {
        return Ok(Vec::new());
    }
    text.split(',').map(str::parse).collect()
}

/// `none` for an empty list, else the patterns as they are written.
pub fn describe_list<P: fmt::Display>(patterns: &[P]) -> String {
    if patterns.is_empty() {
        return NONE.into();
    }
    patterns.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// `all` for no limit, else [`describe_list`].
pub fn describe_patterns(patterns: Option<&[NamePattern]>) -> String {
    patterns.map_or_else(|| "all".into(), describe_list)
}
