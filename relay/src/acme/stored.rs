//! Certificates from the CA and the account key, in the data directory (files 0600), so a
//! restarted relay serves what it has and orders nothing it already holds.
//!
//! Each CA directory gets a folder of its own: a staging certificate is never served once the
//! relay points at production.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use burrow_common::tls::{Identity, PemError};
use instant_acme::AccountCredentials;
use rustls::{pki_types::CertificateDer, sign::CertifiedKey};

use crate::files::{self, FileError};

const ACCOUNT_FILE: &str = "account.json";
const CERTS_DIR: &str = "certs";

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoredError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("read {}", .0.display())]
    List(PathBuf, #[source] io::Error),
    #[error("remove {}", .0.display())]
    Remove(PathBuf, #[source] io::Error),
    #[error("{} is not an ACME account", .0.display())]
    Account(PathBuf, #[source] serde_json::Error),
    #[error("certificate {}", .0.display())]
    Pem(PathBuf, #[source] PemError),
    #[error("certificate {}", .0.display())]
    Unusable(PathBuf, #[source] rustls::Error),
    #[error("certificate {}: unreadable validity", .0.display())]
    Validity(PathBuf),
}

/// A certificate as served: the key, the names it covers and how long it is valid.
#[derive(Clone)]
pub(crate) struct Issued {
    pub(crate) key: std::sync::Arc<CertifiedKey>,
    pub(crate) names: Vec<String>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

impl Issued {
    /// Parses a chain and key as the CA gave them (or as stored).
    pub(crate) fn from_pem(chain_pem: &[u8], key_pem: &[u8], path: &Path) -> Result<Self, StoredError> {
        let identity = Identity::from_pem(chain_pem, key_pem).map_err(|e| StoredError::Pem(path.into(), e))?;
        let (names, not_before, not_after) =
            validity(&identity.chain[0]).ok_or_else(|| StoredError::Validity(path.into()))?;
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(identity.chain, identity.key, &provider)
            .map_err(|e| StoredError::Unusable(path.into(), e))?;
        Ok(Self { key: std::sync::Arc::new(key), names, not_before, not_after })
    }

    pub(crate) fn leaf(&self) -> &CertificateDer<'static> {
        self.key.cert.first().expect("a parsed chain is never empty: empty PEM is rejected")
    }

    /// When to renew: two thirds into the certificate's life, as certbot and Caddy do.
    pub(crate) fn renew_at(&self) -> SystemTime {
        let life = self.not_after.duration_since(self.not_before).unwrap_or(Duration::ZERO);
        self.not_before + life * 2 / 3
    }
}

/// The DNS names and validity of a certificate.
fn validity(leaf: &CertificateDer<'_>) -> Option<(Vec<String>, SystemTime, SystemTime)> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let time = |t: x509_parser::time::ASN1Time| {
        u64::try_from(t.timestamp()).ok().map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    };
    let validity = cert.validity();
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some((names, time(validity.not_before)?, time(validity.not_after)?))
}

/// The folder of one CA directory's account and certificates.
pub(crate) struct Folder {
    dir: PathBuf,
    ca: String,
}

impl Folder {
    pub(crate) fn new(data_dir: &Path, directory_url: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, directory_url.as_bytes());
        let ca = hex::encode(&digest.as_ref()[..8]);
        Self { dir: data_dir.join("acme").join(&ca), ca }
    }

    /// Which CA directory this folder is for, as a short hex tag: what the fleet's shared
    /// certificates are filed under too.
    pub(crate) fn ca(&self) -> &str {
        &self.ca
    }

    fn certs(&self) -> PathBuf {
        self.dir.join(CERTS_DIR)
    }

    pub(crate) fn account(&self) -> Result<Option<AccountCredentials>, StoredError> {
        let path = self.dir.join(ACCOUNT_FILE);
        let Some(bytes) = files::read_optional(&path)? else { return Ok(None) };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| StoredError::Account(path, e))
    }

    pub(crate) fn save_account(&self, credentials: &AccountCredentials) -> Result<(), StoredError> {
        let path = self.dir.join(ACCOUNT_FILE);
        let json = serde_json::to_vec_pretty(credentials).map_err(|e| StoredError::Account(path.clone(), e))?;
        Ok(files::write_private(&path, &json)?)
    }

    /// Every stored certificate; one that cannot be read is logged and left for a new order.
    pub(crate) fn certificates(&self) -> Result<Vec<(String, Issued)>, StoredError> {
        let certs = self.certs();
        let entries = match fs::read_dir(&certs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoredError::List(certs, e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| StoredError::List(certs.clone(), e))?.path();
            let Some(id) = path.file_name().and_then(|f| f.to_str()).and_then(|f| f.strip_suffix(".pem")) else {
                continue;
            };
            match self.certificate(id) {
                Ok(Some(issued)) => found.push((id_of_file(id), issued)),
                Ok(None) => {}
                Err(e) => tracing::warn!("stored certificate skipped: {:#}", anyhow::Error::from(e)),
            }
        }
        Ok(found)
    }

    fn certificate(&self, file: &str) -> Result<Option<Issued>, StoredError> {
        let (chain, key) = (self.certs().join(format!("{file}.pem")), self.certs().join(format!("{file}.key")));
        match (files::read_optional(&chain)?, files::read_optional(&key)?) {
            (Some(chain_pem), Some(key_pem)) => Issued::from_pem(&chain_pem, &key_pem, &chain).map(Some),
            _ => Ok(None),
        }
    }

    /// Stores a certificate under `id`, the key first so a chain on disk always has its key.
    pub(crate) fn save_certificate(&self, id: &str, chain_pem: &str, key_pem: &str) -> Result<(), StoredError> {
        let file = file_of_id(id);
        files::write_private(&self.certs().join(format!("{file}.key")), key_pem.as_bytes())?;
        Ok(files::write_private(&self.certs().join(format!("{file}.pem")), chain_pem.as_bytes())?)
    }
}

impl Folder {
    /// Removes a certificate no tunnel needs any more; the key last, as it was written first.
    pub(crate) fn remove_certificate(&self, id: &str) -> Result<(), StoredError> {
        let file = file_of_id(id);
        for path in [self.certs().join(format!("{file}.pem")), self.certs().join(format!("{file}.key"))] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoredError::Remove(path, e)),
            }
        }
        Ok(())
    }
}

/// `*.example.com` is stored as `_wildcard.example.com`: no `*` in file names.
fn file_of_id(id: &str) -> String {
    id.replacen("*", "_wildcard", 1)
}

fn id_of_file(file: &str) -> String {
    file.replacen("_wildcard", "*", 1)
}
