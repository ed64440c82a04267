//! The operator's certificate and key files (`https_cert`, `https_key`), read again when
//! either changes, as certbot renews them in place.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use burrow_common::tls::{Identity, PemError};
use rustls::sign::CertifiedKey;

use super::{HttpsCertError, certified_key};

/// Modification times of the certificate and key files.
pub(super) type Modified = Option<(SystemTime, SystemTime)>;

#[derive(Debug)]
pub(super) struct OperatorFiles {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) interval: Duration,
}

impl OperatorFiles {
    /// The certificate and the times it was read at, unless the times are still `seen`.
    pub(super) fn changed_since(&self, seen: Modified) -> Result<Option<(CertifiedKey, Modified)>, HttpsCertError> {
        let modified = self.modified()?;
        if modified.is_some() && modified == seen {
            return Ok(None);
        }
        Ok(Some((self.read()?, modified)))
    }

    /// `None` where the filesystem keeps no modification times: then every check re-reads.
    pub(super) fn modified(&self) -> Result<Modified, HttpsCertError> {
        let time = |setting, path: &Path| -> Result<Option<SystemTime>, HttpsCertError> {
            // Follows symlinks: certbot's live/ names point at a new archive/ file on renewal.
            let meta = fs::metadata(path).map_err(|source| HttpsCertError::Read {
                setting,
                path: path.to_path_buf(),
                source,
            })?;
            Ok(meta.modified().ok())
        };
        Ok(time("https_cert", &self.cert)?.zip(time("https_key", &self.key)?))
    }

    pub(super) fn read(&self) -> Result<CertifiedKey, HttpsCertError> {
        let read = |setting, path: &Path| {
            fs::read(path).map_err(|source| HttpsCertError::Read { setting, path: path.to_path_buf(), source })
        };
        let (cert_pem, key_pem) = (read("https_cert", &self.cert)?, read("https_key", &self.key)?);
        let identity = Identity::from_pem(&cert_pem, &key_pem).map_err(|source| {
            let (setting, path) = match source {
                PemError::Certificate(_) | PemError::NoCertificate => ("https_cert", &self.cert),
                PemError::Key(_) | PemError::NoKey => ("https_key", &self.key),
            };
            HttpsCertError::Pem { setting, path: path.clone(), source }
        })?;
        certified_key(identity).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                HttpsCertError::Mismatch { cert: self.cert.clone(), key: self.key.clone() }
            }
            e => HttpsCertError::UnusableKey(self.key.clone(), e),
        })
    }
}
