//! HTTP tunnels end to end as a user meets them: the compiled relay and agent, and curl as
//! the visitor, with `--resolve` standing in for the wildcard DNS record.
//! `scripts/test` installs curl when it is missing.

use std::{net::SocketAddr, path::Path};

use anyhow::Context;
use testkit::{
    curl::curl,
    processes::{AgentBinary, RelayBinary, agent_bin},
};
use tokio::{io::AsyncWriteExt, net::TcpListener, process::Command};

const PAGE: &str = "served from the laptop";

/// A local web server that answers every request with [`PAGE`] and the forwarding headers it
/// received, one per line.
async fn web_server() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let head = testkit::read_head(&mut tcp).await?.to_lowercase();
                let forwarded: Vec<&str> =
                    head.lines().filter(|l| l.starts_with("x-forwarded-") || l.starts_with("authorization")).collect();
                let body = format!("{PAGE}\n{}\n", forwarded.join("\n"));
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                tcp.write_all(response.as_bytes()).await?;
                anyhow::Ok(tcp.shutdown().await?)
            });
        }
    });
    Ok(port)
}

struct RunningRelay {
    binary: RelayBinary,
    http: SocketAddr,
    https: SocketAddr,
    dir: tempfile::TempDir,
}

async fn start_relay() -> anyhow::Result<RunningRelay> {
    let dir = tempfile::tempdir()?;
    let mut command = RelayBinary::loopback_command(dir.path())?;
    command.args(["--admin-listen", "off", "--domain", "burrow.test"]).args([
        "--http-listen",
        "127.0.0.1:0",
        "--https-listen",
        "127.0.0.1:0",
    ]);
    let binary = RelayBinary::launch(&mut command).await?;
    let http = binary.ready.http.context("the HTTP port is on")?;
    let https = binary.ready.https.context("the HTTPS port is on")?;
    Ok(RunningRelay { binary, http, https, dir })
}

fn resolve(host: &str, addr: SocketAddr) -> String {
    format!("{host}:{}:{}", addr.port(), addr.ip())
}

fn cacert(dir: &Path) -> String {
    dir.join("https-cert.pem").display().to_string()
}

#[tokio::test]
async fn curl_reaches_the_local_server_over_https_and_http_by_name() -> anyhow::Result<()> {
    let web = web_server().await?;
    let relay = start_relay().await?;
    // The password comes from the environment, where other local users cannot read it.
    let mut agent = AgentBinary::launch(
        relay
            .binary
            .agent_command(([127, 0, 0, 1], web).into())?
            .args(["--inspect", "off", "--http", "myapp"])
            .env("BURROW_BASIC_AUTH", "alice:correct-horse"),
    )
    .await?;
    let https_url = format!("https://myapp.burrow.test:{}/", relay.https.port());
    assert_eq!(agent.ready.tunnels[0].url, https_url.trim_end_matches('/'));
    let line = agent.process.line_with("tunnel myapp:").await?;
    assert!(line.contains(&format!("{} -> 127.0.0.1:{web}", https_url.trim_end_matches('/'))), "{line}");

    let (code, body) = curl(&[
        "--resolve",
        &resolve("myapp.burrow.test", relay.https),
        "--cacert",
        &cacert(relay.dir.path()),
        "--user",
        "alice:correct-horse",
        &https_url,
    ])
    .await?;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with(PAGE), "{body}");
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
    assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
    assert!(!body.contains("authorization"), "the relay keeps the credentials it checked: {body}");

    let http_url = format!("http://myapp.burrow.test:{}/", relay.http.port());
    let http_resolve = resolve("myapp.burrow.test", relay.http);
    let (code, body) = curl(&["--resolve", &http_resolve, "--user", "alice:correct-horse", &http_url]).await?;
    assert_eq!((code, body.contains("x-forwarded-proto: http\n")), (200, true), "{body}");

    let (code, body) = curl(&["--resolve", &http_resolve, &http_url]).await?;
    assert_eq!(code, 401, "no credentials: {body}");
    let unknown = format!("http://nope.burrow.test:{}/", relay.http.port());
    let (code, body) = curl(&["--resolve", &resolve("nope.burrow.test", relay.http), &unknown]).await?;
    assert_eq!(code, 404);
    assert!(body.contains("nope.burrow.test"), "the page names the host it got: {body}");
    drop(agent);
    drop(relay.binary);
    Ok(())
}

#[tokio::test]
async fn the_embedded_relay_serves_http_tunnels_under_localhost() -> anyhow::Result<()> {
    let web = web_server().await?;
    let home = tempfile::tempdir()?;
    let mut agent = AgentBinary::launch(Command::new(agent_bin()?).env("XDG_DATA_HOME", home.path()).args([
        "--local",
        &web.to_string(),
        "--http",
        "myapp",
        "--inspect",
        "off",
    ]))
    .await?;
    agent.process.line_with("tunnel myapp: https://myapp.localhost").await?;
    // The plain-HTTP address follows on its own line: 8880, or a free port if that is taken.
    agent.process.line_with("also reachable at http://myapp.localhost").await?;
    let url = agent.ready.tunnels[0].urls.get(1).context("the plain-HTTP address")?.clone();
    assert!(url.starts_with("http://myapp.localhost:"), "{url}");
    let port: u16 = url.rsplit(':').next().context("port")?.parse()?;
    // curl resolves *.localhost to loopback itself; --resolve keeps the test independent of
    // the curl version.
    let local: SocketAddr = ([127, 0, 0, 1], port).into();
    let (code, body) = curl(&["--resolve", &resolve("myapp.localhost", local), &format!("{url}/")]).await?;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with(PAGE), "{body}");
    Ok(())
}
