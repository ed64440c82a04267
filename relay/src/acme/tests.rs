use std::time::{Duration, SystemTime};

use super::{
    config::Challenge,
    responder::{self, Responses},
    stored::{Folder, Issued},
    table::{Entry, State, Table},
};

/// A certificate for `names`, valid through 2030's first quarter (90 days).
fn issued(names: &[&str]) -> anyhow::Result<(Issued, String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params.not_before = rcgen::date_time_ymd(2030, 1, 1);
    params.not_after = rcgen::date_time_ymd(2030, 4, 1);
    let cert = params.self_signed(&key)?;
    let (chain, key) = (cert.pem(), key.serialize_pem());
    Ok((Issued::from_pem(chain.as_bytes(), key.as_bytes(), "test.pem".as_ref())?, chain, key))
}

#[test]
fn a_name_is_covered_by_its_own_certificate_or_its_parents_wildcard() -> anyhow::Result<()> {
    let mut table = Table::default();
    table.insert("app.burrow.test".into(), Entry::wanted(vec!["app.burrow.test".into()], Challenge::TlsAlpn01, false));
    let wildcard = vec!["*.burrow.test".into(), "burrow.test".into()];
    table.insert("*.burrow.test".into(), Entry::wanted(wildcard, Challenge::Dns01, true));
    let id = |name| table.covering(name).map(|(id, _)| id.to_owned());
    assert_eq!(id("app.burrow.test").as_deref(), Some("app.burrow.test"));
    assert_eq!(id("other.burrow.test").as_deref(), Some("*.burrow.test"));
    assert_eq!(id("burrow.test").as_deref(), Some("*.burrow.test"));
    // A wildcard stands for one label only, as in TLS.
    assert_eq!(id("a.b.burrow.test"), None);
    assert_eq!(id("example.org"), None);
    Ok(())
}

#[test]
fn failures_back_off_and_a_certificate_held_stays_served() -> anyhow::Result<()> {
    let (cert, _, _) = issued(&["app.burrow.test"])?;
    let (not_before, not_after) = (cert.not_before, cert.not_after);
    assert_eq!(not_after.duration_since(not_before)?, Duration::from_secs(90 * 86400));
    let mut entry = Entry::stored(cert, Challenge::TlsAlpn01);
    assert_eq!(entry.next_attempt, Some(not_before + Duration::from_secs(60 * 86400)), "two thirds into its life");
    assert!(!entry.due(SystemTime::now()));

    entry.failed("the CA is down".into());
    let first = entry.next_attempt.expect("a failure schedules a retry");
    entry.failed("the CA is still down".into());
    let second = entry.next_attempt.expect("a failure schedules a retry");
    assert!(second.duration_since(first)? >= Duration::from_secs(50), "the wait doubles");
    assert_eq!(entry.state, State::Failed);
    assert!(entry.issued.is_some(), "a failed renewal keeps the certificate");
    assert!(entry.due(second + Duration::from_secs(1)));
    Ok(())
}

#[test]
fn an_on_demand_name_that_failed_waits_for_a_visitor_not_the_timer() {
    let mut entry = Entry::wanted(vec!["app.burrow.test".into()], Challenge::TlsAlpn01, false);
    assert!(entry.due(SystemTime::now()), "a wanted name is ordered at once");
    entry.failed("refused".into());
    assert!(!entry.due(SystemTime::now() + Duration::from_secs(365 * 86400)));
}

#[test]
fn certificates_and_the_account_are_stored_per_ca_and_read_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let folder = Folder::new(dir.path(), "https://ca.test/dir");
    let (_, chain, key) = issued(&["*.burrow.test", "burrow.test"])?;
    folder.save_certificate("*.burrow.test", &chain, &key)?;
    let stored = folder.certificates()?;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, "*.burrow.test");
    assert_eq!(stored[0].1.names, ["*.burrow.test", "burrow.test"]);
    assert!(Folder::new(dir.path(), "https://other.test/dir").certificates()?.is_empty());
    for file in walk(dir.path())? {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file)?.permissions());
        assert_eq!(mode & 0o077, 0, "{} is private", file.display());
    }
    Ok(())
}

fn walk(dir: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        found.extend(if path.is_dir() { walk(&path)? } else { vec![path] });
    }
    Ok(found)
}

#[test]
fn a_tls_alpn_answer_is_served_until_its_order_ends() -> anyhow::Result<()> {
    let responses = std::sync::Arc::new(Responses::default());
    let answer = responses.answer_tls_alpn("app.burrow.test", &[7; 32])?;
    let key = responses.tls_alpn("app.burrow.test").expect("published");
    let (_, cert) = x509_parser::parse_x509_certificate(&key.cert[0])?;
    // id-pe-acmeIdentifier, critical, holding the digest (RFC 8737 section 3).
    let extension = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
        .expect("the acmeIdentifier extension");
    assert!(extension.critical);
    assert!(extension.value.ends_with(&[7; 32]));
    drop(answer);
    assert!(responses.tls_alpn("app.burrow.test").is_none());
    Ok(())
}

#[test]
fn dns_records_are_named_for_the_domain_a_wildcard_covers() {
    assert_eq!(responder::dns_record("*.burrow.test"), "_acme-challenge.burrow.test");
    assert_eq!(responder::dns_record("burrow.test"), "_acme-challenge.burrow.test");
}

#[test]
fn the_directory_aliases_name_lets_encrypts_directories() {
    let with = |directory: &str| super::AcmeConfig { directory: directory.into(), ..Default::default() };
    assert_eq!(with("production").directory_url(), "https://acme-v02.api.letsencrypt.org/directory");
    assert_eq!(with("staging").directory_url(), "https://acme-staging-v02.api.letsencrypt.org/directory");
    assert_eq!(with("https://127.0.0.1:14000/dir").directory_url(), "https://127.0.0.1:14000/dir");
    assert_eq!(super::AcmeConfig::default().directory_url(), "https://acme-v02.api.letsencrypt.org/directory");
}
