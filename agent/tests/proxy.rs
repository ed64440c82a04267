//! The agent's way out through a proxy, against real proxies on loopback: tinyproxy for HTTP
//! CONNECT, microsocks for SOCKS5 (both installed by `faults/netsim.sh deps`), each started
//! with its own config on a free port, and fakes for what real proxies rarely do.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use agent::proxy::{Proxy, ProxySetting, connect_tcp};
use anyhow::Context;
use testkit::{
    STEP, echo_server,
    processes::{Binary, installed},
    random_bytes, read_head, round_trip,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    process::Command,
    sync::oneshot,
};

fn proxy(url: &str) -> anyhow::Result<Proxy> {
    match url.parse::<ProxySetting>()? {
        ProxySetting::Via(proxy) => Ok(proxy),
        ProxySetting::Off => anyhow::bail!("{url} names no proxy"),
    }
}

/// A loopback port free a moment ago, for a server that cannot be told to pick one.
async fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port())
}

/// Waits until `port` accepts connections, or the server has exited.
async fn accepting(server: &mut Binary, port: u16) -> anyhow::Result<()> {
    let wait = async {
        loop {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(());
            }
            anyhow::ensure!(server.running(), "the server exited: {}", server.stderr_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(STEP, wait).await.context("the server never listened")?
}

/// A tinyproxy of the test's own, allowing CONNECT to `allowed` only.
struct TinyProxy {
    _process: Binary,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl TinyProxy {
    async fn start(allowed: u16, user: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port().await?;
        let log = dir.path().join("tinyproxy.log");
        let mut config = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Connect\nConnectPort {allowed}\n",
            log.display()
        );
        if let Some((user, password)) = user {
            config.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        let path = dir.path().join("tinyproxy.conf");
        std::fs::write(&path, config)?;
        let mut process = Binary::start(Command::new("tinyproxy").arg("-d").arg("-c").arg(&path))?;
        accepting(&mut process, port).await?;
        Ok(Self { _process: process, port, log, _dir: dir })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Sends random bytes to the echo server at `echo` over `tcp` and checks they come back.
async fn echoes(mut tcp: TcpStream) -> anyhow::Result<()> {
    let data = random_bytes(64 * 1024);
    assert_eq!(round_trip(&mut tcp, &data).await?, data);
    Ok(())
}

#[tokio::test]
async fn bytes_cross_tinyproxy_and_it_logs_the_connect() -> anyhow::Result<()> {
    if !installed("tinyproxy") {
        return Ok(());
    }
    let echo = echo_server().await?;
    let tinyproxy = TinyProxy::start(echo.port(), None).await?;
    let tcp = connect_tcp(Some(&proxy(&tinyproxy.url())?), "127.0.0.1", echo.port()).await?;
    echoes(tcp).await?;
    let log = tinyproxy.log();
    assert!(log.contains(&format!("CONNECT 127.0.0.1:{}", echo.port())), "tinyproxy's log: {log}");
    Ok(())
}

#[tokio::test]
async fn tinyproxy_takes_percent_encoded_credentials_and_refuses_wrong_ones() -> anyhow::Result<()> {
    if !installed("tinyproxy") {
        return Ok(());
    }
    let echo = echo_server().await?;
    let tinyproxy = TinyProxy::start(echo.port(), Some(("alice", "correct.horse-battery"))).await?;
    let url = format!("http://alice:correct%2Ehorse%2Dbattery@127.0.0.1:{}", tinyproxy.port);
    echoes(connect_tcp(Some(&proxy(&url)?), "127.0.0.1", echo.port()).await?).await?;

    let wrong = proxy(&format!("http://alice:hunter2-wrong@127.0.0.1:{}", tinyproxy.port))?;
    let err = connect_tcp(Some(&wrong), "127.0.0.1", echo.port()).await.expect_err("a wrong password");
    let message = err.to_string();
    let expected = format!(
        "the proxy at 127.0.0.1:{} refused CONNECT to 127.0.0.1:{}: 401 Unauthorized \
         (check the user and password in --proxy)",
        tinyproxy.port,
        echo.port()
    );
    assert_eq!(message, expected);
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");

    let anonymous = proxy(&tinyproxy.url())?;
    let err = connect_tcp(Some(&anonymous), "127.0.0.1", echo.port()).await.expect_err("no credentials");
    let message = err.to_string();
    assert!(message.contains(": 407 Proxy Authentication Required (the proxy wants a user and password"), "{message}");
    Ok(())
}

#[tokio::test]
async fn a_port_tinyproxy_does_not_allow_gets_the_port_443_hint() -> anyhow::Result<()> {
    if !installed("tinyproxy") {
        return Ok(());
    }
    let echo = echo_server().await?;
    let tinyproxy = TinyProxy::start(echo.port().wrapping_add(1).max(1), None).await?;
    let err = connect_tcp(Some(&proxy(&tinyproxy.url())?), "127.0.0.1", echo.port()).await.expect_err("forbidden");
    let message = err.to_string();
    assert!(message.contains(": 403 Forbidden") && message.contains("port 443 only"), "{message}");
    Ok(())
}

/// A microsocks of the test's own.
async fn microsocks(user: Option<(&str, &str)>) -> anyhow::Result<(Binary, u16)> {
    let port = free_port().await?;
    let mut command = Command::new("microsocks");
    command.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
    if let Some((user, password)) = user {
        command.args(["-u", user, "-P", password]);
    }
    let mut process = Binary::start(&mut command)?;
    accepting(&mut process, port).await?;
    Ok((process, port))
}

#[tokio::test]
async fn bytes_cross_microsocks_by_name_and_by_address() -> anyhow::Result<()> {
    if !installed("microsocks") {
        return Ok(());
    }
    let echo = echo_server().await?;
    let (_socks, port) = microsocks(None).await?;
    for scheme in ["socks5", "socks5h"] {
        let through = proxy(&format!("{scheme}://127.0.0.1:{port}"))?;
        echoes(connect_tcp(Some(&through), "localhost", echo.port()).await?).await?;
    }
    Ok(())
}

#[tokio::test]
async fn microsocks_takes_credentials_and_refuses_wrong_ones() -> anyhow::Result<()> {
    if !installed("microsocks") {
        return Ok(());
    }
    let echo = echo_server().await?;
    let (_socks, port) = microsocks(Some(("bob", "s3cret pass"))).await?;
    let right = proxy(&format!("socks5h://bob:s3cret%20pass@127.0.0.1:{port}"))?;
    echoes(connect_tcp(Some(&right), "127.0.0.1", echo.port()).await?).await?;
    let wrong = proxy(&format!("socks5h://bob:hunter2-wrong@127.0.0.1:{port}"))?;
    let err = connect_tcp(Some(&wrong), "127.0.0.1", echo.port()).await.expect_err("a wrong password");
    let message = format!("{:#}", anyhow::Error::from(err));
    assert!(message.contains(&format!("SOCKS5 proxy at 127.0.0.1:{port}")), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    Ok(())
}

/// A fake HTTP proxy that answers one request with `reply`, then holds the connection; the
/// request's head comes out of the receiver.
async fn fake_proxy(reply: &'static [u8]) -> anyhow::Result<(SocketAddr, oneshot::Receiver<String>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (head_tx, head_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await?;
        head_tx.send(read_head(&mut tcp).await?).ok();
        tcp.write_all(reply).await?;
        tcp.read_to_end(&mut Vec::new()).await?;
        anyhow::Ok(())
    });
    Ok((addr, head_rx))
}

#[tokio::test]
async fn bytes_the_proxy_sends_after_its_200_are_refused() -> anyhow::Result<()> {
    let (addr, head) = fake_proxy(b"HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-surprise\r\n").await?;
    let through = proxy(&format!("http://user%40corp:pa%3Ass@{addr}"))?;
    let err = connect_tcp(Some(&through), "relay.example.com", 443).await.expect_err("bytes after the 200");
    assert_eq!(
        err.to_string(),
        format!("the proxy at {addr} sent 18 bytes of its own after accepting CONNECT to relay.example.com:443")
    );
    let head = head.await?.to_ascii_lowercase();
    assert!(head.starts_with("connect relay.example.com:443 http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nhost: relay.example.com:443\r\n"), "{head}");
    // base64("user@corp:pa:ss")
    assert!(head.contains("\r\nproxy-authorization: basic dxnlckbjb3jwonbhonnz\r\n"), "{head}");
    Ok(())
}

#[tokio::test]
async fn a_silent_proxy_times_out_naming_the_step() -> anyhow::Result<()> {
    // Accepted by the kernel, never read: the CONNECT goes unanswered.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let through = proxy(&format!("http://{addr}"))?;
    let started = tokio::time::Instant::now();
    tokio::time::pause();
    let err = connect_tcp(Some(&through), "relay.example.com", 443).await.expect_err("no answer");
    assert_eq!(
        err.to_string(),
        format!("CONNECT to relay.example.com:443 through the proxy at {addr}: no answer within 10s")
    );
    assert!(started.elapsed() >= agent::proxy::CONNECT_TIMEOUT);
    drop(listener);
    Ok(())
}

#[tokio::test]
async fn without_a_proxy_the_connection_is_direct() -> anyhow::Result<()> {
    let echo = echo_server().await?;
    echoes(connect_tcp(None, "127.0.0.1", echo.port()).await?).await
}

#[tokio::test]
async fn a_bad_proxy_stops_the_agent_naming_where_it_was_given_without_the_password() -> anyhow::Result<()> {
    let agent = || -> anyhow::Result<Command> {
        let mut agent = Command::new(testkit::processes::agent_bin()?);
        agent.args(["--local", "8080", "--relay", "127.0.0.1:9"]).env("BURROW_TOKEN", "brw_long_enough_0123456789");
        for name in ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY", "BURROW_PROXY"] {
            agent.env_remove(name);
        }
        Ok(agent)
    };
    let (code, stderr) = Binary::start(agent()?.args(["--proxy", "gopher://alice:hunter2@x"]))?.exit(STEP).await?;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("key `proxy`") && stderr.contains("gopher://alice:***@x"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let (code, stderr) = Binary::start(agent()?.env("HTTPS_PROXY", "https://alice:hunter2@x"))?.exit(STEP).await?;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("HTTPS_PROXY") && stderr.contains("not supported"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    Ok(())
}
