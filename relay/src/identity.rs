//! The relay's long-lived identity in its data directory: TLS certificate and key, and the
//! QUIC stateless-reset and connection-ID keys.
//!
//! Persisting the QUIC keys lets a restarted relay recognise its predecessor's connection IDs
//! and answer with a stateless reset, so agents learn of the restart at their next packet
//! instead of after the idle timeout.

use std::sync::Arc;

use anyhow::Context;
use burrow_common::tls::{self, Identity};
use rand::RngCore;

use crate::{RelayConfig, files};

const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
const QUIC_KEYS_FILE: &str = "quic-keys";
const RESET_KEY_LEN: usize = 64;

/// Loads the configured certificate, or the generated one, creating it on first start.
pub(crate) fn load_or_create_certificate(config: &RelayConfig) -> anyhow::Result<Identity> {
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        let cert_pem = std::fs::read(cert).with_context(|| format!("read tls_cert {}", cert.display()))?;
        let key_pem = std::fs::read(key).with_context(|| format!("read tls_key {}", key.display()))?;
        return Identity::from_pem(&cert_pem, &key_pem).context("load tls_cert / tls_key");
    }
    let (cert_path, key_path) = (config.path(CERT_FILE), config.path(KEY_FILE));
    if let (Some(cert), Some(key)) = (files::read_optional(&cert_path)?, files::read_optional(&key_path)?) {
        return Identity::from_pem(&cert, &key).with_context(|| format!("load {}", cert_path.display()));
    }
    let generated = tls::self_signed(&certificate_names(config))?;
    files::write_private(&key_path, generated.key_pem.as_bytes())?;
    files::write_private(&cert_path, generated.cert_pem.as_bytes())?;
    tracing::info!(path = %cert_path.display(), "generated a self-signed certificate");
    Identity::from_pem(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes())
}

fn certificate_names(config: &RelayConfig) -> Vec<String> {
    let mut names = config.hostname.clone();
    for local in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == local) {
            names.push(local.to_string());
        }
    }
    names
}

/// QUIC keys that must survive a restart.
pub(crate) struct QuicKeys {
    pub(crate) reset: Arc<ring::hmac::Key>,
    pub(crate) connection_id: u64,
}

pub(crate) fn load_or_create_quic_keys(config: &RelayConfig) -> anyhow::Result<QuicKeys> {
    let path = config.path(QUIC_KEYS_FILE);
    let bytes = match files::read_optional(&path)? {
        Some(bytes) if bytes.len() == RESET_KEY_LEN + 8 => bytes,
        existing => {
            if existing.is_some() {
                tracing::warn!(path = %path.display(), "QUIC key file has the wrong size; replacing it");
            }
            let mut fresh = vec![0; RESET_KEY_LEN + 8];
            rand::rng().fill_bytes(&mut fresh);
            files::write_private(&path, &fresh)?;
            fresh
        }
    };
    let (reset, cid) = bytes.split_at(RESET_KEY_LEN);
    let cid: [u8; 8] = cid.try_into().context("connection-ID key length")?;
    Ok(QuicKeys {
        reset: Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset)),
        connection_id: u64::from_le_bytes(cid),
    })
}
