//! What flows through the tunnel in the fault suite: an echo server on the home host,
//! hashed bulk transfers and an interactive canary from the client, and the relay's metrics.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use rand::RngCore;
use ring::digest::{Context as Digest, SHA256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    process::ADMIN,
    sim::{Host, Sim},
};

const CHUNK: usize = 64 * 1024;

/// Starts an echo server on the home host's loopback; returns its address there.
pub fn echo_server(sim: &Sim) -> anyhow::Result<SocketAddr> {
    let listener = sim.listen(Host::Home, "127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = tcp.into_split();
                if tokio::io::copy(&mut read, &mut write).await.is_ok() {
                    write.shutdown().await.ok();
                }
            });
        }
    });
    Ok(addr)
}

/// Bytes received so far by a running transfer, for watching progress.
#[derive(Clone)]
pub struct Progress(Arc<tokio::sync::watch::Sender<u64>>);

impl Default for Progress {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

impl Progress {
    pub fn bytes(&self) -> u64 {
        *self.0.borrow()
    }

    /// Waits until at least `bytes` have come back, up to `within`.
    pub async fn reached(&self, bytes: u64, within: Duration) -> anyhow::Result<()> {
        let mut received = self.0.subscribe();
        let waited = tokio::time::timeout(within, received.wait_for(|n| *n >= bytes)).await;
        anyhow::ensure!(matches!(waited, Ok(Ok(_))), "only {} of {bytes} bytes back after {within:?}", self.bytes());
        Ok(())
    }
}

/// Sends `len` random bytes to an echo service through `tcp` while reading the echo; fails
/// unless what came back hashes the same as what went out.
pub async fn echo_transfer(tcp: tokio::net::TcpStream, len: usize, progress: Progress) -> anyhow::Result<()> {
    let (mut read, mut write) = tcp.into_split();
    let send = async move {
        let mut block = vec![0u8; CHUNK];
        rand::rng().fill_bytes(&mut block);
        let mut digest = Digest::new(&SHA256);
        let mut sent = 0usize;
        for counter in 0u64.. {
            if sent >= len {
                break;
            }
            // Each chunk differs, so a duplicated or reordered chunk changes the hash.
            block[..8].copy_from_slice(&counter.to_le_bytes());
            let take = CHUNK.min(len - sent);
            write.write_all(&block[..take]).await.context("send")?;
            digest.update(&block[..take]);
            sent += take;
        }
        write.shutdown().await.context("send FIN")?;
        anyhow::Ok(digest.finish())
    };
    let receive = async move {
        let mut digest = Digest::new(&SHA256);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = read.read(&mut buf).await.context("receive")?;
            if n == 0 {
                break;
            }
            digest.update(&buf[..n]);
            progress.0.send_modify(|total| *total += n as u64);
        }
        anyhow::Ok(digest.finish())
    };
    let (sent, received) = tokio::try_join!(send, receive)?;
    anyhow::ensure!(sent.as_ref() == received.as_ref(), "the echo differs from what was sent (sha256 mismatch)");
    Ok(())
}

/// One small round trip through a fresh or existing connection; returns how long it took.
pub async fn round_trip(tcp: &mut tokio::net::TcpStream, message: &[u8]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    tcp.write_all(message).await?;
    let mut back = vec![0u8; message.len()];
    tcp.read_exact(&mut back).await?;
    anyhow::ensure!(back == message, "the canary's echo differs");
    Ok(started.elapsed())
}

/// The relay's `/metrics` page, read from inside the relay's host.
pub async fn metrics(sim: &Sim) -> anyhow::Result<String> {
    let mut tcp = sim.connect(Host::Relay, ADMIN.parse()?).await?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n").await?;
    let mut page = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut page)).await??;
    Ok(page)
}

/// The value of one series on a `/metrics` page (`name` or `name{labels}`), 0 if absent:
/// counters that were never touched are not printed.
pub fn sample(page: &str, series: &str) -> f64 {
    page.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
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
