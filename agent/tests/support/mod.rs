//! Shared pieces for the in-process end-to-end tests: a relay and agents on loopback with
//! ephemeral ports, and small local servers. Tests learn addresses from values the relay and
//! agent publish, never by waiting.
#![allow(dead_code, unreachable_pub)]

pub mod http;
pub mod http_apps;
use std::{net::SocketAddr, path::Path, time::Duration};

use agent::{
    Plan, PublicTunnel, Status, TunnelPlan,
    config::{AgentConfig, LocalTarget, RelayAddr},
};
use anyhow::Context;
use burrow_common::{Fingerprint, Secret, tls::Trust};
use relay::{Relay, RelayConfig};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

/// Upper bound for any single step; a hang guard, not a synchroniser.
pub const STEP: Duration = Duration::from_secs(20);

pub struct TestRelay {
    pub addr: SocketAddr,
    /// The admin endpoint (`/metrics`, `/healthz`), when enabled.
    pub admin: Option<SocketAddr>,
    pub fingerprint: Fingerprint,
    pub token: Secret,
    pub cancel: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

pub fn relay_config(data_dir: &Path) -> RelayConfig {
    RelayConfig {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        public_bind: "127.0.0.1".parse().expect("literal address"),
        data_dir: data_dir.to_path_buf(),
        token: Some(Secret::new("test-token-0123456789")),
        grace_period: Duration::from_secs(2),
        admin_listen: Some("127.0.0.1:0".parse().expect("literal address")),
        ..RelayConfig::default()
    }
}

impl TestRelay {
    pub async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(relay_config(data_dir)).await
    }

    pub async fn start_with(config: RelayConfig) -> anyhow::Result<Self> {
        let token = config.token.clone().context("test relays have a configured token")?;
        Self::run(Relay::bind(config)?, token)
    }

    /// Runs a relay bound by the caller, who may keep handles to it (its reloader, its HTTP
    /// ports) first.
    pub fn run(relay: Relay, token: Secret) -> anyhow::Result<Self> {
        let cancel = CancellationToken::new();
        Ok(Self {
            addr: relay.local_addr()?,
            admin: relay.admin_addr(),
            fingerprint: relay.fingerprint(),
            token,
            task: tokio::spawn(relay.run(cancel.clone())),
            cancel,
        })
    }

    /// A plan that reaches this relay with the right token and pin.
    pub fn plan(&self, tunnels: Vec<TunnelPlan>) -> Plan {
        let config = AgentConfig { reconnect_max_delay: Duration::from_millis(400), ..AgentConfig::default() };
        let mut plan = Plan::new(&config, self.relay_addr(), Trust::Pinned(self.fingerprint), self.token.clone());
        plan.tunnels = tunnels;
        plan
    }

    pub fn relay_addr(&self) -> RelayAddr {
        RelayAddr { host: self.addr.ip().to_string(), port: self.addr.port() }
    }

    /// Stops the relay and checks that `run` ended cleanly.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        tokio::time::timeout(STEP, self.task).await.context("relay did not stop")???;
        Ok(())
    }
}

pub fn tunnel(name: &str, local: SocketAddr) -> TunnelPlan {
    TunnelPlan::tcp(name, LocalTarget { host: local.ip().to_string(), port: local.port() })
}

pub struct TestAgent {
    pub status: watch::Receiver<Status>,
    pub cancel: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl TestAgent {
    pub fn spawn(plan: Plan) -> Self {
        let (tx, status) = watch::channel(Status::Connecting);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(agent::run(plan, tx, cancel.clone()));
        Self { status, cancel, task }
    }

    /// Starts an agent and waits until its tunnels are online.
    pub async fn start(plan: Plan) -> anyhow::Result<(Self, Vec<PublicTunnel>)> {
        let mut agent = Self::spawn(plan);
        let tunnels = agent.online().await?;
        Ok((agent, tunnels))
    }

    /// Waits for the next Online status (the current one counts).
    pub async fn online(&mut self) -> anyhow::Result<Vec<PublicTunnel>> {
        let waited = tokio::time::timeout(STEP, self.status.wait_for(|s| matches!(s, Status::Online(_))))
            .await
            .context("agent did not come online")?
            .map(|status| status.clone());
        match waited {
            Ok(Status::Online(tunnels)) => Ok(tunnels),
            Ok(other) => anyhow::bail!("unexpected status {other:?}"),
            // The agent's run ended: report why.
            Err(_) => match (&mut self.task).await? {
                Ok(()) => anyhow::bail!("agent stopped before coming online"),
                Err(e) => Err(e.context("agent stopped before coming online")),
            },
        }
    }

    /// Waits for the agent's run to end and returns its result.
    pub async fn finished(self) -> anyhow::Result<anyhow::Result<()>> {
        Ok(tokio::time::timeout(STEP, self.task).await.context("agent did not finish")??)
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.finished().await?
    }

    /// Ends the agent at once without a word to the relay, as `kill -9` does.
    pub async fn kill(self) {
        self.task.abort();
        // The task's end is known: it was cancelled (or had already returned).
        self.task.await.ok();
    }
}

/// Reads an HTTP message head byte by byte, so nothing after it is consumed; it must end
/// within 16 KiB and [`STEP`].
pub async fn read_head(tcp: &mut TcpStream) -> anyhow::Result<String> {
    let mut head = Vec::new();
    let reading = async {
        while !head.ends_with(b"\r\n\r\n") {
            anyhow::ensure!(head.len() < 16 * 1024, "the head never ends");
            head.push(tcp.read_u8().await?);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(STEP, reading).await.context("no message head in time")??;
    Ok(String::from_utf8(head)?)
}

pub fn public_addr(tunnel: &PublicTunnel) -> SocketAddr {
    SocketAddr::new(tunnel.host.parse().expect("test relays publish IP hosts"), tunnel.port)
}

/// A local server running `handler` for each connection until the test ends.
pub async fn local_server<F, Fut>(handler: F) -> anyhow::Result<SocketAddr>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(handler(tcp));
        }
    });
    Ok(addr)
}

/// Echoes every byte, and half-closes after the client does.
pub async fn echo_server() -> anyhow::Result<SocketAddr> {
    local_server(|mut tcp| async move {
        let (mut r, mut w) = tcp.split();
        tokio::io::copy(&mut r, &mut w).await?;
        w.shutdown().await
    })
    .await
}

/// A port on which nothing listens.
pub async fn closed_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    Ok(listener.local_addr()?)
}

/// Sends `data` and returns everything read back until EOF, writing and reading at once.
pub async fn exchange(addr: SocketAddr, data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).await?;
    let (mut r, mut w) = tcp.split();
    let write = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let mut got = Vec::with_capacity(data.len());
    let read = r.read_to_end(&mut got);
    let (wrote, read) =
        tokio::time::timeout(STEP, async { tokio::join!(write, read) }).await.context("exchange hung")?;
    wrote?;
    read?;
    Ok(got)
}

/// Sends `data` on `tcp` and reads as many bytes back, writing and reading at once, and
/// leaves the connection open.
pub async fn round_trip(tcp: &mut TcpStream, data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (mut r, mut w) = tcp.split();
    let mut got = vec![0; data.len()];
    let both = async { tokio::try_join!(w.write_all(data), r.read_exact(&mut got)) };
    tokio::time::timeout(STEP, both).await.context("round trip hung")??;
    Ok(got)
}

pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0; len];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
    data
}

/// A UDP forwarder between one agent and the relay, standing in for a NAT router: it can
/// go silent (a crashed agent, a dead path: nothing is closed, packets just stop), or move
/// the agent's traffic to a new outside port, as a NAT that remaps a flow does.
pub struct UdpProxy {
    pub addr: SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    rebind: tokio::sync::mpsc::UnboundedSender<()>,
}

impl UdpProxy {
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let addr = front.local_addr()?;
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (rebind, mut rebinds) = tokio::sync::mpsc::unbounded_channel::<()>();
        let silent = cut.clone();
        let mut back = outside_socket(upstream).await?;
        tokio::spawn(async move {
            let (mut from_agent, mut from_relay) = (vec![0u8; 65536], vec![0u8; 65536]);
            let mut agent = None;
            let passing = || !silent.load(std::sync::atomic::Ordering::Relaxed);
            loop {
                tokio::select! {
                    Some(()) = rebinds.recv() => match outside_socket(upstream).await {
                        // The old socket closes: packets still sent to it are lost, as at a NAT.
                        Ok(fresh) => back = fresh,
                        Err(_) => break,
                    },
                    Ok((n, peer)) = front.recv_from(&mut from_agent) => {
                        agent = Some(peer);
                        if passing() {
                            back.send(&from_agent[..n]).await.ok();
                        }
                    }
                    Ok(n) = back.recv(&mut from_relay) => {
                        if let (Some(peer), true) = (agent, passing()) {
                            front.send_to(&from_relay[..n], peer).await.ok();
                        }
                    }
                    else => break,
                }
            }
        });
        Ok(Self { addr, cut, rebind })
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// From the next packet on, the relay sees the agent at a new address.
    pub fn rebind(&self) {
        self.rebind.send(()).ok();
    }
}

async fn outside_socket(upstream: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(upstream).await?;
    Ok(socket)
}

/// Status code and body of `GET path` on the admin endpoint.
pub async fn get(admin: SocketAddr, path: &str, bearer: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut tcp = TcpStream::connect(admin).await?;
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n{auth}Connection: close\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(STEP, tcp.read_to_string(&mut response)).await??;
    let status = response.split_whitespace().nth(1).unwrap_or_default().parse()?;
    Ok((status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// The value of the sample named `series` (with its labels, if any) in a metrics page.
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

pub async fn metrics(relay: &TestRelay) -> anyhow::Result<String> {
    let (status, body) = get(relay.admin.expect("tests enable the admin endpoint"), "/metrics", None).await?;
    anyhow::ensure!(status == 200, "metrics answered {status}");
    Ok(body)
}

/// The metrics page once `series` reads `value`.
pub async fn settled(relay: &TestRelay, series: &str, value: f64) -> anyhow::Result<String> {
    tokio::time::timeout(STEP, async {
        loop {
            let page = metrics(relay).await?;
            if sample(&page, series) == Some(value) {
                return anyhow::Ok(page);
            }
            tokio::task::yield_now().await;
        }
    })
    .await?
}

/// Status, head and body of `GET path` on the admin endpoint, with `authorization` as the
/// whole value of the `Authorization` header when given (`Basic …`, `Bearer …`).
pub async fn get_authorized(
    admin: SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> anyhow::Result<(u16, String, String)> {
    let mut tcp = TcpStream::connect(admin).await?;
    let auth = authorization.map(|value| format!("Authorization: {value}\r\n")).unwrap_or_default();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n{auth}Connection: close\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(STEP, tcp.read_to_string(&mut response)).await??;
    let (head, body) = response.split_once("\r\n\r\n").context("a response head")?;
    let status = head.split_whitespace().nth(1).unwrap_or_default().parse()?;
    Ok((status, head.to_string(), body.to_string()))
}

/// The JSON answer of the admin endpoint's `/api/{view}`.
pub async fn api(relay: &TestRelay, view: &str) -> anyhow::Result<serde_json::Value> {
    let admin = relay.admin.expect("tests enable the admin endpoint");
    let (status, body) = get(admin, &format!("/api/{view}"), None).await?;
    anyhow::ensure!(status == 200, "/api/{view} answered {status}: {body}");
    serde_json::from_str(&body).with_context(|| format!("/api/{view} is not JSON: {body}"))
}

/// The compiled `relay` and `agent` binaries run as child processes, for tests that read a
/// process's memory or need it apart from the test's own runtime.
pub mod processes {
    use std::{net::SocketAddr, path::PathBuf, process::Stdio};

    use anyhow::Context;
    use burrow_common::Fingerprint;
    use tokio::{
        io::{AsyncBufReadExt, BufReader, Lines},
        process::{Child, ChildStdout, Command},
    };

    use super::STEP;

    pub fn agent_bin() -> PathBuf {
        PathBuf::from(env!("CARGO_BIN_EXE_agent"))
    }

    pub fn relay_bin() -> anyhow::Result<PathBuf> {
        let path = agent_bin().with_file_name("relay");
        anyhow::ensure!(path.exists(), "{} is missing: build it with `cargo build --workspace --bins`", path.display());
        Ok(path)
    }

    /// A child whose stdout is read for the lines it promises. Its stderr goes to a file, so
    /// a chatty child never stalls on a full pipe and a failure can still quote it.
    pub struct Binary {
        child: Child,
        lines: Option<Lines<BufReader<ChildStdout>>>,
        stderr: tempfile::NamedTempFile,
    }

    impl Binary {
        pub fn start(command: &mut Command) -> anyhow::Result<Self> {
            let stderr = tempfile::NamedTempFile::new()?;
            let mut child = command.stdout(Stdio::piped()).stderr(stderr.reopen()?).kill_on_drop(true).spawn()?;
            let stdout = child.stdout.take().context("stdout is piped")?;
            Ok(Self { child, lines: Some(BufReader::new(stdout).lines()), stderr })
        }

        pub fn pid(&self) -> anyhow::Result<u32> {
            self.child.id().context("the process has exited")
        }

        /// Reads stdout until a line contains `marker`; returns that line.
        pub async fn line_with(&mut self, marker: &str) -> anyhow::Result<String> {
            let lines = self.lines.as_mut().context("stdout is already drained")?;
            let wait = async {
                while let Some(line) = lines.next_line().await? {
                    if line.contains(marker) {
                        return Ok(line);
                    }
                }
                anyhow::bail!("stdout ended before a line with {marker:?}")
            };
            let found = tokio::time::timeout(STEP, wait).await.unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
            found.with_context(|| format!("no line with {marker:?}; stderr: {}", self.stderr_text()))
        }

        /// Reads and drops the rest of stdout, so later output cannot fill the pipe.
        pub fn drain(&mut self) {
            if let Some(mut lines) = self.lines.take() {
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            }
        }

        pub fn stderr_text(&self) -> String {
            std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
        }

        pub fn vm_rss_kib(&self) -> anyhow::Result<u64> {
            vm_rss_kib(self.pid()?)
        }
    }

    /// Resident memory (VmRSS) of a process, in KiB.
    pub fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("VmRSS in /proc status")?;
        Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
    }

    /// The value after `label` on a banner line.
    fn field(line: &str, label: &str) -> anyhow::Result<String> {
        let rest = line.split_once(label).with_context(|| format!("{label:?} in {line:?}"))?.1;
        Ok(rest.split_whitespace().next().context("value after label")?.to_string())
    }

    fn address_in(line: &str, label: &str) -> anyhow::Result<SocketAddr> {
        let value = field(line, label)?;
        value.trim_end_matches("/metrics").parse().with_context(|| format!("address in {line:?}"))
    }

    pub struct RelayBinary {
        pub process: Binary,
        pub addr: SocketAddr,
        pub admin: SocketAddr,
        pub fingerprint: Fingerprint,
        pub token: String,
        _dir: tempfile::TempDir,
    }

    impl RelayBinary {
        /// The relay's memory (KiB) once it is at most `bound`, or when `within` ends: the
        /// allocator returns freed pages about a second after the load that used them.
        pub async fn memory_back_under(&self, bound: u64, within: std::time::Duration) -> anyhow::Result<u64> {
            let deadline = std::time::Instant::now() + within;
            let mut pace = tokio::time::interval(std::time::Duration::from_millis(100));
            loop {
                pace.tick().await;
                let rss = self.process.vm_rss_kib()?;
                if rss <= bound || std::time::Instant::now() > deadline {
                    return Ok(rss);
                }
            }
        }

        /// Starts `relay` on loopback with a fresh data directory and its admin endpoint on;
        /// `env` sets further keys, such as `BURROW_RELAY_MAX_VISITORS_PER_IP`.
        pub async fn start(env: &[(&str, String)]) -> anyhow::Result<Self> {
            let dir = tempfile::tempdir()?;
            let mut command = Command::new(relay_bin()?);
            command.env("RUST_LOG", "warn").envs(env.iter().map(|(k, v)| (k, v)));
            command.args(["--listen", "127.0.0.1:0", "--public-bind", "127.0.0.1", "--admin-listen", "127.0.0.1:0"]);
            let mut process = Binary::start(command.arg("--data-dir").arg(dir.path()))?;
            let addr = address_in(&process.line_with("agents connect to").await?, "udp")?;
            let fingerprint = field(&process.line_with("fingerprint").await?, "fingerprint")?;
            let admin = address_in(&process.line_with("metrics").await?, "http://")?;
            let token = field(&process.line_with("new token").await?, "\"default\"")?;
            process.drain();
            let fingerprint = fingerprint.parse().map_err(anyhow::Error::msg)?;
            Ok(Self { process, addr, admin, fingerprint, token, _dir: dir })
        }

        /// Starts an `agent` exposing `local` through this relay; returns it and the public
        /// address of its tunnel.
        pub async fn agent(&self, local: SocketAddr) -> anyhow::Result<(Binary, SocketAddr)> {
            let mut command = Command::new(agent_bin());
            command.env("BURROW_TOKEN", &self.token).env("RUST_LOG", "warn");
            command.args(["--relay", &self.addr.to_string(), "--fingerprint", &self.fingerprint.to_string()]);
            let mut process = Binary::start(command.args(["--local", &local.to_string()]))?;
            let public = address_in(&process.line_with("tunnel ").await?, "tcp://")?;
            process.drain();
            Ok((process, public))
        }

        pub async fn metrics(&self) -> anyhow::Result<String> {
            let (status, body) = super::get(self.admin, "/metrics", None).await?;
            anyhow::ensure!(status == 200, "metrics answered {status}");
            Ok(body)
        }

        /// The metrics page once `series` reads `value`.
        pub async fn settled(&self, series: &str, value: f64) -> anyhow::Result<String> {
            self.until(series, |v| v == value).await.with_context(|| format!("{series} did not settle at {value}"))
        }

        /// The metrics page once the value of `series` passes `test`.
        pub async fn until(&self, series: &str, test: impl Fn(f64) -> bool) -> anyhow::Result<String> {
            let wait = async {
                loop {
                    let page = self.metrics().await?;
                    if super::sample(&page, series).is_some_and(&test) {
                        return anyhow::Ok(page);
                    }
                    tokio::task::yield_now().await;
                }
            };
            tokio::time::timeout(STEP, wait).await.with_context(|| format!("waiting on {series}"))?
        }
    }

    /// Another agent's tunnel whose round trips show how responsive the relay stays. Its echo
    /// server and round trips run on a runtime of their own, so they measure the relay and
    /// agents, not whatever load the test's own runtime is busy generating.
    pub struct Canary {
        runtime: Option<tokio::runtime::Runtime>,
        pub public: SocketAddr,
        _agent: Binary,
    }

    /// Round trips made, and the slowest one.
    pub struct Rounds {
        pub count: usize,
        pub slowest: std::time::Duration,
    }

    impl Canary {
        pub async fn start(relay: &RelayBinary) -> anyhow::Result<Self> {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            let echo = runtime.spawn(super::echo_server()).await??;
            let (agent, public) = relay.agent(echo).await?;
            Ok(Self { runtime: Some(runtime), public, _agent: agent })
        }

        /// Round trips, each on a new connection, one per `pace`, until `stop` or `most` of them.
        pub fn run(
            &self,
            pace: std::time::Duration,
            most: usize,
            stop: tokio_util::sync::CancellationToken,
        ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<Rounds>>> {
            let runtime = self.runtime.as_ref().context("the canary's runtime lives as long as the canary")?;
            Ok(runtime.spawn(round_trips(self.public, pace, most, stop)))
        }
    }

    impl Drop for Canary {
        fn drop(&mut self) {
            // Dropped inside the test's runtime, where a blocking shutdown is not allowed.
            if let Some(runtime) = self.runtime.take() {
                runtime.shutdown_background();
            }
        }
    }

    async fn round_trips(
        public: SocketAddr,
        pace: std::time::Duration,
        most: usize,
        stop: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Rounds> {
        let mut rounds = Rounds { count: 0, slowest: std::time::Duration::ZERO };
        let mut pace = tokio::time::interval(pace);
        while rounds.count < most {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = pace.tick() => {}
            }
            let message = format!("canary {}", rounds.count);
            let started = std::time::Instant::now();
            let echoed = super::exchange(public, message.as_bytes()).await.context("canary round trip")?;
            rounds.slowest = rounds.slowest.max(started.elapsed());
            anyhow::ensure!(echoed == message.as_bytes(), "the canary's echo differs");
            rounds.count += 1;
        }
        Ok(rounds)
    }
}

/// Serves the inspector for `stats` on an ephemeral loopback port until the test ends.
pub async fn start_inspector(stats: &agent::stats::Stats) -> anyhow::Result<SocketAddr> {
    let listener = agent::inspector::bind(Some("127.0.0.1:0".parse()?)).await.context("inspector bound")?;
    let addr = listener.local_addr()?;
    tokio::spawn(agent::inspector::serve(listener, stats.clone(), CancellationToken::new()));
    Ok(addr)
}

/// The agent's snapshot once `test` holds for it; waits on the stats' changes, not on time.
pub async fn snapshot_when(
    stats: &agent::stats::Stats,
    test: impl Fn(&agent::snapshot::Snapshot) -> bool,
) -> anyhow::Result<agent::snapshot::Snapshot> {
    let mut changes = stats.subscribe();
    let wait = async {
        loop {
            changes.mark_unchanged();
            let snapshot = stats.snapshot();
            if test(&snapshot) {
                return anyhow::Ok(snapshot);
            }
            changes.changed().await?;
        }
    };
    tokio::time::timeout(STEP, wait).await.context("the agent's stats never got there")?
}

/// The data of the first server-sent event whose data passes `test`, from `GET path`.
pub async fn event_where(addr: SocketAddr, path: &str, test: impl Fn(&str) -> bool) -> anyhow::Result<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await?;
    let mut received = Vec::new();
    let mut scanned = 0;
    let wait = async {
        loop {
            let mut chunk = [0u8; 16 * 1024];
            let n = tcp.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "the event stream ended");
            received.extend_from_slice(&chunk[..n]);
            // Each event travels in one chunk of the chunked body, so its text is contiguous.
            let text = String::from_utf8_lossy(&received).into_owned();
            while let Some(start) = text[scanned..].find("data: ").map(|i| scanned + i) {
                let Some(len) = text[start..].find("\n\n") else { break };
                let data = &text[start + "data: ".len()..start + len];
                scanned = start + len;
                if test(data) {
                    return Ok(data.to_string());
                }
            }
        }
    };
    tokio::time::timeout(STEP, wait).await.context("no such event")?
}
