//! An edited config applied to a running relay (on SIGHUP, or when the file changes): limits,
//! timeouts and reserved names take effect for what comes next, without dropping anyone.
//! Keys that decide what the relay is bound to or who it is need a restart, and say so.

use burrow_common::sync;
use std::sync::Arc;

use crate::{RelayConfig, Shared};

/// Keys read once at start-up: listeners, identity, stores.
const RESTART_KEYS: &[&str] = &[
    "listen",
    "public_bind",
    "ports",
    "data_dir",
    "store",
    "hostname",
    "tls_cert",
    "tls_key",
    "reservation_ttl",
    "idle_timeout",
    "admin_listen",
    "admin_token",
    "migration",
    "domain",
    "tcp_listen",
    "http_listen",
    "https_listen",
    "https_cert",
    "https_key",
    "max_visitors",
];

/// Keys whose values never reach the log.
const SECRET_KEYS: &[&str] = &["token", "admin_token"];

/// Applies edited settings to one relay.
#[derive(Clone)]
pub struct Reloader(Arc<Shared>);

/// What an apply did, key by key, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// `key: old -> new`, in force now.
    pub changed: Vec<String>,
    /// Keys whose new value waits for a restart.
    pub needs_restart: Vec<String>,
}

impl Reloader {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self(shared)
    }

    /// Puts `new` in force, except for the keys in [`RESTART_KEYS`], which keep their value.
    pub fn apply(&self, new: RelayConfig) -> anyhow::Result<Applied> {
        new.validate()?;
        let shared = &self.0;
        let old = shared.config();
        let (old_keys, mut merged) = (as_map(&old)?, as_map(&new)?);
        let mut applied = Applied::default();
        for (key, old_value) in &old_keys {
            let Some(new_value) = merged.get_mut(key) else { continue };
            if new_value == old_value {
                continue;
            }
            if RESTART_KEYS.contains(&key.as_str()) {
                applied.needs_restart.push(key.clone());
                *new_value = old_value.clone();
            } else if SECRET_KEYS.contains(&key.as_str()) {
                applied.changed.push(format!("{key}: changed"));
            } else {
                applied.changed.push(format!("{key}: {old_value} -> {new_value}"));
            }
        }
        let merged: RelayConfig = serde_json::from_value(serde_json::Value::Object(merged))?;
        shared.per_ip.set_max(merged.max_visitors_per_ip);
        shared.claims.set_max_per_token(merged.max_tunnels_per_token);
        let token_changed = merged.token != old.token;
        *sync::write(&shared.config) = Arc::new(merged);
        if token_changed {
            // Stored as a permit if the sweep is busy, so the change is never missed.
            shared.token_reloaded.notify_one();
        }
        Ok(applied)
    }
}

fn as_map(config: &RelayConfig) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::to_value(config)? {
        serde_json::Value::Object(map) => Ok(map),
        _ => anyhow::bail!("a config serialises as a map"),
    }
}

/// Logs what an apply did.
pub fn log(applied: &Applied) {
    if applied.changed.is_empty() && applied.needs_restart.is_empty() {
        tracing::info!("config re-read; nothing changed");
    }
    for change in &applied.changed {
        tracing::info!("config reloaded: {change}");
    }
    for key in &applied.needs_restart {
        tracing::warn!("config: {key} changed; restart the relay to apply it (the running value stays)");
    }
}
