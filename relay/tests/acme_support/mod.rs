//! One ACME test's world: Pebble, the compiled relay configured for it, agents exposing a
//! small web server, and curl or a load of HTTPS requests as visitors.

#[cfg(feature = "etcd")]
pub(crate) mod fleet;
mod load;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
pub(crate) use load::Load;
use testkit::{
    pebble::{Pebble, PebbleOptions},
    processes::{AgentBinary, RelayBinary, agent_bin},
};
use tokio::{io::AsyncWriteExt, net::TcpListener, process::Command};

pub(crate) const WEB_PAGE: &str = "served from the laptop over trusted HTTPS\n";
/// The relay's configured token, so agents can reconnect to a restarted relay.
const TOKEN: &str = "acme-test-token-0123456789abcdef";

pub(crate) struct Acme {
    pebble: Option<Pebble>,
    relay: Option<RelayBinary>,
    http: u16,
    pub(crate) https: u16,
    web: SocketAddr,
    /// A copy of the root that signs this Pebble's certificates: it outlives Pebble.
    pub(crate) issuer_root: PathBuf,
    dir: tempfile::TempDir,
}

impl Acme {
    /// Pebble and a relay for `burrow.test` getting its certificates there by `challenge`;
    /// `None` (said on stdout) where Pebble is not installed and not required.
    pub(crate) async fn start(challenge: &str, validity: Option<Duration>) -> anyhow::Result<Option<Self>> {
        Self::start_with(challenge, validity, "").await
    }

    /// As [`Acme::start`], with `settings` (top-level relay.toml lines) added.
    pub(crate) async fn start_with(
        challenge: &str,
        validity: Option<Duration>,
        settings: &str,
    ) -> anyhow::Result<Option<Self>> {
        if !Pebble::available()? {
            println!("skipped: pebble is not installed (scripts/test installs it)");
            return Ok(None);
        }
        // Held while Pebble picks its own ports, so none of them is one of these.
        let held = [free_listener()?, free_listener()?];
        let [http, https] = [held[0].local_addr()?.port(), held[1].local_addr()?.port()];
        let options = PebbleOptions::new(http, https);
        let pebble = Pebble::start(validity.map_or(options.clone(), |v| options.validity(v))).await?;
        drop(held);
        let dir = tempfile::tempdir()?;
        let issuer_root = dir.path().join("issuer-root.pem");
        std::fs::write(&issuer_root, pebble.issuer_root_pem())?;
        write_config(dir.path(), &pebble, challenge, settings)?;
        let web = web_server().await?;
        let relay = launch_relay(dir.path(), http, https).await?;
        Ok(Some(Self { pebble: Some(pebble), relay: Some(relay), http, https, web, issuer_root, dir }))
    }

    pub(crate) fn relay(&self) -> anyhow::Result<&RelayBinary> {
        self.relay.as_ref().context("the relay is running")
    }

    /// Stops the relay and starts it again on the same ports and data directory.
    pub(crate) async fn restart_relay(&mut self) -> anyhow::Result<()> {
        if let Some(relay) = self.relay.take() {
            relay.process.terminate().await?;
        }
        self.relay = Some(launch_relay(self.dir.path(), self.http, self.https).await?);
        Ok(())
    }

    pub(crate) fn stop_pebble(&mut self) {
        self.pebble = None;
    }

    /// An agent serving the web page at `name.burrow.test`.
    pub(crate) async fn agent(&self, name: &str) -> anyhow::Result<AgentBinary> {
        self.agent_with(TOKEN, name).await
    }

    /// An agent with `token` serving the web page at `name` (a subdomain or a hostname).
    pub(crate) async fn agent_with(&self, token: &str, name: &str) -> anyhow::Result<AgentBinary> {
        launch_agent(self.relay()?, token, self.web, name).await
    }

    /// `relay token add NAME --hostnames PATTERNS` on the running relay's data directory.
    pub(crate) async fn add_token(&self, name: &str, hostnames: &str) -> anyhow::Result<String> {
        let output = Command::new(testkit::processes::relay_bin()?)
            .args(["token", "add", name, "--hostnames", hostnames, "--data-dir"])
            .arg(self.dir.path().join("data"))
            .output()
            .await?;
        anyhow::ensure!(output.status.success(), "token add: {}", String::from_utf8_lossy(&output.stderr));
        Ok(String::from_utf8(output.stdout)?.lines().next().context("the token on stdout")?.to_owned())
    }

    pub(crate) fn orders(&self) -> anyhow::Result<usize> {
        self.pebble.as_ref().context("Pebble is running")?.orders_created()
    }

    /// What Pebble and the relay logged, for failure messages.
    pub(crate) fn logs(&self) -> String {
        let relay = self.relay.as_ref().map(|r| r.process.stderr_text()).unwrap_or_default();
        format!("{}\nrelay:\n{relay}", self.pebble.as_ref().map(Pebble::logs).unwrap_or_default())
    }

    /// `/api/certificates`.
    pub(crate) async fn certificates(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        certificates(self.relay()?).await
    }

    /// The certificate whose first name is `name`, once it is in `state`.
    pub(crate) async fn wait_state(
        &self,
        name: &str,
        state: &str,
        within: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        wait_state(self.relay()?, name, state, within, || self.logs()).await
    }

    pub(crate) async fn wait_valid(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        self.wait_state(name, "valid", Duration::from_secs(30)).await
    }
}

fn write_config(dir: &Path, pebble: &Pebble, challenge: &str, settings: &str) -> anyhow::Result<()> {
    let config = format!(
        "{settings}\n[acme]\nemail = \"ops@burrow.test\"\ndirectory = \"{}\"\nca_root = \"{}\"\nchallenge = \"{challenge}\"\n\
         dns_hook = \"{}\"\nhandshake_wait = \"20s\"\n",
        pebble.directory_url(),
        pebble.listener_ca_pem_path().display(),
        pebble.dns_hook_path().display(),
    );
    Ok(std::fs::write(dir.join("relay.toml"), config)?)
}

async fn launch_relay(dir: &Path, http: u16, https: u16) -> anyhow::Result<RelayBinary> {
    let mut command = RelayBinary::loopback_command(&dir.join("data"))?;
    // The ACME task logs each order at info: what a failure message needs.
    command.env("BURROW_RELAY_TOKEN", TOKEN).env("RUST_LOG", "warn,relay::acme=info");
    command.arg("--config").arg(dir.join("relay.toml"));
    command.args(["--domain", "burrow.test", "--admin-listen", "127.0.0.1:0"]);
    command.args(["--http-listen", &format!("127.0.0.1:{http}"), "--https-listen", &format!("127.0.0.1:{https}")]);
    RelayBinary::launch(&mut command).await
}

/// A port free on loopback, held until the relay is about to bind it for Pebble to
/// validate on.
fn free_listener() -> anyhow::Result<std::net::TcpListener> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?)
}

/// A local web server answering every request with [`WEB_PAGE`].
async fn web_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                testkit::read_head(&mut tcp).await?;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    WEB_PAGE.len()
                );
                tcp.write_all(format!("{head}{WEB_PAGE}").as_bytes()).await?;
                anyhow::Ok(tcp.shutdown().await?)
            });
        }
    });
    Ok(addr)
}

/// GETs `https://HOST:PORT/` with curl trusting only Pebble's root; the body of a 200, or
/// curl's own error.
pub(crate) async fn curl_https(acme: &Acme, host: &str) -> anyhow::Result<String> {
    curl_https_at(&acme.issuer_root, "127.0.0.1", acme.https, host).await
}

/// GETs `https://HOST:PORT/` from the relay at `ip`, with curl trusting only the root at
/// `issuer_root`; the body of a 200, or curl's own error.
async fn curl_https_at(issuer_root: &Path, ip: &str, https: u16, host: &str) -> anyhow::Result<String> {
    let root = issuer_root.display().to_string();
    let resolve = format!("{host}:{https}:{ip}");
    let url = format!("https://{host}:{https}/");
    let (code, body) = testkit::curl::curl(&["--cacert", &root, "--resolve", &resolve, &url]).await?;
    anyhow::ensure!(code == 200, "curl {host}: {code} {body}");
    Ok(body)
}

/// An agent of `relay` with `token`, serving the web page at `web` as `name` (a subdomain or
/// a hostname).
async fn launch_agent(relay: &RelayBinary, token: &str, web: SocketAddr, name: &str) -> anyhow::Result<AgentBinary> {
    let mut command = Command::new(agent_bin()?);
    command.env("BURROW_TOKEN", token).env("RUST_LOG", "warn");
    command.args(["--relay", &relay.addr.to_string(), "--fingerprint", &relay.fingerprint.to_string()]);
    command.args(["--local", &web.to_string(), "--http", name, "--inspect", "off"]);
    AgentBinary::launch(&mut command).await
}

/// `relay`'s `/api/certificates`.
async fn certificates(relay: &RelayBinary) -> anyhow::Result<Vec<serde_json::Value>> {
    let (status, body) = testkit::admin::get(relay.admin()?, "/api/certificates", None).await?;
    anyhow::ensure!(status == 200, "/api/certificates answered {status}: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// `relay`'s certificate whose first name is `name`, once it is in `state`; `logs` for the
/// failure message.
async fn wait_state(
    relay: &RelayBinary,
    name: &str,
    state: &str,
    within: Duration,
    logs: impl Fn() -> String,
) -> anyhow::Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + within;
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    loop {
        pace.tick().await;
        let entry = certificates(relay).await?.into_iter().find(|c| c["names"][0] == name);
        match entry {
            Some(entry) if entry["state"] == state => return Ok(entry),
            entry if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("{name} not {state} within {within:?}: {entry:?}\n{}", logs())
            }
            _ => {}
        }
    }
}
