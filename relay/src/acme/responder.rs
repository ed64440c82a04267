//! Answers to the CA's challenges while an order waits for them: a TLS-ALPN-01 certificate per
//! name (RFC 8737), an HTTP-01 key authorization per token, a DNS-01 TXT record through the
//! operator's hook.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use burrow_common::sync::lock;
use rustls::{pki_types::PrivateKeyDer, sign::CertifiedKey};

/// The ALPN protocol the CA's TLS-ALPN-01 validation offers.
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The longest a DNS hook may take to publish or remove a record.
const HOOK_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ResponseError {
    #[error("make the TLS-ALPN-01 certificate for {0}")]
    AlpnCertificate(String, #[source] rcgen::Error),
    #[error("use the TLS-ALPN-01 certificate for {0}")]
    AlpnKey(String, #[source] rustls::Error),
    #[error("start the DNS hook {}", .0.display())]
    HookStart(PathBuf, #[source] std::io::Error),
    #[error("the DNS hook {} {action} {record} failed ({status}): {stderr}", .path.display())]
    HookFailed { path: PathBuf, action: &'static str, record: String, status: std::process::ExitStatus, stderr: String },
    #[error("the DNS hook {} {action} {record} did not finish within {HOOK_TIMEOUT:?}", .path.display())]
    HookTimeout { path: PathBuf, action: &'static str, record: String },
}

/// The challenge answers the relay's ports serve now; an entry lives while its order waits.
#[derive(Default)]
pub(crate) struct Responses {
    tls_alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    http: Mutex<HashMap<String, String>>,
}

impl Responses {
    /// The certificate that answers a TLS-ALPN-01 validation of `name`.
    pub(crate) fn tls_alpn(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.tls_alpn).get(name).cloned()
    }

    /// The key authorization for an HTTP-01 `token`.
    pub(crate) fn http(&self, token: &str) -> Option<String> {
        lock(&self.http).get(token).cloned()
    }

    /// Serves a TLS-ALPN-01 answer for `name` until the returned guard is dropped.
    pub(crate) fn answer_tls_alpn(self: &Arc<Self>, name: &str, digest: &[u8]) -> Result<Answer, ResponseError> {
        let key = Arc::new(alpn_certificate(name, digest)?);
        lock(&self.tls_alpn).insert(name.to_owned(), key.clone());
        Ok(Answer { responses: self.clone(), kind: AnswerKind::TlsAlpn(name.to_owned(), key) })
    }

    /// Serves an HTTP-01 answer until the returned guard is dropped.
    pub(crate) fn answer_http(self: &Arc<Self>, token: &str, key_authorization: &str) -> Answer {
        lock(&self.http).insert(token.to_owned(), key_authorization.to_owned());
        Answer { responses: self.clone(), kind: AnswerKind::Http(token.to_owned()) }
    }
}

/// One published answer, withdrawn when dropped.
pub(crate) struct Answer {
    responses: Arc<Responses>,
    kind: AnswerKind,
}

enum AnswerKind {
    TlsAlpn(String, Arc<CertifiedKey>),
    Http(String),
}

impl Drop for Answer {
    fn drop(&mut self) {
        match &self.kind {
            AnswerKind::TlsAlpn(name, key) => {
                // Only this answer: another order, or another relay's answer borrowed for
                // one check, may have replaced it since.
                let mut answers = lock(&self.responses.tls_alpn);
                if answers.get(name).is_some_and(|served| Arc::ptr_eq(served, key)) {
                    answers.remove(name);
                }
            }
            AnswerKind::Http(token) => drop(lock(&self.responses.http).remove(token)),
        }
    }
}

/// A self-signed certificate for `name` carrying the acmeIdentifier extension with `digest`,
/// the SHA-256 of the key authorization.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<CertifiedKey, ResponseError> {
    let failed = |e| ResponseError::AlpnCertificate(name.to_owned(), e);
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(failed)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let cert = params.self_signed(&key).map_err(failed)?;
    let private = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    // Not `CertifiedKey::from_der`: its key check parses the certificate, and webpki refuses
    // the critical acmeIdentifier extension that RFC 8737 requires.
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| ResponseError::AlpnKey(name.to_owned(), e))?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

/// The TXT record name a DNS-01 challenge for `identifier` is answered at.
pub(crate) fn dns_record(identifier: &str) -> String {
    format!("_acme-challenge.{}", identifier.trim_start_matches("*."))
}

/// Runs the operator's hook: `HOOK set|clear RECORD VALUE`.
pub(crate) async fn run_dns_hook(
    hook: &Path,
    action: &'static str,
    record: &str,
    value: &str,
) -> Result<(), ResponseError> {
    let mut command = tokio::process::Command::new(hook);
    command.args([action, record, value]).kill_on_drop(true).stdin(std::process::Stdio::null());
    let running = command.output();
    let output = match tokio::time::timeout(HOOK_TIMEOUT, running).await {
        Ok(output) => output.map_err(|e| ResponseError::HookStart(hook.to_path_buf(), e))?,
        Err(_) => {
            return Err(ResponseError::HookTimeout { path: hook.to_path_buf(), action, record: record.to_owned() });
        }
    };
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().chars().take(500).collect();
    Err(ResponseError::HookFailed {
        path: hook.to_path_buf(),
        action,
        record: record.to_owned(),
        status: output.status,
        stderr,
    })
}
