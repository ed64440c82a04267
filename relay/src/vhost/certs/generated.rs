//! The self-signed wildcard certificate kept in the data directory when the operator gives
//! none: made for the relay's domain, and made again when the domain changes.

use std::path::Path;

use burrow_common::tls::{self, Identity, PemError};
use rustls::{
    pki_types::{CertificateDer, ServerName},
    server::ParsedCertificate,
    sign::CertifiedKey,
};

use super::{HttpsCertError, certified_key, leaf};
use crate::files;

pub(super) const CERT_FILE: &str = "https-cert.pem";
pub(super) const KEY_FILE: &str = "https-key.pem";

/// Why a stored certificate is replaced rather than served.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error(transparent)]
    Certificate(#[from] rustls::Error),
}

/// The self-signed certificate in `data_dir`, replaced if it does not cover `domain`.
pub(super) fn load_or_generate(domain: &str, data_dir: &Path) -> Result<CertifiedKey, HttpsCertError> {
    let (cert_path, key_path) = (data_dir.join(CERT_FILE), data_dir.join(KEY_FILE));
    if let (Some(cert), Some(key)) = (files::read_optional(&cert_path)?, files::read_optional(&key_path)?) {
        match stored(&cert, &key, domain) {
            Ok(Some(key)) => return Ok(key),
            Ok(None) => tracing::info!(domain, "the self-signed HTTPS certificate is for another domain; replacing it"),
            Err(e) => {
                let e = anyhow::Error::from(e);
                tracing::warn!(path = %cert_path.display(), "unreadable HTTPS certificate, replacing it: {e:#}");
            }
        }
    }
    let generated = tls::self_signed(&[format!("*.{domain}"), domain.to_owned()])?;
    files::write_private(&key_path, generated.key_pem.as_bytes())?;
    files::write_private(&cert_path, generated.cert_pem.as_bytes())?;
    tracing::info!(path = %cert_path.display(), domain, "generated a self-signed HTTPS certificate");
    let identity = Identity::from_pem(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes())
        .map_err(HttpsCertError::Generated)?;
    certified_key(identity).map_err(HttpsCertError::GeneratedKey)
}

/// The stored certificate, or `None` if it does not cover `domain`.
fn stored(cert_pem: &[u8], key_pem: &[u8], domain: &str) -> Result<Option<CertifiedKey>, Unusable> {
    let key = certified_key(Identity::from_pem(cert_pem, key_pem)?)?;
    Ok(covers(leaf(&key), domain)?.then_some(key))
}

/// Whether `cert` is valid for `domain` and its subdomains, judged as a TLS client would.
pub(super) fn covers(cert: &CertificateDer<'_>, domain: &str) -> Result<bool, rustls::Error> {
    let cert = ParsedCertificate::try_from(cert)?;
    let valid_for = |name: String| {
        ServerName::try_from(name).is_ok_and(|name| rustls::client::verify_server_name(&cert, &name).is_ok())
    };
    // webpki (following NSS) ignores a wildcard with fewer than two labels after it
    // (`*.localhost`), so for a one-label domain only the name itself can be checked.
    let subdomains = !domain.contains('.') || valid_for(format!("probe.{domain}"));
    Ok(valid_for(domain.to_owned()) && subdomains)
}
