//! What the relays of a fleet share about ACME, so that one relay orders each certificate
//! for all of them and any relay answers the CA's checks: behind DNS round robin or a load
//! balancer, the CA's validation reaches whichever relay the name resolves to, rarely the
//! one that ordered.

use serde::{Deserialize, Serialize};

use super::StoreFuture;

/// A certificate as the fleet keeps it: the CA's chain and its private key, PEM.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct SharedCertificate {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
}

/// One challenge answer the CA may ask any relay for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChallengeKey {
    /// HTTP-01, by the challenge's token; the answer is the key authorization.
    Http(String),
    /// TLS-ALPN-01, by the name checked; the answer is the key authorization's SHA-256, hex.
    TlsAlpn(String),
}

/// Certificates, order locks and challenge answers in the fleet's store. A certificate's
/// `id` says which CA directory it is from and its first name, so staging and production
/// never mix.
pub(crate) trait AcmeShare: Send + Sync {
    /// The certificate the fleet keeps under `id`.
    fn certificate<'a>(&'a self, id: &'a str) -> StoreFuture<'a, anyhow::Result<Option<SharedCertificate>>>;

    /// Keeps `certificate` under `id` for every relay, replacing what was there.
    fn put_certificate<'a>(
        &'a self,
        id: &'a str,
        certificate: &'a SharedCertificate,
    ) -> StoreFuture<'a, anyhow::Result<()>>;

    /// Forgets the certificate under `id`: no tunnel of the fleet has the name any more.
    fn remove_certificate<'a>(&'a self, id: &'a str) -> StoreFuture<'a, anyhow::Result<()>>;

    /// Takes the fleet's one right to order `id` now, for as long as this relay lives or
    /// until [`AcmeShare::end_order`]; `false` while another relay has it.
    fn start_order<'a>(&'a self, id: &'a str) -> StoreFuture<'a, anyhow::Result<bool>>;

    /// Gives up the right to order `id`, if this relay has it.
    fn end_order<'a>(&'a self, id: &'a str) -> StoreFuture<'a, anyhow::Result<()>>;

    /// Publishes an answer for every relay to serve, for as long as this relay lives or until
    /// [`AcmeShare::remove_answer`].
    fn put_answer<'a>(&'a self, challenge: &'a ChallengeKey, answer: &'a str) -> StoreFuture<'a, anyhow::Result<()>>;

    fn remove_answer<'a>(&'a self, challenge: &'a ChallengeKey) -> StoreFuture<'a, anyhow::Result<()>>;

    /// The answer some relay of the fleet published.
    fn answer<'a>(&'a self, challenge: &'a ChallengeKey) -> StoreFuture<'a, anyhow::Result<Option<String>>>;
}
