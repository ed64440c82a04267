//! A relay inside the agent's own process, for `agent --local 8080` with no `--relay`: the
//! relay crate's code, bound to all interfaces so teammates on the LAN can connect. It is
//! the `embedded` cargo feature (on by default); a build without it needs `--relay`.

#[cfg(feature = "embedded")]
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

#[cfg(feature = "embedded")]
use burrow_common::{Secret, tls::Trust};
#[cfg(feature = "embedded")]
use relay::{Relay, RelayConfig};

#[cfg(feature = "embedded")]
use crate::{Plan, config::AgentConfig, config::RelayAddr};
#[cfg(not(feature = "embedded"))]
pub use left_out::{EmbeddedRelay, lan_addresses, prepare};

/// `~/.local/share/burrow/embedded`: keeps the certificate and port reservations, so a
/// restarted agent gets the same public ports.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("burrow").join("embedded")
}

/// The relay bound for this agent, and the token made for it at this start.
#[cfg(feature = "embedded")]
pub struct EmbeddedRelay {
    relay: Relay,
    token: Secret,
}

#[cfg(feature = "embedded")]
impl EmbeddedRelay {
    /// What the agent's ready file says about this relay.
    pub fn ready(&self) -> anyhow::Result<burrow_common::ready::RelayReady> {
        relay::cli::ready(&self.relay, Some(&self.token))
    }

    pub async fn run(self, cancel: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
        self.relay.run(cancel).await
    }
}

/// Binds the embedded relay and returns it with the plan that connects to it.
#[cfg(feature = "embedded")]
pub fn prepare(config: &AgentConfig, data_dir: PathBuf) -> anyhow::Result<(Plan, EmbeddedRelay)> {
    let token = relay::tokens::generate();
    let relay_config = RelayConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        data_dir,
        token: Some(token.clone()),
        // A relay on the same machine may already serve the default admin port.
        admin_listen: None,
        // Browsers and curl resolve every *.localhost name to this machine, no DNS needed.
        domain: Some("localhost".into()),
        ..RelayConfig::default()
    };
    let relay = match Relay::bind(relay_config.clone()) {
        Ok(relay) => relay,
        // Another embedded relay may hold the usual HTTP ports; any free ones will do.
        Err(e) if e.is_http_port_unavailable() => {
            let e = anyhow::Error::from(e);
            tracing::debug!("usual HTTP ports taken ({e:#}); using free ones");
            let any_port = Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
            Relay::bind(RelayConfig { http_listen: any_port, https_listen: any_port, ..relay_config })?
        }
        Err(e) => return Err(e.into()),
    };
    let addr = RelayAddr { host: Ipv4Addr::LOCALHOST.to_string(), port: relay.local_addr()?.port() };
    let plan = Plan::new(config, addr, Trust::Pinned(relay.fingerprint()), token.clone());
    Ok((plan, EmbeddedRelay { relay, token }))
}

/// This machine's non-loopback addresses, where teammates can reach the public ports.
#[cfg(feature = "embedded")]
pub fn lan_addresses() -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|iface| iface.ip())
        .filter(|ip| !ip.is_loopback() && !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// Stand-ins with the same names for a build without the relay crate: there is never an
/// embedded relay, and asking for one says how to do without.
#[cfg(not(feature = "embedded"))]
mod left_out {
    use std::{net::IpAddr, path::PathBuf};

    use burrow_common::ready::RelayReady;
    use tokio_util::sync::CancellationToken;

    use crate::{Plan, config::AgentConfig};

    /// No value of this type exists in this build.
    pub enum EmbeddedRelay {}

    impl EmbeddedRelay {
        pub fn ready(&self) -> anyhow::Result<RelayReady> {
            match *self {}
        }

        pub async fn run(self, _cancel: CancellationToken) -> anyhow::Result<()> {
            match self {}
        }
    }

    pub fn prepare(_config: &AgentConfig, _data_dir: PathBuf) -> anyhow::Result<(Plan, EmbeddedRelay)> {
        anyhow::bail!(
            "no --relay given, and this agent was built without an embedded relay \
             (cargo feature `embedded`): pass --relay HOST[:PORT]"
        )
    }

    pub fn lan_addresses() -> Vec<IpAddr> {
        Vec::new()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn without_the_feature_no_relay_means_a_clear_error() {
            let refused = prepare(&AgentConfig::default(), PathBuf::from("unused")).err().map(|e| e.to_string());
            assert!(refused.is_some_and(|e| e.contains("built without an embedded relay") && e.contains("--relay")));
        }
    }
}
