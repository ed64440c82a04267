//! Certificates from an ACME CA (Let's Encrypt by default) for the HTTPS port: the relay's
//! own names at start, each tunnel's name on demand at its first handshake, or one wildcard
//! through DNS-01; renewed at two thirds of their life and kept in the data directory.
//!
//! Only names that are tunnels (live or reserved) are ever ordered: that check keeps strangers
//! from spending the relay's rate limit at the CA by sending made-up SNI names.

mod config;
mod fleet;
mod order;
mod renewal;
mod responder;
mod stored;
mod table;
mod task;

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::SystemTime,
};

use burrow_common::sync::lock;
use rustls::sign::CertifiedKey;
use tokio::sync::{Semaphore, mpsc, watch};

pub use self::config::{AcmeConfig, Challenge};
pub(crate) use self::{responder::ACME_TLS_ALPN, table::CertificateView};
use self::{
    responder::Responses,
    stored::{Folder, StoredError},
    table::{Entry, State, Table},
};
use crate::store::{ChallengeKey, Store};

/// Names asked for on demand that the order task has not picked up yet; more are dropped
/// (their handshakes get the fallback certificate).
const WANTS_QUEUE: usize = 1024;

/// Whether a name's certificate can be served, is on its way, or will not come soon.
#[derive(Debug, PartialEq, Eq)]
enum Readiness {
    Ready,
    Pending,
    /// Failed lately: the name waits for its backoff, with the fallback certificate.
    Unavailable,
    Unknown,
}

/// The relay's ACME state: the certificates, the challenge answers being served, and the
/// queue of names asked for, which one task ([`Acme::run`]) orders.
pub(crate) struct Acme {
    config: AcmeConfig,
    folder: Folder,
    table: Mutex<Table>,
    responses: Arc<Responses>,
    wants: mpsc::Sender<String>,
    wanted: Mutex<Option<mpsc::Receiver<String>>>,
    /// Bumped whenever an entry changes, for handshakes waiting on a name.
    changed: watch::Sender<u64>,
    account: tokio::sync::OnceCell<instant_acme::Account>,
    /// The relay's store: in a fleet, where certificates and challenge answers are shared.
    store: Arc<dyn Store>,
    /// Reads of another relay's challenge answer in flight: anyone can ask for one, and
    /// each costs the fleet's store a read.
    fleet_lookups: Semaphore,
}

impl Acme {
    /// Loads what the data directory holds for this CA; nothing touches the network yet.
    pub(crate) fn load(
        config: &AcmeConfig,
        domain: &str,
        hostnames: &[String],
        data_dir: &std::path::Path,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Self>, StoredError> {
        let folder = Folder::new(data_dir, config.directory_url());
        let (wants, wanted) = mpsc::channel(WANTS_QUEUE);
        let acme = Self {
            config: config.clone(),
            table: Mutex::new(Table::default()),
            responses: Arc::default(),
            wants,
            wanted: Mutex::new(Some(wanted)),
            changed: watch::Sender::new(0),
            account: tokio::sync::OnceCell::new(),
            folder,
            store,
            fleet_lookups: Semaphore::new(fleet::LOOKUPS),
        };
        for (id, issued) in acme.folder.certificates()? {
            tracing::info!(names = ?issued.names, "serving a stored certificate");
            let challenge = acme.challenge_for(&issued.names);
            acme.table().insert(id, Entry::stored(issued, challenge));
        }
        acme.want_standing(domain, hostnames);
        Ok(Arc::new(acme))
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    /// How a certificate for `names` is checked: DNS-01 only where it must (a wildcard), as
    /// the hook publishes records for the relay's domain and no one else's.
    fn challenge_for(&self, names: &[String]) -> Challenge {
        match self.config.challenge {
            Challenge::Dns01 if !names.iter().any(|n| n.starts_with("*.")) => Challenge::TlsAlpn01,
            challenge => challenge,
        }
    }

    /// The certificates ordered at start: `domain` with the relay's own DNS `hostnames`, and
    /// with DNS-01 the wildcard for every tunnel.
    fn want_standing(&self, domain: &str, hostnames: &[String]) {
        let mut own = vec![domain.to_owned()];
        let dns_names = hostnames.iter().filter(|h| h.parse::<std::net::IpAddr>().is_err());
        own.extend(dns_names.filter(|h| *h != domain).cloned());
        let standing = match self.config.challenge {
            Challenge::Dns01 => vec![vec![format!("*.{domain}"), domain.to_owned()], own[1..].to_vec()],
            _ => vec![own],
        };
        let mut table = self.table();
        for names in standing.into_iter().filter(|names| !names.is_empty()) {
            let held = table.covering(&names[0]).filter(|(_, entry)| same_names(&entry.names, &names));
            match held.map(|(id, _)| id.to_owned()) {
                Some(id) => table.get_mut(&id).expect("found just now under the same lock").standing = true,
                None => {
                    let challenge = self.challenge_for(&names);
                    table.insert(names[0].clone(), Entry::wanted(names, challenge, true));
                }
            }
        }
    }

    /// The certificate to serve for `server_name`, if the CA gave one.
    pub(crate) fn certificate_for(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let table = self.table();
        let (_, entry) = table.covering(server_name)?;
        entry.issued.as_ref().map(|issued| issued.key.clone())
    }

    /// The certificate answering the CA's TLS-ALPN-01 check of `server_name`.
    pub(crate) fn challenge_certificate(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        self.responses.tls_alpn(server_name)
    }

    /// The key authorization answering the CA's HTTP-01 check for `token`: this relay's, or
    /// another relay's of the fleet.
    pub(crate) async fn http_answer(&self, token: &str) -> Option<String> {
        if let Some(answer) = self.responses.http(token) {
            return Some(answer);
        }
        let base64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if token.is_empty() || token.len() > fleet::MAX_TOKEN_LEN || !token.chars().all(base64url) {
            return None;
        }
        self.fleet_answer(&ChallengeKey::Http(token.to_owned())).await
    }

    /// Gets `name` a certificate if it has none, waiting up to `acme.handshake_wait`. The
    /// caller has checked that `name` is a tunnel's.
    pub(crate) async fn ensure(&self, name: &str) {
        let mut changed = self.changed.subscribe();
        if self.readiness(name) == Readiness::Unknown && self.wants.try_send(name.to_owned()).is_err() {
            tracing::warn!(name, "too many certificates wanted at once; serving the fallback certificate");
            return;
        }
        let arrived = async {
            while matches!(self.readiness(name), Readiness::Pending | Readiness::Unknown) {
                if changed.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(self.config.handshake_wait, arrived).await.is_err() {
            tracing::info!(name, wait = ?self.config.handshake_wait, "no certificate yet; serving the fallback certificate");
        }
    }

    fn readiness(&self, name: &str) -> Readiness {
        let table = self.table();
        let Some((_, entry)) = table.covering(name) else { return Readiness::Unknown };
        match entry.state {
            _ if entry.issued.is_some() => Readiness::Ready,
            State::Wanted | State::Ordering => Readiness::Pending,
            State::Valid => Readiness::Ready,
            State::Failed if entry.next_attempt.is_some_and(|at| at <= SystemTime::now()) => Readiness::Unknown,
            State::Failed => Readiness::Unavailable,
        }
    }

    /// Every managed certificate, for `/api/certificates`, the dashboard and `/metrics`.
    pub(crate) fn certificates(&self) -> Vec<CertificateView> {
        let table = self.table();
        let mut views: Vec<CertificateView> = table.entries().map(|(_, entry)| entry.into()).collect();
        views.sort_by(|a, b| a.names.cmp(&b.names));
        views
    }

    fn notify(&self) {
        self.changed.send_modify(|version| *version += 1);
    }
}

fn same_names(a: &[String], b: &[String]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    b.sort();
    a == b
}

#[cfg(test)]
mod tests;
