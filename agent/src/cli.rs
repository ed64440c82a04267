//! The `agent` command line.

use std::{io::IsTerminal, path::PathBuf};

use anyhow::Context;
use burrow_common::{Secret, ready::AgentReady};
use clap::{Args, Parser};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Plan, Status, TunnelPlan,
    config::{AgentConfig, BASIC_AUTH_ENV, Cidr, LocalTarget, LogFormat, Protocol, TunnelConfig},
    console,
    embedded::{self, EmbeddedRelay},
    inspector, logging, ready, reload,
    report::{self, Setup},
};

/// burrow agent: makes a local server reachable through a burrow relay.
///
/// With no --relay, a relay runs inside the agent and the local server becomes reachable on
/// this machine's addresses.
#[derive(Debug, Parser)]
#[command(name = "agent", version)]
pub struct Cli {
    /// Local server to expose: PORT or HOST:PORT (host defaults to 127.0.0.1)
    #[arg(long, value_name = "PORT|HOST:PORT")]
    pub local: Option<LocalTarget>,
    /// Public port to ask the relay for, a UDP one with --udp [default: one the relay picks]
    #[arg(long, value_name = "PORT", requires = "local")]
    pub remote_port: Option<u16>,
    /// Tunnel name; keeps the same public port or subdomain across reconnects
    /// [default: the subdomain or hostname, or tcp-<local port>, or udp-<local port>]
    #[arg(long, requires = "local")]
    pub name: Option<String>,
    /// Publish a local UDP service on a public UDP port of the relay; each visitor address
    /// is a flow with its own socket to the local service
    #[arg(long, requires = "local", conflicts_with_all = ["http", "tls"])]
    pub udp: bool,
    /// With --udp: end a visitor's flow once no packet has crossed either way for this long,
    /// 1s to 1h, like 5m [default: the relay's, 2m]
    #[arg(long, value_name = "DURATION", value_parser = burrow_common::config::duration::parse, requires = "udp")]
    pub flow_idle: Option<std::time::Duration>,
    /// Serve the local server over HTTP and HTTPS at NAME.<relay's domain>, or at a hostname
    /// of your own (a NAME with a dot, like app.example.org, whose DNS points at the relay and
    /// that the token allows); without NAME the relay picks a readable subdomain
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "", requires = "local", conflicts_with_all = ["remote_port", "tls"])]
    pub http: Option<String>,
    /// Pass TLS through at NAME.<relay's domain>, or at a hostname of your own (a NAME with a
    /// dot), routed by SNI: the local server ends the TLS
    #[arg(long, value_name = "NAME", requires = "local", conflicts_with = "remote_port")]
    pub tls: Option<String>,
    #[command(flatten)]
    pub http_options: HttpFlags,
    /// Close a visitor's connection once no bytes have moved either way for this long, like
    /// 10m (TCP, TLS) [default: off]
    #[arg(long, value_name = "DURATION", value_parser = burrow_common::config::duration::parse, requires = "local", conflicts_with_all = ["http", "udp"])]
    pub tcp_idle_timeout: Option<std::time::Duration>,
    /// TOML config file with [[tunnels]] (see deploy/agent.toml)
    #[arg(long, short, env = "BURROW_CONFIG")]
    pub config: Option<PathBuf>,
    /// Once the tunnels are online, write the pid, inspector URL and each tunnel's public
    /// address here as JSON (for scripts and tests; rewritten whole when the tunnels change)
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    #[command(flatten)]
    pub flags: Flags,
}

/// Options of the `--http` tunnel, as in a `[[tunnels]]` entry of the config file.
#[derive(Debug, Default, Args)]
pub struct HttpFlags {
    /// Visitors must log in with this user name and password (HTTP basic auth); other local
    /// users can read arguments: prefer --basic-auth-file or BURROW_BASIC_AUTH
    #[arg(long, value_name = "USER:PASS", requires = "http")]
    pub basic_auth: Option<Secret>,
    /// Read USER:PASS for --basic-auth from this file (keep it mode 0600)
    #[arg(long, value_name = "PATH", requires = "http", conflicts_with = "basic_auth")]
    pub basic_auth_file: Option<PathBuf>,
    /// Let visitors switch to this protocol besides WebSocket with an Upgrade header
    /// (repeatable), like h2c
    #[arg(long, value_name = "PROTOCOL", requires = "http")]
    pub upgrade: Vec<String>,
    /// Only these source ranges may visit (repeatable), like 203.0.113.0/24
    #[arg(long, value_name = "CIDR", requires = "http")]
    pub allow: Vec<Cidr>,
    /// These source ranges may not visit (repeatable)
    #[arg(long, value_name = "CIDR", requires = "http")]
    pub deny: Vec<Cidr>,
    /// `rewrite` sends the local address as the Host header, for dev servers that check it;
    /// any other value is sent as is
    #[arg(long, value_name = "rewrite|HOST", requires = "http")]
    pub host_header: Option<String>,
    /// Add a header to each request (repeatable)
    #[arg(long, value_name = "NAME: VALUE", value_parser = parse_header, requires = "http")]
    pub request_header: Vec<(String, String)>,
    /// Add a header to each response (repeatable)
    #[arg(long, value_name = "NAME: VALUE", value_parser = parse_header, requires = "http")]
    pub response_header: Vec<(String, String)>,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("invalid header {text:?}: expected NAME: VALUE, like X-Env: dev"))?;
    Ok((name.trim().to_string(), value.trim().to_string()))
}

/// The tunnel the command line describes with `--local` and its options; an `--http` tunnel
/// without credentials on the command line takes them from [`BASIC_AUTH_ENV`].
fn command_line_tunnel(cli: &Cli, local: LocalTarget) -> anyhow::Result<TunnelConfig> {
    let mut tunnel = TunnelConfig::tcp(local);
    tunnel.name = cli.name.clone();
    tunnel.remote_port = cli.remote_port;
    if let Some(name) = &cli.http {
        tunnel.protocol = Protocol::Http;
        ask_for_name(&mut tunnel, name);
    } else if let Some(name) = &cli.tls {
        tunnel.protocol = Protocol::Tls;
        ask_for_name(&mut tunnel, name);
    } else if cli.udp {
        tunnel.protocol = Protocol::Udp;
        tunnel.flow_idle = cli.flow_idle;
    }
    let options = &cli.http_options;
    tunnel.basic_auth = options.basic_auth.clone();
    tunnel.basic_auth_file = options.basic_auth_file.clone();
    if tunnel.protocol == Protocol::Http && tunnel.basic_auth.is_none() && tunnel.basic_auth_file.is_none() {
        tunnel.basic_auth = std::env::var(BASIC_AUTH_ENV).ok().map(Secret::new);
    }
    tunnel.read_basic_auth_file()?;
    tunnel.upgrades = options.upgrade.clone();
    tunnel.allow = options.allow.clone();
    tunnel.deny = options.deny.clone();
    tunnel.host_header = options.host_header.clone();
    tunnel.request_headers = options.request_header.iter().cloned().collect();
    tunnel.response_headers = options.response_header.iter().cloned().collect();
    tunnel.tcp_idle_timeout = cli.tcp_idle_timeout;
    Ok(tunnel)
}

/// `--http NAME` or `--tls NAME`: a NAME with a dot is a hostname (one under the relay's
/// domain is taken by the relay as that subdomain), any other a subdomain; empty asks for none.
fn ask_for_name(tunnel: &mut TunnelConfig, name: &str) {
    if name.contains('.') {
        tunnel.hostname = Some(name.to_string());
    } else if !name.is_empty() {
        tunnel.subdomain = Some(name.to_string());
    }
}

/// Flags that override the config file and environment (same key names).
#[derive(Debug, Default, Args, Serialize)]
pub struct Flags {
    /// Relay address: HOST or HOST:PORT [default port: 4443]
    #[arg(long, value_name = "HOST[:PORT]")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// Agent token (prefer BURROW_TOKEN or the config file: arguments are visible to other users)
    #[arg(long, value_name = "TOKEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Trust the relay whose certificate has this fingerprint (as the relay prints it)
    #[arg(long, value_name = "sha256:HEX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Trust relays whose certificate chains to a CA in this PEM file
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Do not check the relay's certificate at all (local experiments only)
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// Web inspector address (IP:PORT or PORT), or off [default: 127.0.0.1:4040, or the
    /// next free port up to 4049]
    #[arg(long, value_name = "ADDR|off")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inspect: Option<String>,
    /// Token the inspector requires beyond loopback, as a bearer token or a Basic password
    /// (prefer BURROW_INSPECT_TOKEN or the config file: arguments are visible to other users)
    #[arg(long, value_name = "TOKEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inspect_token: Option<Secret>,
    /// Log lines as text or JSON; json also turns off the live console [default: text]
    #[arg(long, value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// QUIC links to the relay, 1-8, visitors spread over them; the relay may allow fewer
    /// [default: 4]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub links: Option<u8>,
    /// Relays of a fleet to keep a session with, the dialed one included, 1-16: the relay
    /// lists the others [default: 4]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_relays: Option<u8>,
    /// How to reach the relay: auto (QUIC, falling back to TLS over TCP when UDP gets no
    /// answer within 300 ms), quic, or tcp [default: auto]
    #[arg(long, value_name = "auto|quic|tcp")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<crate::config::TransportChoice>,
    /// Reach the relay's TCP port through this proxy: http://[USER:PASS@]HOST[:PORT],
    /// socks5:// (names resolved here) or socks5h:// (by the proxy); the port defaults to
    /// 1080, as in curl; `none` ignores https_proxy and all_proxy [default: those, unless
    /// no_proxy names the relay]
    #[arg(long, value_name = "URL|none")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Secret>,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Watched from before the first read, so an edit made meanwhile is not missed.
    let config_watch = cli.config.as_deref().map(burrow_common::reload::ConfigWatch::new);
    let mut config = AgentConfig::load(cli.config.as_deref(), &cli.flags)?;
    let command_line = cli.local.clone().map(|local| command_line_tunnel(&cli, local)).transpose()?;
    if let Some(tunnel) = &command_line {
        tunnel.validate()?;
        config.tunnels.push(tunnel.clone());
    }
    let live = console::wanted(config.log_format);
    // Log lines go through the console only when they would land on the same terminal.
    let logs = logging::init(config.log_format, live && std::io::stderr().is_terminal());
    for path in config.tunnels.iter().filter_map(TunnelConfig::exposed_basic_auth_file) {
        tracing::warn!(path = %path.display(), "other local users can read this basic-auth file; chmod 600 it");
    }
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(burrow_common::signal::cancel_on_signal(cancel.clone()));
    let (mut plan, relay) = plan(&config)?;
    if let Some((path, config_watch)) = cli.config.clone().zip(config_watch) {
        let reloads = Reloads { path, config_watch, flags: cli.flags, command_line };
        plan.reloads = Some(reloads.spawn(&tasks, plan.tunnels.clone(), &cancel));
    }
    let inspector = inspector::bind(config.inspect).await;
    let setup = Setup {
        embedded: relay.is_some(),
        also_on: if relay.is_some() { embedded::lan_addresses() } else { Vec::new() },
        inspector: inspector.as_ref().and_then(|l| l.local_addr().ok()).map(inspector::url),
    };
    if let Some(listener) = inspector {
        tasks.spawn(inspector::serve(listener, plan.stats.clone(), config.inspect_token.clone(), cancel.clone()));
    }
    let (status, watcher) = watch::channel(Status::Connecting);
    let ready = match cli.ready_file {
        Some(path) => {
            let template = ready_template(&setup, relay.as_ref())?;
            Some(tasks.spawn(ready::run(path, template, watcher.clone(), plan.stats.links(), cancel.clone())))
        }
        None => None,
    };
    let relay = relay.map(|relay| tasks.spawn(relay.run(cancel.clone())));
    let done = CancellationToken::new();
    let output = if live {
        tasks.spawn(console::run(plan.stats.clone(), setup, logs, done.clone()))
    } else {
        tasks.spawn(report::run(watcher, plan.stats.clone(), setup, done.clone()))
    };
    let result = crate::run(plan, status, cancel.clone()).await;
    cancel.cancel();
    let relay_result = finished(relay, "embedded relay").await?;
    let ready_result = finished(ready, "ready file").await?;
    // The output draws the final state before the error, if any, is printed below it.
    done.cancel();
    output.await.context("output")?;
    tasks.close();
    tasks.wait().await;
    ready_result.and(relay_result).and(result)
}

/// The result of an optional task, once it has ended.
async fn finished(
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    what: &'static str,
) -> anyhow::Result<anyhow::Result<()>> {
    match task {
        Some(task) => task.await.context(what),
        None => Ok(Ok(())),
    }
}

/// What the config file's edits need to become new tunnel lists.
struct Reloads {
    path: PathBuf,
    config_watch: burrow_common::reload::ConfigWatch,
    flags: Flags,
    /// The `--local` tunnel, which every reloaded list keeps.
    command_line: Option<TunnelConfig>,
}

impl Reloads {
    /// Watches the config file from `tunnels` on; returns where the new lists arrive.
    fn spawn(
        self,
        tasks: &TaskTracker,
        tunnels: Vec<TunnelPlan>,
        cancel: &CancellationToken,
    ) -> watch::Receiver<Vec<TunnelPlan>> {
        let (lists, reloads) = watch::channel(tunnels);
        let Self { path, config_watch, flags, command_line } = self;
        let file = path.clone();
        let load = move || {
            let mut reloaded = AgentConfig::load(Some(&file), &flags)?;
            reloaded.tunnels.extend(command_line.clone());
            Ok(reloaded.tunnels.iter().map(TunnelPlan::from_config).collect())
        };
        tasks.spawn(reload::watch_config(path, config_watch, load, lists, cancel.clone()));
        reloads
    }
}

/// The ready file's contents but for the tunnels, which come with the first session.
fn ready_template(setup: &Setup, relay: Option<&EmbeddedRelay>) -> anyhow::Result<AgentReady> {
    Ok(AgentReady {
        pid: std::process::id(),
        inspector: setup.inspector.clone(),
        tunnels: Vec::new(),
        relay: relay.map(EmbeddedRelay::ready).transpose()?,
        links_up: 0,
        links_wanted: 0,
        transport: String::new(),
    })
}

/// The plan for the configured relay, or for one inside the agent when none is configured.
fn plan(config: &AgentConfig) -> anyhow::Result<(Plan, Option<EmbeddedRelay>)> {
    match config.relay.clone() {
        Some(relay) => Ok((Plan::for_relay(config, relay)?, None)),
        None => {
            let (plan, relay) = embedded::prepare(config, embedded::default_data_dir())?;
            Ok((plan, Some(relay)))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;
    use crate::PublicTunnel;

    fn tunnel(args: &[&str]) -> anyhow::Result<TunnelConfig> {
        let cli = Cli::try_parse_from(["agent"].iter().chain(args))?;
        let tunnel = command_line_tunnel(&cli, cli.local.clone().expect("tests pass --local"))?;
        tunnel.validate()?;
        Ok(tunnel)
    }

    #[test]
    fn udp_on_the_command_line_names_its_tunnel_and_takes_a_flow_idle_time() -> anyhow::Result<()> {
        let udp = tunnel(&["--local", "51820", "--udp", "--remote-port", "21422", "--flow-idle", "90s"])?;
        assert_eq!((udp.protocol, udp.name(), udp.remote_port), (Protocol::Udp, "udp-51820".into(), Some(21422)));
        assert_eq!(udp.flow_idle, Some(Duration::from_secs(90)));
        assert_eq!(tunnel(&["--local", "53", "--udp", "--name", "dns"])?.name(), "dns");

        let shown = PublicTunnel {
            name: udp.name(),
            host: "relay.example.com".into(),
            port: 21422,
            local: udp.local.clone(),
            urls: Vec::new(),
            protocol: udp.protocol,
        };
        assert_eq!(shown.to_string(), "udp://relay.example.com:21422 -> 127.0.0.1:51820");
        Ok(())
    }

    #[test]
    fn a_name_with_a_dot_asks_for_a_hostname() -> anyhow::Result<()> {
        let custom = tunnel(&["--local", "3000", "--http", "app.example.org"])?;
        assert_eq!((custom.hostname.as_deref(), custom.subdomain.as_deref()), (Some("app.example.org"), None));
        assert_eq!(custom.name(), "app.example.org");
        let plan = crate::TunnelPlan::from_config(&custom);
        assert_eq!(plan.public_name, Some(burrow_common::PublicName::Hostname("app.example.org".into())));

        let passthrough = tunnel(&["--local", "8443", "--tls", "secure.example.org"])?;
        assert_eq!(
            (passthrough.protocol, passthrough.hostname.as_deref()),
            (Protocol::Tls, Some("secure.example.org"))
        );

        let subdomain = tunnel(&["--local", "3000", "--http", "myapp"])?;
        assert_eq!((subdomain.subdomain.as_deref(), subdomain.hostname), (Some("myapp"), None));
        let picked = tunnel(&["--local", "3000", "--http"])?;
        assert_eq!((picked.subdomain, picked.hostname), (None, None));

        let err = format!("{:#}", tunnel(&["--local", "3000", "--http", "app..example.org"]).unwrap_err());
        assert!(err.contains("hostname = \"app..example.org\" is not a full DNS name"), "{err}");
        Ok(())
    }

    #[test]
    fn udp_refuses_the_options_of_other_tunnels() {
        for (args, words) in [
            (&["--local", "53", "--udp", "--http"][..], "cannot be used with"),
            (&["--local", "53", "--udp", "--tls", "x"][..], "cannot be used with"),
            (&["--local", "53", "--udp", "--tcp-idle-timeout", "5m"][..], "cannot be used with"),
            (&["--local", "53", "--flow-idle", "5m"][..], "--udp"),
            (&["--local", "53", "--udp", "--flow-idle", "2h"][..], "flow_idle = 2h: expected 1s to 1h"),
        ] {
            let err = format!("{:#}", tunnel(args).unwrap_err());
            assert!(err.contains(words), "{args:?}: {err}");
        }
    }
}
