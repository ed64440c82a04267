//! `relay invite NAME`: a new token for a teammate, printed as a ready-to-paste agent command
//! and the equivalent `agent.toml`, with this relay's address and certificate fingerprint.

use anyhow::Context;
use burrow_common::{Secret, protocol::DEFAULT_RELAY_PORT};

use crate::{
    RelayConfig, files, identity,
    tokens::{self, Limits},
};

/// Stands in for the relay's address when the configuration does not name it.
const ADDRESS_PLACEHOLDER: &str = "RELAY_ADDRESS";

pub(crate) async fn invite(config: &RelayConfig, name: &str, limits: Limits<'_>) -> anyhow::Result<()> {
    let dir = &config.data_dir;
    files::create_private_dir(dir).with_context(|| format!("create data directory {}", dir.display()))?;
    // The certificate the relay will serve: created now if the relay has never run.
    let fingerprint = identity::load_or_create_certificate(config)?.fingerprint();
    let token = tokens::open_admin(config).await?.add(name, limits).await?;
    let relay = agent_relay_arg(config, config.listen, ADDRESS_PLACEHOLDER);
    let allowed = allowed_places(config, limits);
    print!("{}", invitation(name, &allowed, &relay, &fingerprint.to_string(), &token));
    if config.hostname.is_empty() && config.listen.ip().is_unspecified() {
        eprintln!(
            "replace {ADDRESS_PLACEHOLDER} with this relay's public name or IP (set `hostname` to have it filled in)"
        );
    }
    Ok(())
}

/// How an agent names this relay listening on `listen`: its public hostname, or the address
/// it listens on (`unnamed` when that is a wildcard), with the port only when it is not the
/// default.
pub(crate) fn agent_relay_arg(config: &RelayConfig, listen: std::net::SocketAddr, unnamed: &str) -> String {
    let host = match config.hostname.first() {
        Some(host) => host.clone(),
        None if listen.ip().is_unspecified() => unnamed.into(),
        None => listen.ip().to_string(),
    };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    match listen.port() {
        DEFAULT_RELAY_PORT => host,
        port => format!("{host}:{port}"),
    }
}

/// What the token may use, for the operator to pass on with the invitation.
fn allowed_places(config: &RelayConfig, limits: Limits<'_>) -> String {
    let ports = tokens::describe_ports(limits.ports, config.ports);
    let subdomains = tokens::describe_patterns(limits.subdomains);
    let hostnames = tokens::describe_list(limits.hostnames);
    format!("This token may use ports {ports}, subdomains {subdomains} and hostnames {hostnames}.")
}

fn invitation(name: &str, allowed: &str, relay: &str, fingerprint: &str, token: &Secret) -> String {
    let token = token.expose();
    format!(
        "Invitation for {name:?}. The token is shown only now; the relay keeps only its hash.\n\
         {allowed}\n\
         \n\
         Run, with the local port to expose:\n\
         \n  BURROW_TOKEN={token} agent --relay {relay} --fingerprint {fingerprint} --local 8080\n\
         \n\
         or put this in agent.toml and run `agent --config agent.toml`:\n\
         \n  relay = \"{relay}\"\n  token = \"{token}\"\n  fingerprint = \"{fingerprint}\"\n\
         \n  [[tunnels]]\n  local = 8080\n"
    )
}
