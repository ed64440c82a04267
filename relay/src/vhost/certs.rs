//! The certificate of the public HTTPS port, where the relay terminates TLS for HTTP tunnels:
//! the operator's files (a wildcard certificate from certbot, followed across renewals), or a
//! self-signed wildcard certificate kept in the data directory.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, anyhow};
use burrow_common::{
    Fingerprint,
    tls::{self, Identity},
};
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{
        CertificateDer, PrivateKeyDer, ServerName,
        pem::{self, PemObject},
    },
    server::{ClientHello, ParsedCertificate, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::files;

const CERT_FILE: &str = "https-cert.pem";
const KEY_FILE: &str = "https-key.pem";

/// How long a renewed certificate may go unnoticed; also how often a handshake may touch disk.
const RECHECK_INTERVAL: Duration = Duration::from_secs(30);

/// The HTTPS port's certificate and where it comes from.
pub(crate) struct HttpsCert {
    resolver: Arc<Resolver>,
}

impl HttpsCert {
    /// Follows the operator's `files` (certificate chain, private key), or without them uses a
    /// self-signed certificate for `*.DOMAIN` and `DOMAIN` kept in `data_dir`, generated when
    /// missing or when it does not cover `domain`.
    pub(crate) fn load(domain: &str, data_dir: &Path, files: Option<(&Path, &Path)>) -> anyhow::Result<Self> {
        match files {
            Some((cert, key)) => Self::follow(cert, key, RECHECK_INTERVAL),
            None => Ok(Self::fixed(load_or_generate(domain, data_dir)?)),
        }
    }

    fn follow(cert: &Path, key: &Path, interval: Duration) -> anyhow::Result<Self> {
        let files = OperatorFiles { cert: cert.to_path_buf(), key: key.to_path_buf(), interval };
        // Times first: a renewal landing between the two is then seen at the next check.
        let modified = files.modified()?;
        let served = files.read()?;
        let resolver = Resolver {
            served: Mutex::new(Served { key: Arc::new(served), modified, next_check: Instant::now() + interval }),
            files: Some(files),
        };
        Ok(Self { resolver: Arc::new(resolver) })
    }

    fn fixed(key: CertifiedKey) -> Self {
        let served = Served { key: Arc::new(key), modified: None, next_check: Instant::now() };
        Self { resolver: Arc::new(Resolver { served: Mutex::new(served), files: None }) }
    }

    /// A server config for browsers and HTTP clients: TLS 1.2 and 1.3, HTTP/1.1 only.
    pub(crate) fn server_config(&self) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the ring provider has cipher suites for TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
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

/// Serves one certificate, re-reading the operator's files when they change.
///
/// rustls asks for the certificate synchronously inside the handshake, so the state sits
/// behind a std mutex held only for copies, never across disk reads.
#[derive(Debug)]
struct Resolver {
    served: Mutex<Served>,
    files: Option<OperatorFiles>,
}

#[derive(Debug)]
struct Served {
    key: Arc<CertifiedKey>,
    /// The files' modification times when `key` was read from them.
    modified: Modified,
    next_check: Instant,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl Resolver {
    fn served(&self) -> MutexGuard<'_, Served> {
        // Every field is replaced whole, so a panic elsewhere leaves the state usable.
        self.served.lock().unwrap_or_else(PoisonError::into_inner)
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
            Err(e) => tracing::warn!("reloading the HTTPS certificate failed, serving the old one: {e:#}"),
        }
    }
}

/// Modification times of the certificate and key files.
type Modified = Option<(SystemTime, SystemTime)>;

#[derive(Debug)]
struct OperatorFiles {
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
}

impl OperatorFiles {
    /// The certificate and the times it was read at, unless the times are still `seen`.
    fn changed_since(&self, seen: Modified) -> anyhow::Result<Option<(CertifiedKey, Modified)>> {
        let modified = self.modified()?;
        if modified.is_some() && modified == seen {
            return Ok(None);
        }
        Ok(Some((self.read()?, modified)))
    }

    /// `None` where the filesystem keeps no modification times: then every check re-reads.
    fn modified(&self) -> anyhow::Result<Modified> {
        let time = |setting: &str, path: &Path| -> anyhow::Result<Option<SystemTime>> {
            // Follows symlinks: certbot's live/ names point at a new archive/ file on renewal.
            let meta = fs::metadata(path).with_context(|| format!("{setting} {}", path.display()))?;
            Ok(meta.modified().ok())
        };
        Ok(time("https_cert", &self.cert)?.zip(time("https_key", &self.key)?))
    }

    fn read(&self) -> anyhow::Result<CertifiedKey> {
        let (cert, key) = (self.cert.display(), self.key.display());
        let cert_pem = fs::read(&self.cert).with_context(|| format!("https_cert {cert}"))?;
        let key_pem = fs::read(&self.key).with_context(|| format!("https_key {key}"))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("https_cert {cert}: parse PEM"))?;
        anyhow::ensure!(!chain.is_empty(), "https_cert {cert}: no certificate in PEM");
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            pem::Error::NoItemsFound => anyhow!("https_key {key}: no private key in PEM"),
            e => anyhow!(e).context(format!("https_key {key}: parse PEM")),
        })?;
        certified_key(Identity { chain, key: private }).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => anyhow!("https_key {key} does not match https_cert {cert}"),
            e => anyhow!(e).context(format!("https_key {key}: unusable private key")),
        })
    }
}

fn certified_key(identity: Identity) -> Result<CertifiedKey, rustls::Error> {
    CertifiedKey::from_der(identity.chain, identity.key, &provider())
}

/// The self-signed certificate in `data_dir`, replaced if it does not cover `domain`.
fn load_or_generate(domain: &str, data_dir: &Path) -> anyhow::Result<CertifiedKey> {
    let (cert_path, key_path) = (data_dir.join(CERT_FILE), data_dir.join(KEY_FILE));
    if let (Some(cert), Some(key)) = (files::read_optional(&cert_path)?, files::read_optional(&key_path)?) {
        match stored(&cert, &key, domain) {
            Ok(Some(key)) => return Ok(key),
            Ok(None) => tracing::info!(domain, "the self-signed HTTPS certificate is for another domain; replacing it"),
            Err(e) => tracing::warn!(path = %cert_path.display(), "unreadable HTTPS certificate, replacing it: {e:#}"),
        }
    }
    let generated = tls::self_signed(&[format!("*.{domain}"), domain.to_owned()])?;
    files::write_private(&key_path, generated.key_pem.as_bytes())?;
    files::write_private(&cert_path, generated.cert_pem.as_bytes())?;
    tracing::info!(path = %cert_path.display(), domain, "generated a self-signed HTTPS certificate");
    let identity = Identity::from_pem(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes())?;
    certified_key(identity).context("load the generated HTTPS certificate")
}

/// The stored certificate, or `None` if it does not cover `domain`.
fn stored(cert_pem: &[u8], key_pem: &[u8], domain: &str) -> anyhow::Result<Option<CertifiedKey>> {
    let key = certified_key(Identity::from_pem(cert_pem, key_pem)?)?;
    Ok(covers(leaf(&key), domain)?.then_some(key))
}

/// Whether `cert` is valid for `domain` and its subdomains, judged as a TLS client would.
fn covers(cert: &CertificateDer<'_>, domain: &str) -> anyhow::Result<bool> {
    let cert = ParsedCertificate::try_from(cert)?;
    let valid_for = |name: String| {
        ServerName::try_from(name).is_ok_and(|name| rustls::client::verify_server_name(&cert, &name).is_ok())
    };
    // webpki (following NSS) ignores a wildcard with fewer than two labels after it
    // (`*.localhost`), so for a one-label domain only the name itself can be checked.
    let subdomains = !domain.contains('.') || valid_for(format!("probe.{domain}"));
    Ok(valid_for(domain.to_owned()) && subdomains)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    /// A client that trusts only `leaf`, as a browser would after the operator adds it.
    ///
    /// webpki takes any certificate as a trust anchor (only its subject and key), and then
    /// finds the self-signed leaf issued by that anchor. This works because rcgen's default
    /// leaf has no basic constraints: marking it a CA would make webpki reject it as the
    /// server's own certificate (`CaUsedAsEndEntity`).
    fn client_trusting(leaf: CertificateDer<'static>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        client_trusting_with(leaf, rustls::DEFAULT_VERSIONS)
    }

    fn client_trusting_with(
        leaf: CertificateDer<'static>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(leaf)?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Completes a handshake for `name` and moves a few bytes each way; returns the ALPN.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut tls = TlsAcceptor::from(server).accept(server_io).await?;
            let mut ping = [0; 4];
            tls.read_exact(&mut ping).await?;
            tls.write_all(b"pong").await?;
            tls.shutdown().await?;
            anyhow::Ok(ping)
        });
        let name = ServerName::try_from(name.to_owned())?;
        let mut tls = TlsConnector::from(client).connect(name, client_io).await?;
        tls.write_all(b"ping").await?;
        let mut pong = Vec::new();
        tls.read_to_end(&mut pong).await?;
        assert_eq!(pong, b"pong");
        assert_eq!(&server.await??, b"ping");
        Ok(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
    }

    fn write_pair(dir: &Path, names: &[String], mtime: SystemTime) -> anyhow::Result<(PathBuf, PathBuf)> {
        let generated = tls::self_signed(names)?;
        let (cert, key) = (dir.join("fullchain.pem"), dir.join("privkey.pem"));
        fs::write(&cert, generated.cert_pem)?;
        fs::write(&key, generated.key_pem)?;
        fs::File::options().write(true).open(&cert)?.set_modified(mtime)?;
        fs::File::options().write(true).open(&key)?.set_modified(mtime)?;
        Ok((cert, key))
    }

    fn days_ago(days: u64) -> SystemTime {
        SystemTime::now() - Duration::from_secs(days * 86_400)
    }

    #[test]
    fn generated_certificate_is_reused_until_the_domain_changes() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let first = HttpsCert::load("burrow.test", dir.path(), None)?;
        let again = HttpsCert::load("burrow.test", dir.path(), None)?;
        assert_eq!(first.fingerprint(), again.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(dir.path().join(KEY_FILE))?.permissions().mode() & 0o777, 0o600);
        }

        let moved = HttpsCert::load("other.test", dir.path(), None)?;
        assert_ne!(moved.fingerprint(), first.fingerprint());
        assert!(covers(&moved.leaf_der(), "other.test")?);
        assert!(!covers(&moved.leaf_der(), "burrow.test")?);
        // The subdomain of the old domain is not enough either.
        let sub = HttpsCert::load("a.other.test", dir.path(), None)?;
        assert_ne!(sub.fingerprint(), moved.fingerprint());
        Ok(())
    }

    #[test]
    fn localhost_certificate_is_reused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let first = HttpsCert::load("localhost", dir.path(), None)?;
        assert_eq!(HttpsCert::load("localhost", dir.path(), None)?.fingerprint(), first.fingerprint());
        Ok(())
    }

    #[test]
    fn a_corrupt_generated_certificate_is_replaced() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let first = HttpsCert::load("burrow.test", dir.path(), None)?;
        fs::write(dir.path().join(CERT_FILE), "not PEM")?;
        assert_ne!(HttpsCert::load("burrow.test", dir.path(), None)?.fingerprint(), first.fingerprint());
        Ok(())
    }

    #[tokio::test]
    async fn a_client_trusting_the_generated_certificate_reaches_any_subdomain() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let cert = HttpsCert::load("burrow.test", dir.path(), None)?;
        let client = client_trusting(cert.leaf_der())?;
        for name in ["myapp.burrow.test", "burrow.test"] {
            let alpn = handshake(cert.server_config(), client.clone(), name).await?;
            assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        }
        let tls12 = client_trusting_with(cert.leaf_der(), &[&rustls::version::TLS12])?;
        handshake(cert.server_config(), tls12, "myapp.burrow.test").await?;
        let wrong = handshake(cert.server_config(), client, "myapp.elsewhere.test").await;
        assert!(wrong.is_err(), "a name outside the domain must not verify");
        Ok(())
    }

    #[tokio::test]
    async fn renewed_operator_files_are_served_without_a_restart() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let names = ["*.burrow.test".to_owned(), "burrow.test".to_owned()];
        let (cert_path, key_path) = write_pair(dir.path(), &names, days_ago(60))?;
        let cert = HttpsCert::follow(&cert_path, &key_path, Duration::ZERO)?;
        let old = cert.leaf_der();
        handshake(cert.server_config(), client_trusting(old.clone())?, "myapp.burrow.test").await?;

        write_pair(dir.path(), &names, days_ago(1))?;
        let renewed = Identity::from_pem(&fs::read(&cert_path)?, &fs::read(&key_path)?)?;
        let client = client_trusting(renewed.chain[0].clone())?;
        handshake(cert.server_config(), client, "myapp.burrow.test").await?;
        assert_eq!(cert.fingerprint(), renewed.fingerprint());
        Ok(())
    }

    #[test]
    fn files_are_checked_at_most_once_per_interval() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let names = ["*.burrow.test".to_owned()];
        let (cert_path, key_path) = write_pair(dir.path(), &names, days_ago(60))?;
        let cert = HttpsCert::follow(&cert_path, &key_path, Duration::from_secs(3600))?;
        let before = cert.fingerprint();
        write_pair(dir.path(), &names, days_ago(1))?;
        cert.resolver.current();
        assert_eq!(cert.fingerprint(), before);
        Ok(())
    }

    #[test]
    fn a_broken_renewal_keeps_the_old_certificate_and_is_retried() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let names = ["*.burrow.test".to_owned()];
        let (cert_path, key_path) = write_pair(dir.path(), &names, days_ago(60))?;
        let cert = HttpsCert::follow(&cert_path, &key_path, Duration::ZERO)?;
        let before = cert.fingerprint();

        // Half a renewal: a new certificate next to the old key.
        let renewal = days_ago(1);
        let old_key = fs::read(&key_path)?;
        write_pair(dir.path(), &names, renewal)?;
        let new_key = fs::read(&key_path)?;
        fs::write(&key_path, old_key)?;
        fs::File::options().write(true).open(&key_path)?.set_modified(renewal)?;
        cert.resolver.current();
        assert_eq!(cert.fingerprint(), before);

        // The new key arrives with the times of the failed read: it is still picked up.
        fs::write(&key_path, new_key)?;
        fs::File::options().write(true).open(&key_path)?.set_modified(renewal)?;
        cert.resolver.current();
        assert_ne!(cert.fingerprint(), before);
        Ok(())
    }

    #[test]
    fn errors_name_the_file_and_the_problem() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (cert_path, key_path) = write_pair(dir.path(), &["burrow.test".to_owned()], days_ago(1))?;
        let other = tls::self_signed(&["burrow.test".to_owned()])?;
        let other_key = dir.path().join("other-key.pem");
        fs::write(&other_key, other.key_pem)?;
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "")?;

        let error = |cert: &Path, key: &Path| match HttpsCert::load("burrow.test", dir.path(), Some((cert, key))) {
            Ok(_) => String::from("loaded"),
            Err(e) => format!("{e:#}"),
        };
        let no_cert = error(&empty, &key_path);
        assert!(no_cert.contains(&format!("https_cert {}: no certificate in PEM", empty.display())), "{no_cert}");
        let no_key = error(&cert_path, &empty);
        assert!(no_key.contains(&format!("https_key {}: no private key", empty.display())), "{no_key}");
        let mismatch = error(&cert_path, &other_key);
        assert!(mismatch.contains("does not match https_cert"), "{mismatch}");
        let missing = error(&dir.path().join("absent.pem"), &key_path);
        assert!(missing.contains("absent.pem"), "{missing}");
        Ok(())
    }
}
