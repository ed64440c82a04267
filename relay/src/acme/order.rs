//! One order, from names to a signed certificate: publish each name's challenge answer, tell
//! the CA it is ready, wait for its checks, then finalize with a new key.

use std::{path::PathBuf, sync::Arc, time::Duration};

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, Order, OrderStatus, RetryPolicy,
};

use super::{
    config::Challenge,
    responder::{self, Answer, ResponseError, Responses},
};
use crate::store::{AcmeShare, ChallengeKey};

/// How long the CA may take to check the challenges, and then to sign.
const CHECKS_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub(crate) enum OrderError {
    #[error(transparent)]
    Acme(#[from] instant_acme::Error),
    #[error(transparent)]
    Response(#[from] ResponseError),
    #[error("the CA offers no {0} challenge for {1}")]
    NoChallenge(&'static str, String),
    #[error("the CA will not authorize {0}: it is {1:?}")]
    Unauthorized(String, AuthorizationStatus),
    #[error("the CA refused the order: {0}")]
    Invalid(String),
    #[error("publish the challenge answer in the fleet's store")]
    Fleet(#[source] anyhow::Error),
}

/// What an order needs besides its names: how to answer and where answers are served.
pub(crate) struct Answering<'a> {
    pub(crate) challenge: Challenge,
    pub(crate) responses: Arc<Responses>,
    pub(crate) dns_hook: Option<PathBuf>,
    /// The fleet's store, where every relay finds the answers too: the CA's check may reach
    /// any of them.
    pub(crate) fleet: Option<&'a dyn AcmeShare>,
}

/// A certificate chain and its private key, as PEM.
pub(crate) struct Signed {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
}

/// Orders a certificate for `names` (the first is the subject) and waits until it is signed.
pub(crate) async fn order(
    account: &Account,
    names: &[String],
    answering: &Answering<'_>,
) -> Result<Signed, OrderError> {
    let identifiers: Vec<Identifier> = names.iter().map(|name| Identifier::Dns(name.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut published = Published::default();
    let result = answer_and_finalize(&mut order, answering, &mut published).await;
    published.withdraw(answering).await;
    result
}

async fn answer_and_finalize(
    order: &mut Order,
    answering: &Answering<'_>,
    published: &mut Published,
) -> Result<Signed, OrderError> {
    answer_challenges(order, answering, published).await?;
    let retries = RetryPolicy::new().timeout(CHECKS_TIMEOUT);
    match order.poll_ready(&retries).await? {
        OrderStatus::Ready => {}
        _ => return Err(OrderError::Invalid(why_invalid(order).await)),
    }
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&retries).await?;
    Ok(Signed { chain_pem, key_pem })
}

/// Challenge answers served while the order waits: dropped or withdrawn when it ends.
#[derive(Default)]
struct Published {
    answers: Vec<Answer>,
    /// Answers published in the fleet's store.
    shared: Vec<ChallengeKey>,
    /// TXT records set through the DNS hook, with their values.
    records: Vec<(String, String)>,
}

impl Published {
    async fn withdraw(&mut self, answering: &Answering<'_>) {
        self.answers.clear();
        if let Some(fleet) = answering.fleet {
            for challenge in self.shared.drain(..) {
                // Left behind, it goes with this relay's lease.
                if let Err(e) = fleet.remove_answer(&challenge).await {
                    tracing::debug!(?challenge, "removing the fleet's copy of an answer failed: {e:#}");
                }
            }
        }
        let Some(hook) = &answering.dns_hook else { return };
        for (record, value) in self.records.drain(..) {
            if let Err(e) = responder::run_dns_hook(hook, "clear", &record, &value).await {
                tracing::warn!("removing the DNS-01 record failed: {:#}", anyhow::Error::from(e));
            }
        }
    }
}

/// Publishes the answer to each pending authorization's challenge and tells the CA to check.
async fn answer_challenges(
    order: &mut Order,
    answering: &Answering<'_>,
    published: &mut Published,
) -> Result<(), OrderError> {
    let (kind, name) = match answering.challenge {
        Challenge::TlsAlpn01 => (ChallengeType::TlsAlpn01, "tls-alpn-01"),
        Challenge::Http01 => (ChallengeType::Http01, "http-01"),
        Challenge::Dns01 => (ChallengeType::Dns01, "dns-01"),
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            // Checked for an earlier order, and still good.
            AuthorizationStatus::Valid => continue,
            status => return Err(OrderError::Unauthorized(authorization.identifier().to_string(), status)),
        }
        let identifier = authorization.identifier().to_string();
        let mut challenge =
            authorization.challenge(kind.clone()).ok_or_else(|| OrderError::NoChallenge(name, identifier.clone()))?;
        let key_authorization = challenge.key_authorization();
        match answering.challenge {
            Challenge::TlsAlpn01 => {
                let digest = key_authorization.digest();
                let answer = answering.responses.answer_tls_alpn(&identifier, digest.as_ref())?;
                published.answers.push(answer);
                share_answer(answering, published, ChallengeKey::TlsAlpn(identifier), &hex::encode(digest)).await?;
            }
            Challenge::Http01 => {
                published.answers.push(answering.responses.answer_http(&challenge.token, key_authorization.as_str()));
                let key = ChallengeKey::Http(challenge.token.clone());
                share_answer(answering, published, key, key_authorization.as_str()).await?;
            }
            Challenge::Dns01 => {
                let hook = answering.dns_hook.as_deref().expect("validated: dns-01 is configured with a dns_hook");
                let (record, value) = (responder::dns_record(&identifier), key_authorization.dns_value());
                responder::run_dns_hook(hook, "set", &record, &value).await?;
                published.records.push((record, value));
            }
        }
        challenge.set_ready().await?;
    }
    Ok(())
}

/// Publishes an answer in the fleet's store, where there is one, before the CA is told to
/// check: its check may reach any relay.
async fn share_answer(
    answering: &Answering<'_>,
    published: &mut Published,
    challenge: ChallengeKey,
    answer: &str,
) -> Result<(), OrderError> {
    let Some(fleet) = answering.fleet else { return Ok(()) };
    fleet.put_answer(&challenge, answer).await.map_err(OrderError::Fleet)?;
    published.shared.push(challenge);
    Ok(())
}

/// The CA's reasons for an invalid order, from its authorizations' failed challenges.
async fn why_invalid(order: &mut Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        let identifier = authorization.identifier().to_string();
        if let Ok(state) = authorization.refresh().await {
            let errors = state.challenges.iter().filter_map(|c| c.error.as_ref());
            reasons.extend(errors.map(|problem| format!("{identifier}: {problem}")));
        }
    }
    if reasons.is_empty() { "the order is invalid".into() } else { reasons.join("; ") }
}
