//! Steady HTTPS load on one name, each request on a new connection (so each sees the
//! certificate served at that moment), counting failures and the certificates seen.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::{Acme, WEB_PAGE};

/// Requests one load loop sends at most, and the longest it runs: a bound if nothing stops it.
const MAX_REQUESTS: usize = 20_000;
const MAX_TIME: Duration = Duration::from_secs(120);

#[derive(Debug, Default)]
pub(crate) struct Served {
    pub(crate) ok: usize,
    pub(crate) failed: Vec<String>,
}

pub(crate) struct Load {
    loops: JoinSet<()>,
    stop: CancellationToken,
    served: Arc<Mutex<Served>>,
    /// The SHA-256 of the leaf certificate the last request saw.
    leaf: watch::Receiver<Option<String>>,
}

impl Load {
    pub(crate) fn start(acme: &Acme, host: &str, loops: usize) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls_without_resumption(&acme.issuer_root)?)
            .resolve(host, ([127, 0, 0, 1], acme.https).into())
            .pool_max_idle_per_host(0)
            .tls_info(true)
            .timeout(Duration::from_secs(30))
            .build()?;
        let url = format!("https://{host}:{}/", acme.https);
        let (leaf_seen, leaf) = watch::channel(None);
        let (stop, served) = (CancellationToken::new(), Arc::new(Mutex::new(Served::default())));
        let mut set = JoinSet::new();
        for _ in 0..loops {
            let (client, url, stop, served, leaf_seen) =
                (client.clone(), url.clone(), stop.clone(), served.clone(), leaf_seen.clone());
            set.spawn(async move {
                let started = tokio::time::Instant::now();
                for _ in 0..MAX_REQUESTS {
                    if stop.is_cancelled() || started.elapsed() > MAX_TIME {
                        return;
                    }
                    let outcome = request(&client, &url).await;
                    let mut served = served.lock().expect("no test code panics while holding it");
                    match outcome {
                        Ok(leaf) => {
                            served.ok += 1;
                            leaf_seen.send_replace(Some(leaf));
                        }
                        Err(e) => served.failed.push(format!("{e:#}")),
                    }
                }
            });
        }
        Ok(Self { loops: set, stop, served, leaf })
    }

    /// The next leaf certificate seen that is not `previous`.
    pub(crate) async fn next_serial_other_than(
        &self,
        previous: Option<&str>,
        within: Duration,
    ) -> anyhow::Result<String> {
        let mut leaf = self.leaf.clone();
        let seen = tokio::time::timeout(within, leaf.wait_for(|l| l.is_some() && l.as_deref() != previous)).await;
        match seen {
            Ok(Ok(leaf)) => Ok(leaf.clone().expect("waited for Some")),
            _ => {
                let served = self.served.lock().expect("no test code panics while holding it");
                let failures = &served.failed[..served.failed.len().min(3)];
                anyhow::bail!(
                    "no certificate other than {previous:?} within {within:?}: {} ok, {failures:?}",
                    served.ok
                )
            }
        }
    }

    pub(crate) async fn stop(mut self) -> anyhow::Result<Served> {
        self.stop.cancel();
        while let Some(done) = self.loops.join_next().await {
            done?;
        }
        Ok(std::mem::take(&mut *self.served.lock().expect("the loops are over")))
    }
}

/// Trusts only `root`, and makes a full handshake every time: a resumed session would carry
/// the certificate of the session it resumes, not the one served now.
fn tls_without_resumption(root: &std::path::Path) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(root)?)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// One GET on a new connection; the SHA-256 of the leaf certificate it was served.
async fn request(client: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let response = client.get(url).send().await?;
    let leaf = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .map(|der| testkit::http_apps::hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref()))
        .ok_or_else(|| anyhow::anyhow!("no TLS information"))?;
    let status = response.status();
    let body = response.text().await?;
    anyhow::ensure!(status == 200 && body == WEB_PAGE, "{status}: {body}");
    Ok(leaf)
}
