//! Real UDP servers and clients for UDP tunnels, all on loopback: an echo in the test's own
//! runtime, dnsmasq queried by `dig`, and iperf3 in UDP mode. The programs come from Debian
//! packages that `faults/netsim.sh deps` installs; a test checks [`installed`](crate::processes::installed) first and skips
//! visibly when one is missing. Each server is a child process on a free port, killed on drop.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::Context;
use serde::Deserialize;
use tokio::{
    net::{TcpListener, UdpSocket},
    process::Command,
};

pub use crate::processes::installed;
use crate::{STEP, processes::Binary};

/// Sends every datagram back to its sender, until the runtime ends.
pub async fn udp_echo_server() -> anyhow::Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            if socket.send_to(&buf[..len], from).await.is_err() {
                break;
            }
        }
    });
    Ok(addr)
}

/// A loopback port free a moment ago for both TCP and UDP: dnsmasq and iperf3 bind both.
pub async fn free_tcp_and_udp_port() -> anyhow::Result<u16> {
    for _ in 0..64 {
        let tcp = TcpListener::bind("127.0.0.1:0").await?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).await.is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no loopback port free for both TCP and UDP")
}

/// A dnsmasq of the test's own answering `records` from its configuration alone: no
/// upstream, no hosts file, no pid file, its log (one line per query) on stderr.
pub struct Dnsmasq {
    pub process: Binary,
    pub addr: SocketAddr,
}

impl Dnsmasq {
    pub async fn start(records: &[(&str, IpAddr)]) -> anyhow::Result<Self> {
        let port = free_tcp_and_udp_port().await?;
        let mut command = Command::new("dnsmasq");
        command.args(["--keep-in-foreground", "--no-daemon", "--conf-file=/dev/null", "--pid-file="]);
        command.args(["--no-resolv", "--no-hosts", "--bind-interfaces", "--listen-address=127.0.0.1"]);
        command.arg(format!("--port={port}")).arg("--log-queries");
        for (name, ip) in records {
            command.arg(format!("--address=/{name}/{ip}"));
        }
        let mut process = Binary::start(&mut command)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        answering(addr, || {
            anyhow::ensure!(process.running(), "dnsmasq exited: {}", process.stderr_text());
            Ok(())
        })
        .await?;
        Ok(Self { process, addr })
    }
}

/// Waits until the DNS server at `addr` answers a query (any answer will do: a refusal is
/// an answer), or `alive` says its process has exited.
pub(crate) async fn answering(addr: SocketAddr, mut alive: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(addr).await?;
    let query = dns_query(0x6275, "ready.burrow.test");
    let wait = async {
        let mut buf = [0u8; 512];
        loop {
            socket.send(&query).await?;
            // An unanswered try is the poll interval; a refused one (nothing bound yet) returns at once.
            match tokio::time::timeout(Duration::from_millis(50), socket.recv(&mut buf)).await {
                Ok(Ok(len)) if len >= 3 && buf[..2] == query[..2] && buf[2] & 0x80 != 0 => return Ok(()),
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => {}
            }
            alive()?;
        }
    };
    tokio::time::timeout(STEP, wait).await.with_context(|| format!("no DNS answer from {addr}"))?
}

/// A standard query for the A record of `name`, recursion desired (RFC 1035 section 4.1).
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut query = Vec::with_capacity(18 + name.len());
    query.extend_from_slice(&id.to_be_bytes());
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query
}

/// What `dig` printed: the answer records' data (empty for a name with no record) and the
/// query time it measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigAnswer {
    pub answers: Vec<String>,
    pub query_time: Duration,
}

/// Asks `server` for the A record of `name` with the real `dig`, one try of at most 2 s.
/// `+short` would drop the query time, so the answer section is read in full form.
pub async fn dig(server: SocketAddr, name: &str) -> anyhow::Result<DigAnswer> {
    let mut command = Command::new("dig");
    command.arg(format!("@{}", server.ip())).args(["-p", &server.port().to_string()]);
    command.args(["+tries=1", "+timeout=2", "+noall", "+answer", "+stats", name]);
    let out = tokio::time::timeout(STEP, command.kill_on_drop(true).output()).await.context("dig hung")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "dig {name} at {server} failed ({}): {stdout}", out.status);
    parse_dig(&stdout)
}

fn parse_dig(stdout: &str) -> anyhow::Result<DigAnswer> {
    let answers = stdout
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with(';'))
        .filter_map(|record| record.split_whitespace().last().map(str::to_owned))
        .collect();
    let millis = stdout
        .lines()
        .find_map(|line| line.strip_prefix(";; Query time: ")?.strip_suffix(" msec")?.parse().ok())
        .with_context(|| format!("no query time in dig's output: {stdout}"))?;
    Ok(DigAnswer { answers, query_time: Duration::from_millis(millis) })
}

/// An iperf3 server on 127.0.0.1; iperf3 takes its control connection over TCP and, in UDP
/// mode, its data as UDP on the same port number.
pub struct Iperf3Server {
    pub process: Binary,
    pub port: u16,
}

impl Iperf3Server {
    /// Starts on `port`, or on a port free for both TCP and UDP when `port` is 0.
    pub async fn start(port: u16) -> anyhow::Result<Self> {
        let port = if port == 0 { free_tcp_and_udp_port().await? } else { port };
        let mut command = Command::new("iperf3");
        // Without --forceflush its stdout is block-buffered into the pipe and the line never comes.
        command.args(["--server", "--bind", "127.0.0.1", "--port", &port.to_string(), "--forceflush"]);
        let mut process = Binary::start(&mut command)?;
        process.line_with(&format!("Server listening on {port}")).await?;
        Ok(Self { process, port })
    }
}

/// What an `iperf3 -u` run measured: rates in bits per second, loss and jitter as the server
/// saw them, and datagrams sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Iperf3UdpReport {
    pub sent_bps: f64,
    pub received_bps: f64,
    pub lost_percent: f64,
    pub lost_packets: u64,
    pub jitter_ms: f64,
    pub packets: u64,
}

/// Runs `iperf3 -u` against `host:port` at `rate` (iperf3's notation: "100M") for `seconds`,
/// each datagram `len` bytes of payload.
pub async fn iperf3_udp_client(
    host: &str,
    port: u16,
    rate: &str,
    seconds: u32,
    len: usize,
) -> anyhow::Result<Iperf3UdpReport> {
    let mut command = Command::new("iperf3");
    command.args(["--client", host, "--port", &port.to_string(), "--udp", "--bitrate", rate]);
    command.args(["--time", &seconds.to_string(), "--length", &len.to_string(), "--json"]);
    let within = STEP + Duration::from_secs(seconds.into());
    let out = tokio::time::timeout(within, command.kill_on_drop(true).output()).await.context("iperf3 hung")??;
    parse_iperf3_udp(&String::from_utf8_lossy(&out.stdout)).with_context(|| {
        format!("iperf3 -u to {host}:{port} ({}): {}", out.status, String::from_utf8_lossy(&out.stderr))
    })
}

#[derive(Deserialize)]
struct Iperf3End {
    sum_sent: Iperf3Sum,
    sum_received: Iperf3Sum,
}

#[derive(Deserialize)]
struct Iperf3Sum {
    bits_per_second: f64,
    jitter_ms: f64,
    lost_packets: u64,
    packets: u64,
    lost_percent: f64,
}

fn parse_iperf3_udp(json: &str) -> anyhow::Result<Iperf3UdpReport> {
    let mut run: serde_json::Value = serde_json::from_str(json).context("iperf3's --json output")?;
    // A failed run still prints its (empty) sections, with the reason beside them.
    if let Some(error) = run.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("iperf3: {error}");
    }
    let Iperf3End { sum_sent, sum_received } =
        serde_json::from_value(run["end"].take()).context("iperf3's end summary")?;
    Ok(Iperf3UdpReport {
        sent_bps: sum_sent.bits_per_second,
        received_bps: sum_received.bits_per_second,
        lost_percent: sum_received.lost_percent,
        lost_packets: sum_received.lost_packets,
        jitter_ms: sum_received.jitter_ms,
        packets: sum_sent.packets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_echo_server_sends_each_datagram_back() -> anyhow::Result<()> {
        let echo = udp_echo_server().await?;
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(echo).await?;
        let mut buf = [0u8; 2048];
        for message in [&b"one"[..], &[7u8; 1400][..]] {
            socket.send(message).await?;
            let len = tokio::time::timeout(STEP, socket.recv(&mut buf)).await??;
            assert_eq!(&buf[..len], message);
        }
        Ok(())
    }

    #[tokio::test]
    async fn dnsmasq_answers_dig_from_its_records_only() -> anyhow::Result<()> {
        if !installed("dnsmasq") || !installed("dig") {
            return Ok(());
        }
        let dnsmasq = Dnsmasq::start(&[("app.burrow.test", "10.20.30.40".parse()?)]).await?;
        let answer = dig(dnsmasq.addr, "app.burrow.test").await?;
        assert_eq!(answer.answers, ["10.20.30.40"]);
        assert!(answer.query_time < Duration::from_secs(2), "{answer:?}");
        assert!(dig(dnsmasq.addr, "other.burrow.test").await?.answers.is_empty());
        dnsmasq.process.stderr_line_with("query[A] app.burrow.test from 127.0.0.1").await?;
        Ok(())
    }

    #[tokio::test]
    async fn dig_fails_when_no_server_answers() -> anyhow::Result<()> {
        if !installed("dig") {
            return Ok(());
        }
        let closed = UdpSocket::bind("127.0.0.1:0").await?.local_addr()?;
        assert!(dig(closed, "app.burrow.test").await.is_err());
        Ok(())
    }

    #[test]
    fn dig_output_gives_answers_and_query_time() -> anyhow::Result<()> {
        let out = "app.test.\t\t0\tIN\tA\t10.1.2.3\n;; Query time: 3 msec\n;; SERVER: 127.0.0.1#53(127.0.0.1) (UDP)\n";
        assert_eq!(
            parse_dig(out)?,
            DigAnswer { answers: vec!["10.1.2.3".into()], query_time: Duration::from_millis(3) }
        );
        Ok(())
    }

    #[tokio::test]
    async fn iperf3_udp_on_loopback_at_50_mbits_loses_little() -> anyhow::Result<()> {
        if !installed("iperf3") {
            return Ok(());
        }
        let server = Iperf3Server::start(0).await?;
        let report = iperf3_udp_client("127.0.0.1", server.port, "50M", 2, 1200).await?;
        assert!(report.lost_percent < 5.0, "{report:?}");
        assert!(report.packets > 5000, "2 s at 50 Mbit/s in 1200-byte datagrams: {report:?}");
        assert!(report.received_bps > 40e6 && report.received_bps < 60e6, "{report:?}");
        Ok(())
    }

    #[test]
    fn an_iperf3_error_is_an_error() {
        let err = parse_iperf3_udp(r#"{"start": {}, "intervals": [], "end": {}, "error": "unable to connect"}"#);
        assert!(format!("{:#}", err.expect_err("error")).contains("unable to connect"));
    }
}
