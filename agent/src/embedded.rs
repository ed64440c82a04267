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
        ..RelayConfig::default()
    };
    let relay = Relay::bind(relay_config)?;
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
