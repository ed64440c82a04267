//! What flows through the tunnel in the fault suite: echo servers (TCP and UDP) on the home
//! host, hashed bulk transfers and an interactive canary from the client, and the relay's
//! metrics.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    process::ADMIN,
    sim::{Host, Sim},
};

pub use testkit::probes::{Progress, echo_transfer, timed_round_trip};

/// Starts an echo server on the home host's loopback; returns its address there.
pub fn echo_server(sim: &Sim) -> anyhow::Result<SocketAddr> {
    let listener = sim.listen(Host::Home, "127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    testkit::probes::serve_echo(listener);
    Ok(addr)
}

/// A UDP echo on the home host's loopback: each datagram goes back to its sender.
pub struct UdpEcho {
    pub addr: SocketAddr,
    echoed: Arc<AtomicU64>,
    /// Every sender seen: the agent gives each flow its own socket, so a new sender is a new
    /// flow at the agent.
    senders: Arc<Mutex<HashSet<SocketAddr>>>,
    serving: tokio::task::JoinHandle<()>,
}

impl UdpEcho {
    pub fn start(sim: &Sim) -> anyhow::Result<Self> {
        let socket = sim.udp_socket(Host::Home, "127.0.0.1:0".parse()?)?;
        let addr = socket.local_addr()?;
        let (echoed, senders) = (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(HashSet::new())));
        let (count, seen) = (echoed.clone(), senders.clone());
        let serving = tokio::spawn(async move {
            let mut buffer = vec![0u8; 65_536];
            while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
                seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(from);
                if socket.send_to(&buffer[..len], from).await.is_ok() {
                    count.fetch_add(1, Relaxed);
                }
            }
        });
        Ok(Self { addr, echoed, senders, serving })
    }

    /// Datagrams received and sent back.
    pub fn echoed(&self) -> u64 {
        self.echoed.load(Relaxed)
    }

    /// How many different addresses have sent to the echo.
    pub fn senders(&self) -> usize {
        self.senders.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// The relay's `/metrics` page, read from inside the relay's host.
pub async fn metrics(sim: &Sim) -> anyhow::Result<String> {
    admin_get(sim, "/metrics").await
}

/// A page of the relay's admin endpoint (`/metrics`, `/api/agents`), headers included, read
/// from inside the relay's host.
pub async fn admin_get(sim: &Sim, path: &str) -> anyhow::Result<String> {
    admin_get_at(sim, ADMIN.parse()?, path).await
}

/// A page of the admin endpoint at `admin` on the relay's host (one relay of a fleet there).
pub async fn admin_get_at(sim: &Sim, admin: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut tcp = sim.connect(Host::Relay, admin).await?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut page = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut page)).await??;
    Ok(page)
}

/// The value of one series on a `/metrics` page (`name` or `name{labels}`), 0 if absent:
/// counters that were never touched are not printed.
pub fn sample(page: &str, series: &str) -> f64 {
    testkit::sample(page, series).unwrap_or(0.0)
}

/// The sum of the series of metric `name` whose labels include each of `labels`
/// (`key="value"`), 0 if none: for series whose other labels a test need not spell out.
pub fn sum_where(page: &str, name: &str, labels: &[&str]) -> f64 {
    let prefix = format!("{name}{{");
    page.lines()
        .filter_map(|line| line.strip_prefix(&prefix)?.split_once("} "))
        .filter(|(set, _)| labels.iter().all(|label| set.split(',').any(|l| l == *label)))
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum()
}

/// Polls the relay's metrics until `series` satisfies `done`, up to `within`.
pub async fn metric_until(
    sim: &Sim,
    series: &str,
    within: Duration,
    done: impl Fn(f64) -> bool,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + within;
    let mut every = tokio::time::interval(Duration::from_millis(100));
    loop {
        every.tick().await;
        let value = sample(&metrics(sim).await?, series);
        if done(value) {
            return Ok(value);
        }
        anyhow::ensure!(Instant::now() < deadline, "{series} still {value} after {within:?}");
    }
}
