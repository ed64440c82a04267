//! The relay's long-lived identity in its data directory: TLS certificate and key, and the
//! QUIC stateless-reset and connection-ID keys.
//!
//! Persisting the QUIC keys lets a restarted relay recognise its predecessor's connection IDs
//! and answer with a stateless reset, so agents learn of the restart at their next packet
//! instead of after the idle timeout.

use std::{io, path::PathBuf, sync::Arc};

use burrow_common::tls::{self, GenerateError, Identity, PemError};
use rand::RngCore;

use crate::{
    RelayConfig,
    files::{self, FileError},
};

const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
const QUIC_KEYS_FILE: &str = "quic-keys";
const RESET_KEY_LEN: usize = 64;

/// Why the relay's QUIC certificate could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("read {setting} {}", path.display())]
    Read { setting: &'static str, path: PathBuf, source: io::Error },
    #[error("load tls_cert / tls_key")]
    Configured(#[source] PemError),
    #[error("load {}", .0.display())]
    Stored(PathBuf, #[source] PemError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error(transparent)]
    File(#[from] FileError),
}

/// Loads the configured certificate, or the generated one, creating it on first start.
pub(crate) fn load_or_create_certificate(config: &RelayConfig) -> Result<Identity, CertificateError> {
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        let read = |setting, path: &PathBuf| {
            std::fs::read(path).map_err(|source| CertificateError::Read { setting, path: path.clone(), source })
        };
        let (cert_pem, key_pem) = (read("tls_cert", cert)?, read("tls_key", key)?);
        return Identity::from_pem(&cert_pem, &key_pem).map_err(CertificateError::Configured);
    }
    let (cert_path, key_path) = (config.path(CERT_FILE), config.path(KEY_FILE));
    let stored = |cert: &[u8], key: &[u8]| {
        Identity::from_pem(cert, key).map_err(|e| CertificateError::Stored(cert_path.clone(), e))
    };
    if let (Some(cert), Some(key)) = (files::read_optional(&cert_path)?, files::read_optional(&key_path)?) {
        return stored(&cert, &key);
    }
    let generated = tls::self_signed(&certificate_names(config))?;
    files::write_private(&key_path, generated.key_pem.as_bytes())?;
    files::write_private(&cert_path, generated.cert_pem.as_bytes())?;
    tracing::info!(path = %cert_path.display(), "generated a self-signed certificate");
    stored(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes())
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

/// The stateless-reset key followed by the connection-ID key, as stored.
type KeyBytes = [u8; RESET_KEY_LEN + 8];

pub(crate) fn load_or_create_quic_keys(config: &RelayConfig) -> Result<QuicKeys, FileError> {
    let path = config.path(QUIC_KEYS_FILE);
    let existing = files::read_optional(&path)?;
    let bytes = match existing.as_deref().map(KeyBytes::try_from) {
        Some(Ok(bytes)) => bytes,
        wrong_or_none => {
            if wrong_or_none.is_some() {
                tracing::warn!(path = %path.display(), "QUIC key file has the wrong size; replacing it");
            }
            let mut fresh = [0; RESET_KEY_LEN + 8];
            rand::rng().fill_bytes(&mut fresh);
            files::write_private(&path, &fresh)?;
            fresh
        }
    };
    let (reset, cid) = bytes.split_at(RESET_KEY_LEN);
    let mut cid_bytes = [0; 8];
    cid_bytes.copy_from_slice(cid);
    Ok(QuicKeys {
        reset: Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset)),
        connection_id: u64::from_le_bytes(cid_bytes),
    })
}
