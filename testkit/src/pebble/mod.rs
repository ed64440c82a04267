//! A real ACME server for the relay's certificate tests, offline: Debian's Pebble 2.4 and
//! pebble-challtestsrv as the DNS server Pebble resolves through, both on loopback only and
//! killed when the [`Pebble`] value is dropped.
//!
//! ```no_run
//! # async fn example(http_port: u16, https_port: u16) -> anyhow::Result<()> {
//! use testkit::pebble::{Pebble, PebbleOptions};
//! if !Pebble::available()? {
//!     return Ok(()); // said why on stdout
//! }
//! let options = PebbleOptions::new(http_port, https_port).validity(std::time::Duration::from_secs(90));
//! let pebble = Pebble::start(options).await?;
//! // The relay's ACME settings: pebble.directory_url(), pebble.listener_ca_pem_path() as the
//! // CA its client trusts, pebble.dns_hook_path() for DNS-01. Visitors trust
//! // pebble.issuer_root_pem(); pebble.certificates_issued()? counts what Pebble signed.
//! # Ok(()) }
//! ```

mod daemon;
mod files;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;

use crate::{
    STEP,
    daemon::{Daemon, free_tcp_ports, on_free_ports},
    processes::required,
    udp_tools::free_tcp_and_udp_port,
};

/// Pebble 2.4's log line for each new order (wfe/wfe.go).
const ORDER_CREATED: &str = "Added order ";
/// Pebble 2.4's log line for each certificate it signs (ca/ca.go).
const CERTIFICATE_ISSUED: &str = "Issued certificate serial ";

/// How a [`Pebble`] validates and issues.
#[derive(Debug, Clone)]
pub struct PebbleOptions {
    /// Where Pebble's validation authority connects for HTTP-01: the relay's public HTTP port.
    pub http_port: u16,
    /// Where it connects for TLS-ALPN-01: the relay's public HTTPS port.
    pub tls_port: u16,
    /// How long issued certificates are valid, in whole seconds; Pebble's default is five years.
    pub validity: Option<Duration>,
    /// Percent of new orders for a name that reuse its valid authorization instead of a new
    /// challenge. Pebble's default, 50, would make a renewal's validation a coin toss.
    pub authz_reuse_percent: u8,
}

impl PebbleOptions {
    /// Validation on these ports (the test picks them free first), default validity, and
    /// a new challenge for every order.
    pub fn new(http_port: u16, tls_port: u16) -> Self {
        Self { http_port, tls_port, validity: None, authz_reuse_percent: 0 }
    }

    /// Issued certificates expire `validity` after issuance, as a renewal test wants.
    pub fn validity(mut self, validity: Duration) -> Self {
        self.validity = Some(validity);
        self
    }
}

/// Pebble and pebble-challtestsrv, running. Their output is in log files whose paths are
/// printed (and the files kept) if the test panics while this value is alive.
pub struct Pebble {
    pebble: Daemon,
    challtestsrv: Daemon,
    acme: SocketAddr,
    challtestsrv_api: SocketAddr,
    dns: SocketAddr,
    listener_ca: PathBuf,
    dns_hook: PathBuf,
    issuer_root: String,
    issuer_root_path: PathBuf,
    // Dropped last: the daemons log into it until they are killed.
    dir: tempfile::TempDir,
}

impl Pebble {
    /// Whether `pebble`, `pebble-challtestsrv` and `curl` (for the DNS hook) are installed;
    /// an error where the environment requires them ([`crate::processes::REQUIRE_ENV`]).
    pub fn available() -> anyhow::Result<bool> {
        Ok(required("pebble")? && required("pebble-challtestsrv")? && required("curl")?)
    }

    /// Starts both programs on free loopback ports and returns once Pebble's directory
    /// answers, with the root that signs this run's certificates fetched. A port taken by a
    /// test beside this one between its pick and the daemon's bind means a fresh start on
    /// new ports.
    pub async fn start(options: PebbleOptions) -> anyhow::Result<Self> {
        on_free_ports(|| Self::start_on_free_ports(&options)).await
    }

    async fn start_on_free_ports(options: &PebbleOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("burrow-pebble-").tempdir()?;
        let cert = files::write_listener_cert(dir.path())?;
        let dns = free_tcp_and_udp_port().await?;
        // The DNS port is free again once picked, so the kernel may hand it out once more.
        let [acme, management, api] = loop {
            let ports = free_tcp_ports().await?;
            if !ports.contains(&dns) {
                break ports;
            }
        };
        let dns = SocketAddr::from((Ipv4Addr::LOCALHOST, dns));
        let config = files::write_config(dir.path(), &files::ConfigPorts { acme, management }, &cert, options)?;
        let api = SocketAddr::from((Ipv4Addr::LOCALHOST, api));
        let dns_hook = files::write_dns_hook(dir.path(), api)?;
        let challtestsrv = Daemon::challtestsrv(dir.path(), dns, api)?;
        let pebble = Daemon::pebble(dir.path(), &config, dns, options)?;
        let mut started = Self {
            pebble,
            challtestsrv,
            acme: SocketAddr::from((Ipv4Addr::LOCALHOST, acme)),
            challtestsrv_api: api,
            dns,
            listener_ca: cert.ca,
            dns_hook,
            issuer_root: String::new(),
            issuer_root_path: dir.path().join("issuer-root.pem"),
            dir,
        };
        let ready = tokio::time::timeout(STEP, started.ready(management)).await;
        ready.context("Pebble not ready in time").and_then(|ready| ready).with_context(|| started.logs())?;
        Ok(started)
    }

    /// Waits until Pebble's directory, challtestsrv's API and its DNS server all answer,
    /// then fetches the issuer root from Pebble's management listener.
    async fn ready(&mut self, management: u16) -> anyhow::Result<()> {
        let client = crate::http::client_trusting(&std::fs::read(&self.listener_ca)?)?;
        let directory = self.directory_url();
        let api = self.challtestsrv_url();
        loop {
            self.pebble.alive()?;
            self.challtestsrv.alive()?;
            // Any answer from the API will do: it has no page at `/`.
            let api_up = client.get(&api).send().await.is_ok();
            if api_up && has_new_order(&client, &directory).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (pebble, challtestsrv) = (&mut self.pebble, &mut self.challtestsrv);
        crate::udp_tools::answering(self.dns, || pebble.alive().and_then(|_| challtestsrv.alive())).await?;
        let root = client.get(format!("https://127.0.0.1:{management}/roots/0")).send().await?;
        self.issuer_root = root.error_for_status()?.text().await.context("Pebble's issuer root")?;
        std::fs::write(&self.issuer_root_path, &self.issuer_root)?;
        Ok(())
    }

    /// `https://127.0.0.1:PORT/dir`, the ACME directory.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.acme)
    }

    /// The CA (PEM) that signed the certificate of Pebble's listeners: what an ACME client
    /// must trust to talk to the directory (the relay's `ca_root`).
    pub fn listener_ca_pem_path(&self) -> &Path {
        &self.listener_ca
    }

    /// The root (PEM) that signs this run's issued certificates; Pebble makes a new one at
    /// each start.
    pub fn issuer_root_pem(&self) -> &str {
        &self.issuer_root
    }

    /// [`Self::issuer_root_pem`] in a file, for `curl --cacert` or a browser's trust store.
    pub fn issuer_root_path(&self) -> &Path {
        &self.issuer_root_path
    }

    /// `http://127.0.0.1:PORT`, challtestsrv's management API (`/set-txt`, `/clear-txt`).
    pub fn challtestsrv_url(&self) -> String {
        format!("http://{}", self.challtestsrv_api)
    }

    /// The DNS server Pebble resolves through: every A query gets 127.0.0.1, TXT queries
    /// get what the hook set.
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns
    }

    /// An executable: `HOOK set NAME VALUE` or `HOOK clear NAME VALUE`, NAME the full TXT
    /// record name without its final dot. It exits non-zero, saying why on stderr, if
    /// challtestsrv does not take the change. `clear` removes every value of NAME.
    pub fn dns_hook_path(&self) -> &Path {
        &self.dns_hook
    }

    /// Orders Pebble has created so far, from its log.
    pub fn orders_created(&self) -> anyhow::Result<usize> {
        self.pebble.lines_with(ORDER_CREATED)
    }

    /// Certificates Pebble has issued so far, from its log. Pebble logs one as it signs it,
    /// a moment before the client downloads it.
    pub fn certificates_issued(&self) -> anyhow::Result<usize> {
        self.pebble.lines_with(CERTIFICATE_ISSUED)
    }

    pub fn pebble_log_path(&self) -> &Path {
        self.pebble.log()
    }

    pub fn challtestsrv_log_path(&self) -> &Path {
        self.challtestsrv.log()
    }

    /// Both logs, with their paths, for a failing test's message.
    pub fn logs(&self) -> String {
        [&self.pebble, &self.challtestsrv].map(Daemon::log_text).join("\n")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("Pebble's logs, kept: {} {}", self.pebble.log().display(), self.challtestsrv.log().display());
        }
    }
}

async fn has_new_order(client: &reqwest::Client, directory: &str) -> bool {
    let Ok(answer) = client.get(directory).send().await else { return false };
    let Ok(body) = answer.bytes().await else { return false };
    serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|dir| dir["newOrder"].is_string())
}
