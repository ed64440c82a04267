//! Two relays of one fleet (etcd) getting certificates from Pebble, which checks every
//! challenge at 127.0.0.1 only: the relay at 127.0.0.2 is one the CA's check never reaches,
//! as with DNS round robin, where the check reaches whichever relay the name resolves to.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Context;
use testkit::{
    etcd::Etcd,
    pebble::{Pebble, PebbleOptions},
    processes::{AgentBinary, RelayBinary, relay_bin},
};
use tokio::process::Command;

use super::{curl_https_at, free_listener, launch_agent, wait_state, web_server, write_config};

/// Where the CA's checks arrive, and where they never do.
pub(crate) const CHECKED: &str = "127.0.0.1";
pub(crate) const UNCHECKED: &str = "127.0.0.2";

pub(crate) struct AcmeFleet {
    pub(crate) pebble: Pebble,
    /// The relay at [`CHECKED`], then the one at [`UNCHECKED`].
    pub(crate) relays: [RelayBinary; 2],
    token: String,
    pub(crate) https: u16,
    web: SocketAddr,
    pub(crate) issuer_root: std::path::PathBuf,
    _etcd: Etcd,
    _dirs: [tempfile::TempDir; 2],
}

impl AcmeFleet {
    /// etcd, Pebble and both relays, for `burrow.test` by `challenge`; `None` (said on stdout)
    /// where etcd or Pebble is not installed and not required.
    pub(crate) async fn start(challenge: &str) -> anyhow::Result<Option<Self>> {
        if !Etcd::available()? || !Pebble::available()? {
            println!("skipped: etcd or pebble is not installed (scripts/test installs both)");
            return Ok(None);
        }
        let etcd = Etcd::start().await?;
        let held = [free_listener()?, free_listener()?];
        let [http, https] = [held[0].local_addr()?.port(), held[1].local_addr()?.port()];
        let pebble = Pebble::start(PebbleOptions::new(http, https)).await?;
        drop(held);
        let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
        let token = add_token(&etcd, dirs[0].path())?;
        let mut relays = Vec::new();
        for (ip, dir) in [CHECKED, UNCHECKED].into_iter().zip(&dirs) {
            write_config(dir.path(), &pebble, challenge, "")?;
            let agent_port = testkit::udp_tools::free_tcp_and_udp_port().await?;
            relays.push(launch(dir.path(), &etcd, ip, agent_port, (http, https)).await?);
        }
        let relays: [RelayBinary; 2] = relays.try_into().map_err(|_| anyhow::anyhow!("two relays"))?;
        let issuer_root = dirs[0].path().join("issuer-root.pem");
        std::fs::write(&issuer_root, pebble.issuer_root_pem())?;
        let web = web_server().await?;
        Ok(Some(Self { pebble, relays, token, https, web, issuer_root, _etcd: etcd, _dirs: dirs }))
    }

    /// An agent dialing the relay at [`UNCHECKED`] and serving the web page at
    /// `name.burrow.test` through both.
    pub(crate) async fn agent(&self, name: &str) -> anyhow::Result<AgentBinary> {
        launch_agent(&self.relays[1], &self.token, self.web, name).await
    }

    /// Waits until the relay at [`CHECKED`] has the agent's session too.
    pub(crate) async fn agent_on_both(&self) -> anyhow::Result<()> {
        let admin = self.relays[0].admin()?;
        let linked = async {
            loop {
                let (status, body) = testkit::admin::get(admin, "/api/agents", None).await?;
                let agents: serde_json::Value =
                    serde_json::from_str(&body).with_context(|| format!("{status} {body}"))?;
                if agents.as_array().is_some_and(|agents| !agents.is_empty()) {
                    return anyhow::Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(15), linked).await.context("the agent on both relays")?
    }

    /// The certificate `name` on the relay at `ip`, once valid.
    pub(crate) async fn wait_valid(&self, ip: &str, name: &str) -> anyhow::Result<serde_json::Value> {
        wait_state(self.relay_at(ip), name, "valid", Duration::from_secs(30), || self.logs()).await
    }

    /// GETs `https://HOST/` from the relay at `ip`, trusting only Pebble's root.
    pub(crate) async fn curl_https(&self, ip: &str, host: &str) -> anyhow::Result<String> {
        curl_https_at(&self.issuer_root, ip, self.https, host).await.with_context(|| self.logs())
    }

    pub(crate) fn relay_at(&self, ip: &str) -> &RelayBinary {
        if ip == CHECKED { &self.relays[0] } else { &self.relays[1] }
    }

    pub(crate) fn logs(&self) -> String {
        let [checked, unchecked] = &self.relays;
        format!(
            "{}\nrelay at {CHECKED}:\n{}\nrelay at {UNCHECKED}:\n{}",
            self.pebble.logs(),
            checked.process.stderr_text(),
            unchecked.process.stderr_text()
        )
    }
}

/// `relay token add alice` against the fleet's etcd, printing the token once.
fn add_token(etcd: &Etcd, data_dir: &Path) -> anyhow::Result<String> {
    let output = std::process::Command::new(relay_bin()?)
        .args(["token", "add", "alice", "--store", &etcd.url()])
        .arg("--data-dir")
        .arg(data_dir)
        .output()?;
    anyhow::ensure!(output.status.success(), "token add: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// A relay of the fleet answering at `ip` only, its agent port advertised to agents.
async fn launch(
    dir: &Path,
    etcd: &Etcd,
    ip: &str,
    agent_port: u16,
    (http, https): (u16, u16),
) -> anyhow::Result<RelayBinary> {
    let mut command = Command::new(relay_bin()?);
    // The ACME task logs each order at info: what a failure message needs.
    command.env("RUST_LOG", "warn,relay::acme=info");
    command.arg("--config").arg(dir.join("relay.toml")).arg("--data-dir").arg(dir.join("data"));
    command.args(["--store", &etcd.url(), "--domain", "burrow.test", "--public-bind", ip]);
    command.args(["--listen", &format!("{ip}:{agent_port}"), "--advertise", &format!("{ip}:{agent_port}")]);
    command.args(["--http-listen", &format!("{ip}:{http}"), "--https-listen", &format!("{ip}:{https}")]);
    command.args(["--admin-listen", &format!("{ip}:0")]);
    RelayBinary::launch(&mut command).await
}
