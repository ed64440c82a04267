//! What tests send through tunnels and what answers them: echo and custom local servers,
//! exchanges and round trips, and hashed bulk transfers whose progress can be watched.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use rand::RngCore;
use ring::digest::{Context as Digest, SHA256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::STEP;

const CHUNK: usize = 64 * 1024;

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

/// A local server running `handler` for each connection until the test ends.
pub async fn local_server<F, Fut>(handler: F) -> anyhow::Result<SocketAddr>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    serve(listener, handler);
    Ok(addr)
}

/// Runs `handler` for each connection `listener` accepts, until the test's runtime ends.
pub fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(handler(tcp));
        }
    });
}

/// Echoes every byte, and half-closes after the client does.
pub async fn echo_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    serve_echo(listener);
    Ok(addr)
}

/// Serves the echo of [`echo_server`] on a listener bound by the caller (in a network
/// namespace, say).
pub fn serve_echo(listener: TcpListener) {
    serve(listener, |mut tcp| async move {
        let (mut r, mut w) = tcp.split();
        tokio::io::copy(&mut r, &mut w).await?;
        w.shutdown().await
    });
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
pub async fn echo_transfer(tcp: TcpStream, len: usize, progress: Progress) -> anyhow::Result<()> {
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
pub async fn timed_round_trip(tcp: &mut TcpStream, message: &[u8]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    tcp.write_all(message).await?;
    let mut back = vec![0u8; message.len()];
    tcp.read_exact(&mut back).await?;
    anyhow::ensure!(back == message, "the canary's echo differs");
    Ok(started.elapsed())
}
