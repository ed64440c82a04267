//! The certificate of the public HTTPS port, where the relay terminates TLS for HTTP tunnels:
//! one from the ACME CA for the name asked for, else the operator's files (a wildcard
//! certificate from certbot, followed across renewals), or a self-signed wildcard certificate
//! kept in the data directory.

mod generated;
mod operator;
#[cfg(test)]
mod tests;

use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use burrow_common::{
    Fingerprint,
    tls::{GenerateError, Identity, PemError},
};
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::CertificateDer,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use self::operator::{Modified, OperatorFiles};
use crate::{
    acme::{ACME_TLS_ALPN, Acme},
    files::FileError,
};

/// How long a renewed certificate may go unnoticed; also how often a handshake may touch disk.
const RECHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Why the HTTPS certificate could not be loaded; messages name the setting and the file.
#[derive(Debug, thiserror::Error)]
pub enum HttpsCertError {
    #[error("{setting} {}", path.display())]
    Read { setting: &'static str, path: PathBuf, source: io::Error },
    #[error("{setting} {}", path.display())]
    Pem { setting: &'static str, path: PathBuf, source: PemError },
    #[error("https_key {} does not match https_cert {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("https_key {}: unusable private key", .0.display())]
    UnusableKey(PathBuf, #[source] rustls::Error),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error("load the generated HTTPS certificate")]
    Generated(#[source] PemError),
    #[error("use the generated HTTPS certificate")]
    GeneratedKey(#[source] rustls::Error),
    #[error(transparent)]
    File(#[from] FileError),
}

/// The HTTPS port's certificate and where it comes from.
pub(crate) struct HttpsCert {
    resolver: Arc<Resolver>,
}

impl HttpsCert {
    /// Follows the operator's `files` (certificate chain, private key), or without them uses a
    /// self-signed certificate for `*.DOMAIN` and `DOMAIN` kept in `data_dir`, generated when
    /// missing or when it does not cover `domain`. With `acme`, the CA's certificates come
    /// first and these are the fallback.
    pub(crate) fn load(
        domain: &str,
        data_dir: &Path,
        files: Option<(&Path, &Path)>,
        acme: Option<Arc<Acme>>,
    ) -> Result<Self, HttpsCertError> {
        match files {
            Some((cert, key)) => Self::follow(cert, key, RECHECK_INTERVAL, acme),
            None => Ok(Self::fixed(generated::load_or_generate(domain, data_dir)?, acme)),
        }
    }

    fn follow(cert: &Path, key: &Path, interval: Duration, acme: Option<Arc<Acme>>) -> Result<Self, HttpsCertError> {
        let files = OperatorFiles { cert: cert.to_path_buf(), key: key.to_path_buf(), interval };
        // Times first: a renewal landing between the two is then seen at the next check.
        let modified = files.modified()?;
        let served = files.read()?;
        let resolver = Resolver {
            served: Mutex::new(Served { key: Arc::new(served), modified, next_check: Instant::now() + interval }),
            files: Some(files),
            acme,
        };
        Ok(Self { resolver: Arc::new(resolver) })
    }

    fn fixed(key: CertifiedKey, acme: Option<Arc<Acme>>) -> Self {
        let served = Served { key: Arc::new(key), modified: None, next_check: Instant::now() };
        Self { resolver: Arc::new(Resolver { served: Mutex::new(served), files: None, acme }) }
    }

    /// A server config for browsers and HTTP clients: TLS 1.2 and 1.3, HTTP/1.1 only.
    pub(crate) fn server_config(&self) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the ring provider has cipher suites for TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if self.resolver.acme.is_some() {
            config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        Arc::new(config)
    }

    /// The fingerprint of the certificate served now.
    pub(crate) fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.leaf_der())
    }

    /// The certificate served now, without its chain.
    pub(crate) fn leaf_der(&self) -> CertificateDer<'static> {
        leaf(&self.resolver.served().key).clone()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn leaf(key: &CertifiedKey) -> &CertificateDer<'static> {
    key.cert.first().expect("a loaded chain is never empty: empty PEM is rejected on load")
}

fn certified_key(identity: Identity) -> Result<CertifiedKey, rustls::Error> {
    CertifiedKey::from_der(identity.chain, identity.key, &provider())
}

/// Serves one certificate, re-reading the operator's files when they change.
///
/// rustls asks for the certificate synchronously inside the handshake, so the state sits
/// behind a std mutex held only for copies, never across disk reads.
struct Resolver {
    served: Mutex<Served>,
    files: Option<OperatorFiles>,
    acme: Option<Arc<Acme>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("files", &self.files).field("acme", &self.acme.is_some()).finish()
    }
}

#[derive(Debug)]
struct Served {
    key: Arc<CertifiedKey>,
    /// The files' modification times when `key` was read from them.
    modified: Modified,
    next_check: Instant,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(acme) = &self.acme {
            let name = hello.server_name().map(str::to_ascii_lowercase);
            // RFC 8737: the CA's check gets the challenge certificate or nothing.
            if hello.alpn().is_some_and(|mut offered| offered.any(|alpn| alpn == ACME_TLS_ALPN)) {
                return name.and_then(|name| acme.challenge_certificate(&name));
            }
            if let Some(key) = name.and_then(|name| acme.certificate_for(&name)) {
                return Some(key);
            }
        }
        Some(self.current())
    }
}

impl Resolver {
    fn served(&self) -> MutexGuard<'_, Served> {
        // Every field is replaced whole: see `burrow_common::sync`.
        burrow_common::sync::lock(&self.served)
    }

    fn current(&self) -> Arc<CertifiedKey> {
        if let Some(files) = &self.files {
            self.reload_if_changed(files);
        }
        self.served().key.clone()
    }

    /// At most once per interval, and by one handshake only, checks the files and re-reads
    /// them if either changed; the other handshakes meanwhile keep the served certificate.
    fn reload_if_changed(&self, files: &OperatorFiles) {
        let seen = {
            let mut served = self.served();
            let now = Instant::now();
            if now < served.next_check {
                return;
            }
            served.next_check = now + files.interval;
            served.modified
        };
        match files.changed_since(seen) {
            Ok(None) => {}
            Ok(Some((key, modified))) => {
                tracing::info!(fingerprint = %Fingerprint::of(leaf(&key)), "reloaded the HTTPS certificate");
                let mut served = self.served();
                served.key = Arc::new(key);
                served.modified = modified;
            }
            // The old times stay recorded, so a half-renewed pair (certbot replaces the
            // certificate and the key one after the other) is read again at the next check.
            Err(e) => {
                let e = anyhow::Error::from(e);
                tracing::warn!("reloading the HTTPS certificate failed, serving the old one: {e:#}");
            }
        }
    }
}
