//! HTTP tunnels for the end-to-end tests: a relay with a domain and its shared HTTP and HTTPS
//! ports (in process, or the compiled binary), a local web app with the routes the tests need,
//! WebSocket and TLS echo servers, and clients that reach any `NAME.burrow.test` on loopback
//! without DNS.

use std::{
    net::SocketAddr,
    ops::Deref,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use agent::{
    Plan, TunnelPlan,
    config::{AgentConfig, LocalTarget, Protocol, RelayAddr},
};
use anyhow::Context;
use burrow_common::{
    Fingerprint, PublicName, Secret,
    tls::{Trust, client_tls},
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, StatusCode, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use relay::{Relay, RelayConfig};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio::net::TcpStream;

use crate::{STEP, TestRelay, processes, relay_config};

/// The relays' domain: two labels, since webpki ignores a wildcard right under a single one.
pub const DOMAIN: &str = "burrow.test";

/// `NAME.burrow.test`.
pub fn host(name: &str) -> String {
    format!("{name}.{DOMAIN}")
}

/// An ephemeral port on loopback.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The test relay's config with the domain and both shared ports on ephemeral loopback ports.
pub fn http_relay_config(data_dir: &Path) -> RelayConfig {
    RelayConfig {
        domain: Some(DOMAIN.into()),
        http_listen: Some(loopback()),
        https_listen: Some(loopback()),
        ..relay_config(data_dir)
    }
}

/// A relay in this process serving HTTP tunnels; derefs to the [`TestRelay`] it also is.
pub struct HttpRelay {
    relay: TestRelay,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub data_dir: PathBuf,
}

impl Deref for HttpRelay {
    type Target = TestRelay;

    fn deref(&self) -> &TestRelay {
        &self.relay
    }
}

impl HttpRelay {
    pub async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(http_relay_config(data_dir)).await
    }

    pub async fn start_with(config: RelayConfig) -> anyhow::Result<Self> {
        let token = config.token.clone().context("test relays have a configured token")?;
        let data_dir = config.data_dir.clone();
        let relay = Relay::bind(config)?;
        let http = relay.http_addr().context("the config opens the HTTP port")?;
        let https = relay.https_addr().context("the config opens the HTTPS port")?;
        Ok(Self { relay: TestRelay::run(relay, token)?, http, https, data_dir })
    }

    /// The self-signed wildcard certificate the relay wrote when it bound its HTTPS port.
    pub fn https_cert_pem(&self) -> anyhow::Result<Vec<u8>> {
        let path = self.data_dir.join("https-cert.pem");
        std::fs::read(&path).with_context(|| format!("read {}", path.display()))
    }

    /// A client that reaches every `NAME.burrow.test` here and trusts only the relay's
    /// HTTPS certificate.
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        client_trusting(&self.https_cert_pem()?)
    }

    /// A client that reaches `host` (any name, a custom hostname say) on this relay's ports
    /// and over HTTPS accepts the relay's certificate by its fingerprint, whatever names it
    /// covers: the self-signed one names only the relay's domain.
    pub fn pinned_client(&self, host: &str) -> anyhow::Result<reqwest::Client> {
        let pem = self.https_cert_pem()?;
        let leaf = CertificateDer::from_pem_slice(&pem).context("the relay's HTTPS certificate")?;
        let mut tls = client_tls(&Trust::Pinned(Fingerprint::of(&leaf)))?;
        // Not the burrow ALPN, which would make the relay take the client for an agent.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(reqwest::Client::builder().use_preconfigured_tls(tls).resolve(host, loopback()).no_proxy().build()?)
    }

    /// `http://NAME.burrow.test:PORT/PATH` on the relay's HTTP port.
    pub fn http_url(&self, name: &str, path: &str) -> String {
        format!("http://{}:{}{path}", host(name), self.http.port())
    }

    /// `https://NAME.burrow.test:PORT/PATH` on the relay's HTTPS port.
    pub fn https_url(&self, name: &str, path: &str) -> String {
        format!("https://{}:{}{path}", host(name), self.https.port())
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.relay.stop().await
    }
}

/// A client for `NAME.burrow.test` on loopback that trusts the certificates in `pem` and no
/// others.
pub fn client_trusting(pem: &[u8]) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pem)?)
        .dns_resolver(Arc::new(Loopback))
        .no_proxy()
        .build()?)
}

/// Resolves every name under [`DOMAIN`] to loopback; the URL's port is kept.
struct Loopback;

impl reqwest::dns::Resolve for Loopback {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let under_domain = name.as_str().ends_with(&format!(".{DOMAIN}"));
        let name = name.as_str().to_string();
        Box::pin(async move {
            if !under_domain {
                return Err(format!("{name} is not under {DOMAIN}").into());
            }
            // Port 0 lets the URL's port through.
            let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(loopback()));
            Ok(addrs)
        })
    }
}

/// An HTTP tunnel named `name` to `local`, at `subdomain` or at a name the relay picks.
pub fn http_tunnel(name: &str, local: SocketAddr, subdomain: Option<&str>) -> TunnelPlan {
    TunnelPlan::http(name, target(local), subdomain)
}

/// A TLS passthrough tunnel named `name` to `local`, at `subdomain`.
pub fn tls_tunnel(name: &str, local: SocketAddr, subdomain: &str) -> TunnelPlan {
    TunnelPlan { protocol: Protocol::Tls, ..http_tunnel(name, local, Some(subdomain)) }
}

/// A tunnel like `tunnel` at the custom hostname `host` instead of a subdomain.
pub fn at_hostname(tunnel: TunnelPlan, host: &str) -> TunnelPlan {
    TunnelPlan { public_name: Some(PublicName::Hostname(host.into())), ..tunnel }
}

pub fn target(local: SocketAddr) -> LocalTarget {
    LocalTarget { host: local.ip().to_string(), port: local.port() }
}

/// The subdomain in a tunnel's URL, such as `brave-otter-k3x9m2qa` in
/// `https://brave-otter-k3x9m2qa.burrow.test:41234`.
pub fn subdomain_in(url: &str) -> anyhow::Result<String> {
    let authority = url.split_once("://").context("a scheme")?.1;
    let hostname = authority.split(':').next().unwrap_or(authority);
    let name = hostname.strip_suffix(&format!(".{DOMAIN}")).with_context(|| format!("{url} is under {DOMAIN}"))?;
    Ok(name.to_string())
}

/// A response, its body read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("{} is not JSON: {}", self.status, self.body))
    }
}

/// One visitor connection on which requests go one after another, each with the Host and
/// headers given, including what a high-level client would not send.
pub struct Visitor {
    sender: SendRequest<Full<Bytes>>,
}

impl Visitor {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        // Ends when the sender is dropped or the relay closes the connection.
        tokio::spawn(connection);
        Ok(Self { sender })
    }

    pub async fn get(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Answer> {
        let mut request = Request::get(path).header(hyper::header::HOST, host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::default())?;
        let exchange = async {
            self.sender.ready().await?;
            let (parts, body) = self.sender.send_request(request).await?.into_parts();
            let body = body.collect().await?.to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            anyhow::Ok(Answer { status: parts.status, headers: parts.headers, body })
        };
        tokio::time::timeout(STEP, exchange).await.context("request hung")?
    }
}

/// `GET path` with `Host: host` on a connection of its own.
pub async fn visit(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Answer> {
    Visitor::connect(addr).await?.get(host, path, headers).await
}

/// A reqwest response, its body read whole.
pub async fn answer(response: reqwest::Response) -> anyhow::Result<Answer> {
    let (status, headers) = (response.status(), response.headers().clone());
    let body = tokio::time::timeout(STEP, response.text()).await.context("body hung")??;
    Ok(Answer { status, headers, body })
}

/// The compiled relay with a domain and both shared ports, for tests that read its memory.
pub struct HttpRelayProcess {
    pub relay: processes::RelayBinary,
    pub http: SocketAddr,
    pub https: SocketAddr,
    _dir: tempfile::TempDir,
}

impl HttpRelayProcess {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut command = processes::RelayBinary::loopback_command(dir.path())?;
        command.args(["--admin-listen", "off", "--domain", DOMAIN]);
        command.args(["--http-listen", "127.0.0.1:0", "--https-listen", "127.0.0.1:0"]);
        let relay = processes::RelayBinary::launch(&mut command).await?;
        let http = relay.ready.http.context("the HTTP port is on")?;
        let https = relay.ready.https.context("the HTTPS port is on")?;
        Ok(Self { relay, http, https, _dir: dir })
    }

    /// A plan that reaches this relay with its token and pin.
    pub fn plan(&self, tunnels: Vec<TunnelPlan>) -> anyhow::Result<Plan> {
        let config = AgentConfig { reconnect_max_delay: Duration::from_millis(400), ..AgentConfig::default() };
        let relay = RelayAddr { host: self.relay.addr.ip().to_string(), port: self.relay.addr.port() };
        let token = Secret::new(self.relay.token()?);
        let mut plan = Plan::new(&config, relay, Trust::Pinned(self.relay.fingerprint), token);
        plan.tunnels = tunnels;
        Ok(plan)
    }
}
