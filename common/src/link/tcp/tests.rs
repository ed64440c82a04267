use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::{StreamCode, link::StreamWriter};

const WAIT: Duration = Duration::from_secs(10);

fn settings() -> TcpSettings {
    TcpSettings { datagram_queue: 16, ..TcpSettings::agent(Duration::from_secs(1), Duration::from_secs(10)) }
}

/// A relay end and an agent end joined by an in-memory pipe (TLS is not the link's concern).
async fn pair() -> (TcpLink, TcpLink) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let relay = TcpLink::relay_side(a, addr, TcpSettings { receive_window: CONNECTION_RECEIVE_WINDOW, ..settings() });
    let agent = TcpLink::agent_side(b, addr, settings());
    let (relay, agent) = tokio::time::timeout(WAIT, async { tokio::join!(relay, agent) }).await.unwrap();
    (relay.unwrap(), agent.unwrap())
}

#[tokio::test]
async fn the_agents_stream_and_visitor_streams_carry_bytes_both_ways() {
    let (relay, agent) = pair().await;
    let (mut control_out, mut control_in) = agent.open().await.unwrap();
    let (mut relay_out, mut relay_in) = relay.accept().await.unwrap();
    control_out.write_all(b"hello").await.unwrap();
    let mut got = [0; 5];
    relay_in.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello");
    relay_out.write_all(b"welcome").await.unwrap();
    let mut got = [0; 7];
    control_in.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"welcome");
    assert!(agent.open().await.is_err(), "the agent opens one stream per link");

    // 16 visitors at once, 1 MiB each, echoed by the agent.
    let echo = tokio::spawn({
        let agent = agent.clone();
        async move {
            loop {
                let Ok((mut out, mut inn)) = agent.accept().await else { return };
                tokio::spawn(async move {
                    tokio::io::copy(&mut inn, &mut out).await.unwrap();
                    out.shutdown().await.unwrap();
                });
            }
        }
    });
    let mut visitors = tokio::task::JoinSet::new();
    for i in 0..16u8 {
        let relay = relay.clone();
        visitors.spawn(async move {
            let (mut out, mut inn) = relay.open().await.unwrap();
            let sent: Vec<u8> = (0..1024 * 1024).map(|n: u32| (n as u8) ^ i).collect();
            let expected = sent.clone();
            let writer = tokio::spawn(async move {
                out.write_chunk(Bytes::from(sent)).await.unwrap();
                out.finish().unwrap();
                out
            });
            let mut echoed = Vec::new();
            inn.read_to_end(&mut echoed).await.unwrap();
            writer.await.unwrap();
            assert!(echoed == expected, "visitor {i}: {} bytes back, not identical", echoed.len());
        });
    }
    let all = tokio::time::timeout(WAIT, visitors.join_all()).await;
    assert_eq!(all.expect("every visitor done in time").len(), 16);
    echo.abort();
}

#[tokio::test]
async fn a_close_code_reaches_the_peer() {
    let (relay, agent) = pair().await;
    relay.close(CloseCode::Revoked);
    let why = tokio::time::timeout(WAIT, agent.closed()).await.unwrap();
    assert_eq!(why.peer_code(), Some(CloseCode::Revoked), "{why}");
    assert!(matches!(relay.close_reason(), Some(LinkError::LocallyClosed)));
    assert!(agent.accept().await.is_err());
}

#[tokio::test]
async fn a_reset_stream_fails_at_the_peer_with_a_reset() {
    let (relay, agent) = pair().await;
    let (mut out, mut inn) = relay.open().await.unwrap();
    out.write_all(b"x").await.unwrap();
    let (mut agent_out, _agent_in) = agent.accept().await.unwrap();
    StreamWriter::abort(&mut agent_out, StreamCode::LocalUnreachable);
    let mut buf = Vec::new();
    let err = tokio::time::timeout(WAIT, inn.read_to_end(&mut buf)).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert!(err.to_string().contains("local server unreachable"), "{err}");
}

#[tokio::test]
async fn half_close_leaves_the_other_direction_open() {
    let (relay, agent) = pair().await;
    let (mut out, mut inn) = relay.open().await.unwrap();
    out.write_all(b"request").await.unwrap();
    out.shutdown().await.unwrap();
    let (mut agent_out, mut agent_in) = agent.accept().await.unwrap();
    let mut request = Vec::new();
    agent_in.read_to_end(&mut request).await.unwrap();
    assert_eq!(request, b"request");
    agent_out.write_all(b"response after the request ended").await.unwrap();
    agent_out.shutdown().await.unwrap();
    let mut response = Vec::new();
    inn.read_to_end(&mut response).await.unwrap();
    assert_eq!(response, b"response after the request ended");
}

#[tokio::test]
async fn datagrams_cross_and_oversized_ones_are_refused() {
    let (relay, agent) = pair().await;
    // Datagrams are dropped until the link stream has been granted room; resend the first
    // until one arrives.
    tokio::time::timeout(WAIT, async {
        let mut resend = tokio::time::interval(Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = resend.tick() => relay.send_datagram(Bytes::from_static(b"first")).unwrap(),
                got = agent.read_datagram() => break assert_eq!(got.unwrap(), &b"first"[..]),
            }
        }
    })
    .await
    .unwrap();
    for i in 0..10u8 {
        relay.send_datagram(Bytes::from(vec![i; 100])).unwrap();
    }
    for i in 0..10u8 {
        let mut got = tokio::time::timeout(WAIT, agent.read_datagram()).await.unwrap().unwrap();
        while got == b"first"[..] {
            got = tokio::time::timeout(WAIT, agent.read_datagram()).await.unwrap().unwrap();
        }
        assert_eq!(got, vec![i; 100]);
    }
    agent.send_datagram(Bytes::from_static(b"up")).unwrap();
    assert_eq!(tokio::time::timeout(WAIT, relay.read_datagram()).await.unwrap().unwrap(), &b"up"[..]);
    let too_large = Bytes::from(vec![0; TCP_MAX_DATAGRAM + 1]);
    assert!(matches!(relay.send_datagram(too_large), Err(DatagramError::TooLarge)));
}

#[tokio::test]
async fn a_probe_is_answered() {
    let (relay, _agent) = pair().await;
    let before = relay.path().received_packets;
    relay.elicit_answer().unwrap();
    tokio::time::timeout(WAIT, async {
        while relay.path().received_packets == before {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the agent answered the PING");
    assert!(relay.path().rtt > Duration::ZERO);
}

/// A pipe end that stops moving bytes once frozen: a peer whose host went away.
struct Freezable {
    inner: tokio::io::DuplexStream,
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl AsyncRead for Freezable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.frozen.load(Relaxed) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Freezable {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.frozen.load(Relaxed) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_silent_peer_times_out() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let b = Freezable { inner: b, frozen: frozen.clone() };
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let quick =
        TcpSettings { keep_alive: Duration::from_millis(50), idle_timeout: Duration::from_millis(300), ..settings() };
    let (relay, agent) = tokio::join!(TcpLink::relay_side(a, addr, quick), TcpLink::agent_side(b, addr, settings()));
    let (relay, _agent) = (relay.unwrap(), agent.unwrap());
    frozen.store(true, Relaxed);
    let why = tokio::time::timeout(WAIT, relay.closed()).await.unwrap();
    assert!(matches!(why, LinkError::TimedOut), "{why}");
}
