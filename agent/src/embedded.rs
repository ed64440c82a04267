//! A relay inside the agent's own process, for `agent --local 8080` with no `--relay`: the
//! relay crate's code, bound to all interfaces so teammates on the LAN can connect.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use burrow_common::tls::Trust;
use relay::{Relay, RelayConfig};

use crate::{Plan, config::AgentConfig, config::RelayAddr};

/// `~/.local/share/burrow/embedded`: keeps the certificate and port reservations, so a
/// restarted agent gets the same public ports.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("burrow").join("embedded")
}

/// Binds the embedded relay and returns it with the plan that connects to it.
pub fn prepare(config: &AgentConfig, data_dir: PathBuf) -> anyhow::Result<(Plan, Relay)> {
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
    let plan = Plan::new(config, addr, Trust::Pinned(relay.fingerprint()), token);
    Ok((plan, relay))
}

/// This machine's non-loopback addresses, where teammates can reach the public ports.
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
