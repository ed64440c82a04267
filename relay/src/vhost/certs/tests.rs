use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use burrow_common::tls::{self, Identity};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, ServerName},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{
    HttpsCert,
    generated::{CERT_FILE, KEY_FILE, covers},
    provider,
};

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
    let first = HttpsCert::load("burrow.test", dir.path(), None, None)?;
    let again = HttpsCert::load("burrow.test", dir.path(), None, None)?;
    assert_eq!(first.fingerprint(), again.fingerprint());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(dir.path().join(KEY_FILE))?.permissions().mode() & 0o777, 0o600);
    }

    let moved = HttpsCert::load("other.test", dir.path(), None, None)?;
    assert_ne!(moved.fingerprint(), first.fingerprint());
    assert!(covers(&moved.leaf_der(), "other.test")?);
    assert!(!covers(&moved.leaf_der(), "burrow.test")?);
    // The subdomain of the old domain is not enough either.
    let sub = HttpsCert::load("a.other.test", dir.path(), None, None)?;
    assert_ne!(sub.fingerprint(), moved.fingerprint());
    Ok(())
}

#[test]
fn localhost_certificate_is_reused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let first = HttpsCert::load("localhost", dir.path(), None, None)?;
    assert_eq!(HttpsCert::load("localhost", dir.path(), None, None)?.fingerprint(), first.fingerprint());
    Ok(())
}

#[test]
fn a_corrupt_generated_certificate_is_replaced() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let first = HttpsCert::load("burrow.test", dir.path(), None, None)?;
    fs::write(dir.path().join(CERT_FILE), "not PEM")?;
    assert_ne!(HttpsCert::load("burrow.test", dir.path(), None, None)?.fingerprint(), first.fingerprint());
    Ok(())
}

#[tokio::test]
async fn a_client_trusting_the_generated_certificate_reaches_any_subdomain() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cert = HttpsCert::load("burrow.test", dir.path(), None, None)?;
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
    let cert = HttpsCert::follow(&cert_path, &key_path, Duration::ZERO, None)?;
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
    let cert = HttpsCert::follow(&cert_path, &key_path, Duration::from_secs(3600), None)?;
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
    let cert = HttpsCert::follow(&cert_path, &key_path, Duration::ZERO, None)?;
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

    let error = |cert: &Path, key: &Path| match HttpsCert::load("burrow.test", dir.path(), Some((cert, key)), None) {
        Ok(_) => String::from("loaded"),
        Err(e) => format!("{:#}", anyhow::Error::from(e)),
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
