//! The agent's inspector and stats as tests watch them.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

use crate::STEP;

/// Serves the inspector for `stats` on an ephemeral loopback port until the test ends.
pub async fn start_inspector(stats: &agent::stats::Stats) -> anyhow::Result<SocketAddr> {
    let listener = agent::inspector::bind(Some("127.0.0.1:0".parse()?)).await.context("inspector bound")?;
    let addr = listener.local_addr()?;
    tokio::spawn(agent::inspector::serve(listener, stats.clone(), None, CancellationToken::new()));
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
