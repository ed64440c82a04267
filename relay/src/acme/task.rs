//! The one task that talks to the CA: it takes names asked for on demand, starts orders when
//! certificates fall due (new, renewal, retry), at most a few at a time, and records each
//! outcome where handshakes read it.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context;
use instant_acme::{Account, NewAccount};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    Acme,
    fleet::Turn,
    order::{self, Answering},
    renewal,
    stored::Issued,
    table::{Entry, State},
};
use crate::{Shared, metrics::Metrics, store::SharedCertificate};

/// Whether `name` still belongs to a tunnel, live or reserved.
async fn is_tunnel_host(shared: &Shared, name: &str) -> bool {
    match &shared.vhost {
        Some(vhost) => vhost.is_tunnel_host(name).await,
        None => false,
    }
}

/// Orders running at once: a burst of new tunnels queues instead of flooding the CA.
const MAX_ORDERS: usize = 4;

/// The longest one order may take, checks and signing included.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// How long the timer sleeps when nothing falls due.
const IDLE_RECHECK: Duration = Duration::from_secs(3600);

/// How an order task ended.
enum Outcome {
    /// The certificate, and when the CA would like it renewed.
    Issued(Issued, Option<SystemTime>),
    Failed(anyhow::Error),
    /// An on-demand name no tunnel holds or keeps any more: not renewed, forgotten.
    Unwanted,
}

impl Acme {
    /// Orders certificates as they fall due until `cancel`.
    pub(crate) async fn run(self: Arc<Self>, shared: Arc<Shared>, cancel: CancellationToken) {
        let Some(mut wanted) = burrow_common::sync::lock(&self.wanted).take() else { return };
        let mut orders: JoinSet<(String, Outcome)> = JoinSet::new();
        loop {
            self.start_due(&mut orders, &shared);
            let wake = self.table().next_due().and_then(|at| at.duration_since(SystemTime::now()).ok());
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(name) = wanted.recv() => self.want(name),
                Some(done) = orders.join_next() => match done {
                    Ok((id, outcome)) => self.record(&id, outcome, &shared.metrics),
                    Err(e) => tracing::warn!("an ACME order task failed: {e}"),
                },
                () = tokio::time::sleep(wake.unwrap_or(IDLE_RECHECK)) => {}
            }
        }
        orders.shutdown().await;
    }

    /// A name asked for at a handshake: a new entry, or a failed one whose backoff is over.
    fn want(&self, name: String) {
        let mut table = self.table();
        match table.covering(&name) {
            None => {
                let challenge = self.challenge_for(std::slice::from_ref(&name));
                table.insert(name.clone(), Entry::wanted(vec![name], challenge, false));
            }
            Some((id, entry)) if entry.state == State::Failed && entry.issued.is_none() => {
                let id = id.to_owned();
                let entry = table.get_mut(&id).expect("found just now under the same lock");
                entry.state = State::Wanted;
                entry.next_attempt = Some(SystemTime::now());
            }
            Some(_) => {}
        }
    }

    fn start_due(self: &Arc<Self>, orders: &mut JoinSet<(String, Outcome)>, shared: &Arc<Shared>) {
        let now = SystemTime::now();
        let mut table = self.table();
        for id in table.due(now).into_iter().take(MAX_ORDERS.saturating_sub(orders.len())) {
            let entry = table.get_mut(&id).expect("listed just now under the same lock");
            entry.state = State::Ordering;
            entry.next_attempt = None;
            let (names, challenge, standing) = (entry.names.clone(), entry.challenge, entry.standing);
            let (acme, shared) = (self.clone(), shared.clone());
            orders.spawn(async move {
                if !standing && !is_tunnel_host(&shared, &names[0]).await {
                    acme.forget_shared(&id).await;
                    return (id, Outcome::Unwanted);
                }
                let ordered = tokio::time::timeout(ORDER_TIMEOUT, acme.order_and_store(&id, &names, challenge));
                let outcome = match ordered.await {
                    Ok(Ok((issued, renew_at))) => Outcome::Issued(issued, renew_at),
                    Ok(Err(e)) => Outcome::Failed(e),
                    Err(_) => Outcome::Failed(anyhow::anyhow!("no certificate within {ORDER_TIMEOUT:?}")),
                };
                (id, outcome)
            });
        }
        drop(table);
        self.notify();
    }

    async fn order_and_store(
        &self,
        id: &str,
        names: &[String],
        challenge: super::Challenge,
    ) -> anyhow::Result<(Issued, Option<SystemTime>)> {
        let account = self.account().await?;
        let fleet = self.store.acme_share();
        let shared_id = self.shared_id(id);
        let turn = match fleet {
            Some(fleet) => match self.fleet_turn(fleet, &shared_id, names).await? {
                Turn::Adopt(certificate, issued) => {
                    tracing::info!(?names, "serving the certificate another relay of the fleet ordered");
                    return self.keep(account, id, &certificate, issued).await;
                }
                Turn::Order(turn) => Some(turn),
            },
            None => None,
        };
        tracing::info!(?names, challenge = challenge.as_str(), "ordering a certificate");
        let answering =
            Answering { challenge, responses: self.responses.clone(), dns_hook: self.config.dns_hook.clone(), fleet };
        let signed = order::order(account, names, &answering).await?;
        let certificate = SharedCertificate { chain_pem: signed.chain_pem, key_pem: signed.key_pem };
        if let Some(fleet) = fleet
            && let Err(e) = fleet.put_certificate(&shared_id, &certificate).await
        {
            tracing::warn!(?names, "sharing the certificate with the fleet failed; each relay orders its own: {e:#}");
        }
        drop(turn);
        let issued = Issued::from_pem(certificate.chain_pem.as_bytes(), certificate.key_pem.as_bytes(), id.as_ref())?;
        self.keep(account, id, &certificate, issued).await
    }

    /// Keeps the certificate in the data directory, so a restart serves it without the
    /// CA or the fleet, and asks the CA when to renew it.
    async fn keep(
        &self,
        account: &Account,
        id: &str,
        certificate: &SharedCertificate,
        issued: Issued,
    ) -> anyhow::Result<(Issued, Option<SystemTime>)> {
        self.folder.save_certificate(id, &certificate.chain_pem, &certificate.key_pem)?;
        let renew_at = renewal::suggested(account, &issued).await;
        Ok((issued, renew_at))
    }

    fn record(&self, id: &str, outcome: Outcome, metrics: &Metrics) {
        let mut table = self.table();
        let Some(entry) = table.get_mut(id) else { return };
        match outcome {
            Outcome::Issued(issued, renew_at) => {
                let not_after = humantime::format_rfc3339_seconds(issued.not_after);
                tracing::info!(names = ?entry.names, %not_after, "certificate issued");
                metrics.acme_orders.get_or_create(&crate::metrics::ORDER_ISSUED).inc();
                entry.issued_now(issued, renew_at);
            }
            Outcome::Unwanted => {
                tracing::info!(names = ?entry.names, "no tunnel holds this name any more; its certificate is not renewed");
                table.remove(id);
                if let Err(e) = self.folder.remove_certificate(id) {
                    tracing::warn!("removing the stored certificate failed: {:#}", anyhow::Error::from(e));
                }
            }
            Outcome::Failed(e) => {
                let keeps = if entry.issued.is_some() { "; serving the current certificate" } else { "" };
                tracing::warn!(names = ?entry.names, "certificate order failed{keeps}: {e:#}");
                metrics.acme_orders.get_or_create(&crate::metrics::ORDER_FAILED).inc();
                entry.failed(format!("{e:#}"));
            }
        }
        drop(table);
        self.notify();
    }

    /// The CA account: the stored one, or a new one registered and stored.
    async fn account(&self) -> anyhow::Result<&Account> {
        self.account.get_or_try_init(|| self.open_account()).await
    }

    async fn open_account(&self) -> anyhow::Result<Account> {
        let builder = match &self.config.ca_root {
            Some(root) => {
                Account::builder_with_root(root).with_context(|| format!("acme.ca_root {}", root.display()))?
            }
            None => Account::builder().context("the system's root certificates")?,
        };
        let directory = self.config.directory_url();
        if let Some(credentials) = self.folder.account()? {
            return builder
                .from_credentials(credentials)
                .await
                .with_context(|| format!("the ACME directory {directory}"));
        }
        let contact = format!("mailto:{}", self.config.email.as_deref().unwrap_or_default());
        let new = NewAccount { contact: &[&contact], terms_of_service_agreed: true, only_return_existing: false };
        let (account, credentials) = builder
            .create(&new, directory.to_owned(), None)
            .await
            .with_context(|| format!("register an account at {directory}"))?;
        self.folder.save_account(&credentials)?;
        tracing::info!(directory, "registered an ACME account");
        Ok(account)
    }
}
