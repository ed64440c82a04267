//! The `relay` command line: serve, or manage tokens.

use std::path::PathBuf;

use anyhow::Context;
use burrow_common::{PortRange, Secret, config::parse_port_list, ready::RelayReady, reload::ConfigWatch};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Relay, RelayConfig,
    tokens::{self, HostPattern, Limits, NamePattern},
};

/// burrow relay: makes agents' local servers reachable on this machine's public ports.
#[derive(Debug, Parser)]
#[command(name = "relay", version)]
pub struct Cli {
    /// TOML config file (keys as in deploy/relay.toml).
    #[arg(long, short, global = true, env = "BURROW_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Once serving, write the listen addresses, fingerprint and any new token here as JSON
    /// (for scripts and tests; the file is replaced whole, never half-written)
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    #[command(flatten)]
    pub flags: Flags,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Flags that override the config file and environment; each maps to the config key of the
/// same name, which is where its value is checked.
#[derive(Debug, Default, Args, Serialize)]
pub struct Flags {
    /// UDP address agents connect to [default: 0.0.0.0:4443]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// TCP address agents connect to where UDP is blocked (TLS over TCP), or `off` [default: the listen address]
    #[arg(long, value_name = "ADDR|off")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_listen: Option<String>,
    /// Address public tunnel ports bind on [default: 0.0.0.0]
    #[arg(long, value_name = "IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_bind: Option<String>,
    /// Ports tunnels may use [default: 20000-29999]
    #[arg(long, value_name = "START-END")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
    /// Where the certificate, keys, token hashes and reservations live
    /// [default: ~/.local/share/burrow/relay]
    #[arg(long, global = true, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    #[serde(skip_serializing_if = "StoreFlags::is_empty")]
    pub store: StoreFlags,
    /// This relay's public DNS name or IP (repeatable): certificate names and the host shown
    /// in public addresses
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hostname: Vec<String>,
    /// Serve HTTP and TLS tunnels at NAME.DOMAIN; needs wildcard DNS *.DOMAIN -> this relay
    #[arg(long, value_name = "DOMAIN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Shared plain-HTTP port for HTTP tunnels, or `off` [default: 0.0.0.0:8880]
    #[arg(long, value_name = "ADDR|off")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<String>,
    /// Shared HTTPS port for HTTP and TLS tunnels, or `off` [default: 0.0.0.0:8443]
    #[arg(long, value_name = "ADDR|off")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_listen: Option<String>,
    #[command(flatten)]
    #[serde(skip_serializing_if = "AcmeFlags::is_empty")]
    pub acme: AcmeFlags,
    /// Admin endpoint (dashboard, /api, /metrics, /healthz, /readyz), or `off` [default: 127.0.0.1:9470]
    #[arg(long, value_name = "ADDR|off")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    /// Time open connections get to finish on shutdown [default: 10s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<String>,
}

/// The `[store]` keys that have flags.
#[derive(Debug, Default, Args, Serialize)]
pub struct StoreFlags {
    /// Where tokens and claims live: `file` (the data directory), or etcd shared by a fleet
    /// of relays, `etcd://HOST:PORT[,HOST:PORT...]` (`etcds://` for TLS) [default: file]
    #[arg(long = "store", global = true, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Where agents reach this relay, `HOST:PORT`, as the fleet's other relays offer it to
    /// their agents [default: the first --hostname and the agent port]
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// This relay's failure domain, for agents to spread their sessions across
    #[arg(long, value_name = "LABEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

impl StoreFlags {
    fn is_empty(&self) -> bool {
        self.url.is_none() && self.advertise.is_none() && self.zone.is_none()
    }
}

/// The `[acme]` keys that have flags.
#[derive(Debug, Default, Args, Serialize)]
pub struct AcmeFlags {
    /// Get trusted HTTPS certificates from Let's Encrypt (or `--acme-directory`), with this
    /// contact address for the account
    #[arg(long = "acme-email", value_name = "EMAIL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// ACME directory URL, or `production` / `staging` (Let's Encrypt) [default: production]
    #[arg(long = "acme-directory", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// How the CA checks names: tls-alpn-01, http-01 or dns-01 (with acme.dns_hook) [default: tls-alpn-01]
    #[arg(long = "acme-challenge", value_name = "TYPE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
}

impl AcmeFlags {
    fn is_empty(&self) -> bool {
        self.email.is_none() && self.directory.is_none() && self.challenge.is_none()
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage agent tokens (stored hashed in the data directory, or in etcd with --store).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Create a token for a teammate and print the agent command (and agent.toml) to send them.
    Invite {
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

/// What a new token may use.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Ports this token may use, e.g. `22,8000-8100`, or `none` [default: the relay's whole range]
    #[arg(long, value_name = "LIST")]
    ports: Option<String>,
    /// Subdomains this token may claim, e.g. `app-*,docs` (`*` is one or more letters, digits
    /// or hyphens), or `none` [default: any]
    #[arg(long, value_name = "PATTERNS")]
    subdomains: Option<String>,
    /// Custom hostnames this token may claim, e.g. `app.example.org,*.dev.example.org`
    /// (`*.` is exactly one more label) [default: none]
    #[arg(long, value_name = "PATTERNS")]
    hostnames: Option<String>,
}

/// [`LimitArgs`] parsed: `None` for no limit of that kind.
struct ParsedLimits {
    ports: Option<Vec<PortRange>>,
    subdomains: Option<Vec<NamePattern>>,
    hostnames: Vec<HostPattern>,
}

impl LimitArgs {
    fn parse(&self) -> anyhow::Result<ParsedLimits> {
        let ports = self.ports.as_deref().map(|text| match text.trim() {
            tokens::NONE => Ok(Vec::new()),
            list => parse_port_list(list).map_err(anyhow::Error::msg),
        });
        let subdomains = self.subdomains.as_deref().map(tokens::parse_list);
        let hostnames = self.hostnames.as_deref().map(tokens::parse_list).transpose()?;
        Ok(ParsedLimits {
            ports: ports.transpose()?,
            subdomains: subdomains.transpose()?,
            hostnames: hostnames.unwrap_or_default(),
        })
    }
}

impl ParsedLimits {
    fn borrowed(&self) -> Limits<'_> {
        Limits { ports: self.ports.as_deref(), subdomains: self.subdomains.as_deref(), hostnames: &self.hostnames }
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once.
    Add {
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List token names and the ports, subdomains and hostnames each may use (never the tokens).
    List,
    /// Delete a token; a running relay closes the sessions using it within a second.
    Revoke { name: String },
}

/// Runs the command line's choice until done or, for the server, until Ctrl-C or SIGTERM.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Watched from before the first read, so an edit made meanwhile is not missed.
    let watch = cli.config.as_deref().filter(|_| cli.command.is_none()).map(ConfigWatch::new);
    let config = RelayConfig::load(cli.config.as_deref(), &cli.flags)?;
    match cli.command {
        None => {
            let file = cli.config.zip(watch).map(|(path, watch)| (path, watch, cli.flags));
            serve(config, file, cli.ready_file.as_deref()).await
        }
        Some(Command::Token(command)) => manage_tokens(&config, command).await,
        Some(Command::Invite { name, limits }) => {
            crate::invite::invite(&config, &name, limits.parse()?.borrowed()).await
        }
    }
}

/// Serves until Ctrl-C or SIGTERM. With a config file, edits to it (or SIGHUP) are applied
/// as the relay runs.
async fn serve(
    config: RelayConfig,
    file: Option<(PathBuf, ConfigWatch, Flags)>,
    ready_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let tokens = tokens::open_admin(&config).await?;
    let no_token = config.token.is_none() && tokens.is_empty().await?;
    let new_token = if no_token { tokens.add_first("default").await? } else { None };
    let relay = Relay::open(config).await?;
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(burrow_common::signal::cancel_on_signal(cancel.clone()));
    if let Some((path, watch, flags)) = file {
        let (reloader, stop) = (relay.reloader(), cancel.clone());
        tasks.spawn(async move {
            watch
                .run(&stop, || match RelayConfig::load(Some(&path), &flags).and_then(|new| reloader.apply(new)) {
                    Ok(applied) => crate::reload::log(&applied),
                    Err(e) => tracing::warn!("config reload failed; the running settings stay: {e:#}"),
                })
                .await;
        });
    }
    print_banner(&relay, new_token.as_ref())?;
    if let Some(path) = ready_file {
        burrow_common::ready::write(path, &ready(&relay, new_token.as_ref())?)?;
    }
    let served = relay.run(cancel.clone()).await;
    // The config watcher stops with the relay.
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    served
}

/// What the ready file says about a bound relay; `new_token` is the token made at this start.
pub fn ready(relay: &Relay, new_token: Option<&Secret>) -> anyhow::Result<RelayReady> {
    Ok(RelayReady {
        pid: std::process::id(),
        quic: relay.local_addr().context("the relay's QUIC address")?,
        tcp: relay.tcp_addr(),
        admin: relay.admin_addr(),
        http: relay.http_addr(),
        https: relay.https_addr(),
        fingerprint: relay.fingerprint(),
        token: new_token.map(|token| token.expose().to_string()),
        data_dir: relay.config().data_dir.clone(),
        max_visitors: relay.limits().get("max_visitors").and_then(serde_json::Value::as_u64).map(|n| n as usize),
    })
}

fn print_banner(relay: &Relay, new_token: Option<&Secret>) -> anyhow::Result<()> {
    let config = relay.config();
    let listen = relay.local_addr()?;
    println!("burrow relay {}", env!("CARGO_PKG_VERSION"));
    match relay.tcp_addr() {
        Some(tcp) => println!("  agents connect to   udp {listen}, or tcp {tcp} where UDP is blocked"),
        None => println!("  agents connect to   udp {listen} (tcp off)"),
    }
    println!("  public ports        {} on {}", config.ports, config.public_bind);
    println!("  data directory      {}", config.data_dir.display());
    println!("  fingerprint         {}", relay.fingerprint());
    let limits = relay.limits();
    let shown = |key: &str| match limits.get(key) {
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => "unlimited".into(),
    };
    println!("  visitors            at most {} (open files {})", shown("max_visitors"), shown("open_files"));
    match (&config.domain, relay.http_addr(), relay.https_addr()) {
        (Some(domain), http, https) => {
            let ports = |addr: Option<std::net::SocketAddr>| addr.map_or("off".into(), |a| a.to_string());
            println!("  HTTP tunnels        NAME.{domain} on http {} and https {}", ports(http), ports(https));
        }
        (None, ..) => println!("  HTTP tunnels        off (--domain enables them)"),
    }
    if let Some(admin) = relay.admin_addr() {
        println!("  dashboard           http://{admin}/");
        println!("  metrics             http://{admin}/metrics");
    }
    let token = match new_token {
        Some(token) => {
            println!("  new token \"default\" {}   (shown only now; stored hashed)", token.expose());
            token.expose().to_string()
        }
        None => "<TOKEN>".to_string(),
    };
    let relay_arg = crate::invite::agent_relay_arg(&config, listen, "127.0.0.1");
    println!();
    println!("Expose a local port through this relay with:");
    println!("  BURROW_TOKEN={token} agent --relay {relay_arg} --fingerprint {} --local 8080", relay.fingerprint());
    if config.domain.is_some() {
        println!("  (or serve it over HTTP(S) at a subdomain: add --http NAME)");
    }
    if new_token.is_none() {
        println!("  (invite a teammate with: relay invite NAME)");
    }
    if config.hostname.is_empty() {
        println!("  (from other machines use this relay's public address; --hostname sets it)");
    }
    Ok(())
}

async fn manage_tokens(config: &RelayConfig, command: TokenCommand) -> anyhow::Result<()> {
    let store = tokens::open_admin(config).await?;
    match command {
        TokenCommand::Add { name, limits } => {
            let token = store.add(&name, limits.parse()?.borrowed()).await?;
            println!("{}", token.expose());
            eprintln!("token {name:?} created; it is shown only now and stored hashed");
        }
        TokenCommand::List => {
            for record in store.list().await? {
                let ports = match record.ports.as_deref() {
                    None => "all".to_string(),
                    Some([]) => tokens::NONE.to_string(),
                    Some(ranges) => burrow_common::config::format_port_list(ranges),
                };
                let subdomains = tokens::describe_patterns(record.subdomains.as_deref());
                let hostnames = tokens::describe_list(&record.hostnames);
                println!("{}\tports: {ports}\tsubdomains: {subdomains}\thostnames: {hostnames}", record.name);
            }
        }
        TokenCommand::Revoke { name } => {
            anyhow::ensure!(store.revoke(&name).await?, "no token named {name:?}");
            eprintln!("token {name:?} revoked");
        }
    }
    Ok(())
}
