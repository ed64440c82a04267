//! Every limit the relay enforces, by its config key, as one table: the banner, the ready
//! file and `/api/limits` all show this, and a key added to the config is listed by its name
//! alone (`max_*`, `*_timeout`, ...) without being registered here.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::Shared;

/// Keys that are limits although their names do not say so.
const OTHER_LIMITS: &[&str] = &["grace_period", "park_visitors_for", "reservation_ttl", "retry_handshakes_above"];

/// The key of the open files limit the visitor cap comes from; not a config key.
pub(crate) const OPEN_FILES: &str = "open_files";

fn is_limit(key: &str) -> bool {
    key.starts_with("max_") || key.contains("_max_") || key.ends_with("_timeout") || OTHER_LIMITS.contains(&key)
}

/// Each limit in force now and its value, with `max_visitors` as resolved at start.
pub(crate) fn limits(shared: &Shared) -> BTreeMap<String, Value> {
    let config = serde_json::to_value(&*shared.config()).unwrap_or(Value::Null);
    let mut table: BTreeMap<String, Value> = match config {
        Value::Object(keys) => keys.into_iter().filter(|(key, _)| is_limit(key)).collect(),
        _ => BTreeMap::new(),
    };
    table.insert("max_visitors".into(), shared.descriptors.max().into());
    table.insert(OPEN_FILES.into(), shared.descriptors.open_files().map_or(Value::Null, Value::from));
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_told_by_their_names() {
        for key in ["max_visitors_per_ip", "handshake_timeout", "http_max_header_bytes", "grace_period"] {
            assert!(is_limit(key), "{key}");
        }
        for key in ["listen", "domain", "migration", "admin_token"] {
            assert!(!is_limit(key), "{key}");
        }
    }

    /// docs/security.md is where an operator learns what each limit protects: a limit added to
    /// the config without a line there fails here.
    #[test]
    fn every_limit_is_documented() {
        let documented = include_str!("../../docs/security.md");
        let config = serde_json::to_value(crate::config::RelayConfig::default()).expect("the config serialises");
        let keys = config.as_object().expect("the config is a table").keys().filter(|key| is_limit(key));
        let missing: Vec<&String> = keys.filter(|key| !documented.contains(&format!("`{key}`"))).collect();
        assert!(missing.is_empty(), "limits missing from docs/security.md: {missing:?}");
    }
}
