//! One copy of the simulated internet of `netsim.sh`, torn down when dropped.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::Context;
use nix::sched::{CloneFlags, setns};

/// The relay's public address inside the simulation.
pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(10, 80, 0, 1);

/// The VPS's addresses, one per relay of a fleet on it (the first is [`RELAY_IP`]).
pub const FLEET_IPS: [Ipv4Addr; 3] = [RELAY_IP, Ipv4Addr::new(10, 80, 0, 2), Ipv4Addr::new(10, 80, 0, 3)];

/// The home router's address on the home network, where a proxy for the home can listen.
pub const ROUTER_LAN_IP: Ipv4Addr = Ipv4Addr::new(10, 80, 3, 1);

/// A host of the simulated internet.
#[derive(Clone, Copy, Debug)]
pub enum Host {
    /// The VPS: relay, public ports.
    Relay,
    /// An outside user.
    Client,
    /// The laptop behind the home NAT: agent and local server.
    Home,
    /// The home's router: NAT, firewall, and where a proxy for the home runs.
    Router,
}

impl Host {
    fn name(self) -> &'static str {
        match self {
            Host::Relay => "relay",
            Host::Client => "client",
            Host::Home => "home",
            Host::Router => "router",
        }
    }
}

/// Delay, loss and bandwidth on the home uplink, each applied in both directions.
#[derive(Clone, Debug, Default)]
pub struct Impairment {
    pub delay_ms: u32,
    pub loss_percent: f64,
    pub rate: Option<&'static str>,
}

pub struct Sim {
    prefix: String,
    /// Held for the life of this copy: a second run using the same names would tear down
    /// this one's namespaces when it starts.
    _lock: File,
}

/// Set to make a missing prerequisite fail the suite instead of skipping it, so a CI machine
/// that should run the fault suite cannot pass by silently running nothing.
const REQUIRE_ENV: &str = "FAULTS_REQUIRE_NETNS";

const LOCK_DIR: &str = "/run/burrow-sim";

impl Sim {
    /// Builds a fresh copy named `name` (a few letters; namespaces are `bsim-NAME-*`).
    /// Returns `None`, after saying why, where this machine cannot run network namespaces.
    pub fn up(name: &str) -> anyhow::Result<Option<Self>> {
        if let Err(why) = prerequisites() {
            anyhow::ensure!(std::env::var_os(REQUIRE_ENV).is_none(), "{REQUIRE_ENV} is set but {why}");
            eprintln!("SKIPPED: the fault suite needs root and network namespaces: {why} (scripts/test installs them)");
            return Ok(None);
        }
        let prefix = format!("bsim-{name}");
        std::fs::create_dir_all(LOCK_DIR)?;
        let lock = File::create(format!("{LOCK_DIR}/{prefix}.lock"))?;
        lock.try_lock().map_err(|_| anyhow::anyhow!("another run of the fault suite is using {prefix}-*"))?;
        let sim = Self { prefix, _lock: lock };
        // A run killed before its teardown may have left this copy behind.
        sim.script(&["down"])?;
        sim.script(&["up"])?;
        Ok(Some(sim))
    }

    pub fn namespace(&self, host: Host) -> String {
        format!("{}-{}", self.prefix, host.name())
    }

    /// A command that runs `program` inside `host`.
    pub fn command(&self, host: Host, program: &Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("ip");
        command.args(["netns", "exec", &self.namespace(host)]).arg(program);
        command
    }

    /// Silently drops everything on the home uplink, as an upstream outage does.
    pub fn cut(&self) -> anyhow::Result<()> {
        self.script(&["cut"])
    }

    pub fn heal(&self) -> anyhow::Result<()> {
        self.script(&["heal"])
    }

    /// The VPS silently drops TCP to and from its own `port`: a service there (a store on
    /// its loopback) is cut off from its clients on the VPS.
    pub fn cut_port(&self, port: u16) -> anyhow::Result<()> {
        self.script(&["cut-port", &port.to_string()])
    }

    /// Undoes every [`Sim::cut_port`].
    pub fn heal_ports(&self) -> anyhow::Result<()> {
        self.script(&["heal-ports"])
    }

    /// The home router drops UDP, open flows included, as networks that block QUIC do.
    pub fn block_udp(&self) -> anyhow::Result<()> {
        self.script(&["block-udp"])
    }

    /// The home router lets nothing out: only a proxy on the router ([`ROUTER_LAN_IP`]) does.
    pub fn only_proxy(&self) -> anyhow::Result<()> {
        self.script(&["only-proxy"])
    }

    /// Undoes [`Sim::block_udp`] and [`Sim::only_proxy`].
    pub fn open_egress(&self) -> anyhow::Result<()> {
        self.script(&["open-egress"])
    }

    /// The NAT moves continuing flows to a new outside port.
    pub fn rebind_port(&self) -> anyhow::Result<()> {
        self.script(&["rebind"])
    }

    /// The NAT moves continuing flows to a new outside address (and port).
    pub fn rebind_address(&self) -> anyhow::Result<()> {
        self.script(&["rebind", "--addr"])
    }

    pub fn impair(&self, impairment: &Impairment) -> anyhow::Result<()> {
        let delay = impairment.delay_ms.to_string();
        let loss = impairment.loss_percent.to_string();
        let mut args = vec!["impair", "--delay", &delay, "--loss", &loss];
        if let Some(rate) = impairment.rate {
            args.extend(["--rate", rate]);
        }
        self.script(&args)
    }

    /// The router forgets UDP mappings idle for `seconds`.
    pub fn nat_timeout(&self, seconds: u32) -> anyhow::Result<()> {
        self.script(&["nat-timeout", &seconds.to_string()])
    }

    /// Runs `make` on a thread inside `host`'s network namespace: sockets it creates belong
    /// to that host for their whole life, wherever they are used afterwards.
    pub fn within<T: Send + 'static>(
        &self,
        host: Host,
        make: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.namespace(host));
        let namespace = File::open(&path).with_context(|| format!("open {path}"))?;
        std::thread::spawn(move || {
            setns(&namespace, CloneFlags::CLONE_NEWNET).context("enter the network namespace")?;
            make().map_err(anyhow::Error::from)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
    }

    /// A TCP connection from `host` to `addr`.
    pub async fn connect(&self, host: Host, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
        // Created unconnected inside the namespace, connected later on the async runtime.
        let socket = self.within(host, move || {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            socket.set_nonblocking(true)?;
            Ok(std::net::TcpStream::from(socket))
        })?;
        let socket = tokio::net::TcpSocket::from_std_stream(socket);
        socket.connect(addr).await.with_context(|| format!("connect to {addr}"))
    }

    /// A listener on `addr` inside `host`.
    pub fn listen(&self, host: Host, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
        let listener = self.within(host, move || {
            let listener = std::net::TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })?;
        Ok(tokio::net::TcpListener::from_std(listener)?)
    }

    /// A UDP socket bound to `addr` inside `host`.
    pub fn udp_socket(&self, host: Host, addr: SocketAddr) -> anyhow::Result<tokio::net::UdpSocket> {
        let socket = self.within(host, move || {
            let socket = std::net::UdpSocket::bind(addr)?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })?;
        Ok(tokio::net::UdpSocket::from_std(socket)?)
    }

    fn script(&self, args: &[&str]) -> anyhow::Result<()> {
        let output = Command::new(script_path())
            .args(args)
            .env("NETSIM_PREFIX", &self.prefix)
            .stdin(Stdio::null())
            .output()
            .context("run netsim.sh")?;
        anyhow::ensure!(
            output.status.success(),
            "netsim.sh {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Err(e) = self.script(&["down"]) {
            eprintln!("tearing down {}: {e:#}", self.prefix);
        }
    }
}

fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("netsim.sh")
}

fn prerequisites() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root".into());
    }
    for tool in ["ip", "tc", "nft", "iptables", "conntrack", "python3"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(format!("`{tool}` is not installed"));
        }
    }
    Ok(())
}
