//! Certificates in a fleet of relays sharing one store: one relay orders each name for all
//! (the others wait for its turn to end and serve what it shared), and a relay answers the
//! CA's check with another relay's answer, since the check reaches whichever relay the name
//! resolves to.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::{Acme, responder, stored::Issued};
use crate::store::{AcmeShare, ChallengeKey, SharedCertificate, Store};

/// Reads of the fleet's challenge answers at once, for checks this relay has no answer to.
pub(super) const LOOKUPS: usize = 4;

/// The longest HTTP-01 token looked up in the fleet's store: the CA's are 43 characters.
pub(super) const MAX_TOKEN_LEN: usize = 128;

/// How often a relay waiting for another relay of the fleet to order a certificate looks for
/// it in the store.
const ORDER_POLL: Duration = Duration::from_secs(1);

/// Whose turn it is to get a certificate in a fleet.
pub(super) enum Turn {
    /// Another relay shared one that is good for a while yet, here with what it holds.
    Adopt(SharedCertificate, Issued),
    Order(OrderTurn),
}

/// This relay's turn to order a certificate for the fleet, given up when dropped, however
/// the order ended (a timeout drops it mid-way).
pub(super) struct OrderTurn {
    store: Arc<dyn Store>,
    shared_id: String,
}

impl OrderTurn {
    fn new(store: Arc<dyn Store>, shared_id: &str) -> Self {
        Self { store, shared_id: shared_id.to_owned() }
    }
}

impl Drop for OrderTurn {
    fn drop(&mut self) {
        // Outside a runtime (the relay is gone) the turn goes with the lease.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (store, shared_id) = (self.store.clone(), std::mem::take(&mut self.shared_id));
        runtime.spawn(async move {
            let Some(fleet) = store.acme_share() else { return };
            // Left held, it goes with this relay's lease.
            if let Err(e) = fleet.end_order(&shared_id).await {
                tracing::debug!(shared_id, "giving up the fleet's order turn failed: {e:#}");
            }
        });
    }
}

/// The certificate for exactly `names` the fleet keeps under `shared_id`, and what it holds,
/// if it is not due for renewal yet.
async fn fleet_certificate(
    fleet: &dyn AcmeShare,
    shared_id: &str,
    names: &[String],
) -> Option<(SharedCertificate, Issued)> {
    let certificate = match fleet.certificate(shared_id).await {
        Ok(certificate) => certificate?,
        Err(e) => {
            tracing::debug!(shared_id, "reading the fleet's certificate failed: {e:#}");
            return None;
        }
    };
    let issued =
        Issued::from_pem(certificate.chain_pem.as_bytes(), certificate.key_pem.as_bytes(), shared_id.as_ref()).ok()?;
    let usable = super::same_names(&issued.names, names) && issued.renew_at() > SystemTime::now();
    usable.then_some((certificate, issued))
}

impl Acme {
    /// Before a TLS-ALPN-01 check of `server_name` this relay has no answer for: another
    /// relay's answer from the fleet's store, served (by [`Acme::challenge_certificate`])
    /// until the returned guard is dropped.
    pub(crate) async fn borrow_fleet_answer(&self, server_name: &str) -> Option<responder::Answer> {
        // rustls passes on only SNI that is a DNS name, so it is a key segment as it is.
        if self.responses.tls_alpn(server_name).is_some() {
            return None;
        }
        let digest = self.fleet_answer(&ChallengeKey::TlsAlpn(server_name.to_owned())).await?;
        let digest = hex::decode(digest).ok()?;
        self.responses.answer_tls_alpn(server_name, &digest).ok()
    }

    pub(super) async fn fleet_answer(&self, challenge: &ChallengeKey) -> Option<String> {
        let fleet = self.store.acme_share()?;
        let _permit = self.fleet_lookups.acquire().await.ok()?;
        match fleet.answer(challenge).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::debug!(?challenge, "reading the fleet's challenge answer failed: {e:#}");
                None
            }
        }
    }

    /// Forgets the fleet's copy of a certificate no tunnel of the fleet keeps any more (the
    /// store says so for every relay).
    pub(super) async fn forget_shared(&self, id: &str) {
        let Some(fleet) = self.store.acme_share() else { return };
        if let Err(e) = fleet.remove_certificate(&self.shared_id(id)).await {
            tracing::debug!(id, "removing the fleet's copy of the certificate failed: {e:#}");
        }
    }

    /// A certificate's id in the fleet's store: the CA directory's tag, then its first name.
    pub(super) fn shared_id(&self, id: &str) -> String {
        format!("{}/{id}", self.folder.ca())
    }

    /// In a fleet one relay orders a name at a time, for all: the certificate another relay
    /// shared, while it is not due for renewal, else this relay's turn to order.
    pub(super) async fn fleet_turn(
        &self,
        fleet: &dyn AcmeShare,
        shared_id: &str,
        names: &[String],
    ) -> anyhow::Result<Turn> {
        let mut told = false;
        loop {
            let turn = fleet.start_order(shared_id).await?.then(|| OrderTurn::new(self.store.clone(), shared_id));
            // Looked at once this relay has the turn too: the last holder may just have shared.
            if let Some((certificate, issued)) = fleet_certificate(fleet, shared_id, names).await {
                return Ok(Turn::Adopt(certificate, issued));
            }
            if let Some(turn) = turn {
                return Ok(Turn::Order(turn));
            }
            if !told {
                tracing::info!(?names, "another relay of the fleet is ordering this certificate; waiting for it");
                told = true;
            }
            tokio::time::sleep(ORDER_POLL).await;
        }
    }
}
