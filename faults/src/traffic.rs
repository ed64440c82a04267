//! What flows through the tunnel in the fault suite: an echo server on the home host,
//! hashed bulk transfers and an interactive canary from the client, and the relay's metrics.

use std::{
    net::SocketAddr,
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

/// The relay's `/metrics` page, read from inside the relay's host.
pub async fn metrics(sim: &Sim) -> anyhow::Result<String> {
    admin_get(sim, "/metrics").await
}

/// A page of the relay's admin endpoint (`/metrics`, `/api/agents`), headers included, read
/// from inside the relay's host.
pub async fn admin_get(sim: &Sim, path: &str) -> anyhow::Result<String> {
    let mut tcp = sim.connect(Host::Relay, ADMIN.parse()?).await?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {ADMIN}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut page = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut page)).await??;
    Ok(page)
}

/// The value of one series on a `/metrics` page (`name` or `name{labels}`), 0 if absent:
/// counters that were never touched are not printed.
pub fn sample(page: &str, series: &str) -> f64 {
    testkit::sample(page, series).unwrap_or(0.0)
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
