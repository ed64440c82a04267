//! The compiled `relay` and `agent` binaries, run as a user runs them.
//! Run with `cargo build --workspace --bins && cargo test -p burrow-agent --test binaries`.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use testkit::processes::{AgentBinary, Binary, RelayBinary, agent_bin, relay_bin};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    process::Command,
};

const STEP: Duration = Duration::from_secs(30);
const PAGE: &str = "<h1>served from the laptop</h1>";

/// Serves one small page to every request.
async fn web_server() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The page is the same whatever the request asks for.
                testkit::read_head(&mut tcp).await?;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                    PAGE.len()
                );
                tcp.write_all(response.as_bytes()).await?;
                anyhow::Ok(tcp.shutdown().await?)
            });
        }
    });
    Ok(port)
}

async fn http_get(port: u16) -> anyhow::Result<String> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    let mut response = String::new();
    tokio::time::timeout(STEP, tcp.read_to_string(&mut response)).await??;
    Ok(response)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test]
async fn relay_and_agent_binaries_serve_a_web_page() -> anyhow::Result<()> {
    let web = web_server().await?;
    let relay = RelayBinary::start(&[]).await?;
    let mut agent = AgentBinary::launch(&mut relay.agent_command(loopback(web))?).await?;
    let line = agent.process.line_with("tunnel tcp-").await?;
    assert!(line.ends_with(&format!("-> 127.0.0.1:{web}")), "{line}");

    let response = http_get(agent.public_addr()?.port()).await?;
    assert!(response.starts_with("HTTP/1.1 200 OK") && response.ends_with(PAGE), "{response}");

    assert_eq!(agent.process.terminate().await?, 0, "agent exits 0 on SIGTERM");
    assert_eq!(relay.process.terminate().await?, 0, "relay exits 0 on SIGTERM");
    Ok(())
}

#[tokio::test]
async fn agent_binary_with_a_wrong_token_exits_non_zero_naming_the_problem() -> anyhow::Result<()> {
    let relay = RelayBinary::start(&[]).await?;
    let mut agent = relay.agent_command(loopback(8080))?;
    let (code, stderr) =
        Binary::start(agent.env("BURROW_TOKEN", "brw_wrong_but_long_enough_0123456789"))?.exit(STEP).await?;
    assert_eq!(code, 1);
    assert!(stderr.contains("error: the relay refused: the relay rejected the token"), "{stderr}");
    assert!(!stderr.contains("brw_wrong_but_long_enough_0123456789"), "the token must not be printed");
    relay.process.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn agent_binary_refuses_a_guessable_token_before_connecting() -> anyhow::Result<()> {
    let mut agent = Command::new(agent_bin()?);
    agent.env("BURROW_TOKEN", "").args(["--local", "8080", "--relay", "127.0.0.1:9"]);
    let (code, stderr) = Binary::start(&mut agent)?.exit(STEP).await?;
    assert_eq!(code, 1);
    assert!(stderr.contains("token is 0 characters long: expected at least 16"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn agent_binary_without_relay_serves_through_an_embedded_one() -> anyhow::Result<()> {
    let web = web_server().await?;
    let home = tempfile::tempdir()?;
    let mut command = Command::new(agent_bin()?);
    command.env("XDG_DATA_HOME", home.path()).args(["--local", &web.to_string()]);
    let mut agent = AgentBinary::launch(&mut command).await?;
    let line = agent.process.line_with("tunnel tcp-").await?;
    assert!(line.contains("tcp://127.0.0.1:"), "{line}");

    let response = http_get(agent.public_addr()?.port()).await?;
    assert!(response.ends_with(PAGE), "{response}");
    assert!(home.path().join("burrow/embedded/cert.pem").exists(), "certificate generated and kept");
    let embedded = agent.ready.relay.clone().context("the ready file describes the embedded relay")?;
    assert_eq!(embedded.data_dir, home.path().join("burrow/embedded"));
    assert_eq!(embedded.pid, agent.process.pid()?, "the relay runs inside the agent's process");
    assert!(embedded.token.is_some(), "the embedded relay's token is made at each start");
    assert_eq!(agent.process.terminate().await?, 0);
    Ok(())
}

#[tokio::test]
async fn bad_config_values_stop_startup_naming_key_value_and_form() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut relay = Command::new(relay_bin()?);
    relay.args(["--ports", "9-1", "--data-dir"]).arg(dir.path());
    let (code, stderr) = Binary::start(&mut relay)?.exit(STEP).await?;
    assert_eq!(code, 1);
    assert!(stderr.contains("invalid port range \"9-1\"") && stderr.contains("key `ports`"), "{stderr}");

    let mut agent = Command::new(agent_bin()?);
    agent.env("BURROW_KEEP_ALIVE", "often").args(["--local", "8080", "--relay", "127.0.0.1"]);
    let (code, stderr) = Binary::start(&mut agent)?.exit(STEP).await?;
    assert_eq!(code, 1);
    assert!(stderr.contains("invalid duration \"often\"") && stderr.contains("key `keep_alive`"), "{stderr}");
    Ok(())
}

/// `relay invite` prints a command and an agent.toml; both, pasted as printed (with the local
/// port changed), reach the relay that later starts on that data directory.
#[tokio::test]
async fn an_invitation_works_as_printed_both_as_a_command_and_as_agent_toml() -> anyhow::Result<()> {
    let web = web_server().await?;
    let dir = tempfile::tempdir()?;
    let udp_port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen = format!("127.0.0.1:{udp_port}");
    let relay_args = ["--listen", &listen, "--public-bind", "127.0.0.1", "--admin-listen", "off", "--data-dir"];
    let mut invite = Command::new(relay_bin()?);
    invite.args(relay_args).arg(dir.path()).args(["invite", "alice"]);
    let printed = invite.output().await?;
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let printed = String::from_utf8(printed.stdout)?;
    let command_line = printed.lines().find(|l| l.contains("agent --relay")).context("command line")?;
    let words: Vec<&str> = command_line.split_whitespace().collect();
    let after = |flag: &str| words.iter().position(|w| *w == flag).and_then(|i| words.get(i + 1)).copied();
    let token = words[0].strip_prefix("BURROW_TOKEN=").context("token first")?;
    assert_eq!(after("--relay"), Some(listen.as_str()));

    let mut relay = Command::new(relay_bin()?);
    relay.args(relay_args).arg(dir.path());
    let relay = RelayBinary::launch(&mut relay).await?;
    let fingerprint = relay.fingerprint.to_string();
    assert_eq!(after("--fingerprint"), Some(fingerprint.as_str()), "the invitation names the relay's certificate");

    // Pasted as printed, but exposing this test's web server instead of port 8080.
    let local_flag = words.iter().position(|w| *w == "--local").context("--local")?;
    let mut agent = Command::new(agent_bin()?);
    agent.env("BURROW_TOKEN", token).args(&words[2..local_flag]).args(["--local", &web.to_string()]);
    let agent = AgentBinary::launch(&mut agent).await?;
    assert!(http_get(agent.public_addr()?.port()).await?.ends_with(PAGE));
    assert_eq!(agent.process.terminate().await?, 0);

    let toml: String = printed
        .lines()
        .skip_while(|l| !l.contains("relay = "))
        .map(|l| l.trim().replace("local = 8080", &format!("local = {web}")) + "\n")
        .collect();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, toml)?;
    let mut from_file = Command::new(agent_bin()?);
    from_file.env_remove("BURROW_TOKEN").arg("--config").arg(&config);
    let from_file = AgentBinary::launch(&mut from_file).await?;
    assert!(http_get(from_file.public_addr()?.port()).await?.ends_with(PAGE));
    assert_eq!(from_file.process.terminate().await?, 0);
    assert_eq!(relay.process.terminate().await?, 0);
    Ok(())
}

/// `--ready-file` tells a script what the printed lines tell a person: the agent's pid, its
/// inspector and each tunnel's public address, once the tunnels are online.
#[tokio::test]
async fn the_agent_ready_file_lists_its_tunnels_as_printed() -> anyhow::Result<()> {
    let web = web_server().await?;
    let relay = RelayBinary::start(&[]).await?;
    let mut command = relay.agent_command(loopback(web))?;
    let mut agent = AgentBinary::launch(command.args(["--name", "site", "--inspect", "127.0.0.1:0"])).await?;
    let ready = agent.ready.clone();
    assert_eq!(ready.pid, agent.process.pid()?);
    assert_eq!(ready.relay, None, "an agent given --relay runs no relay of its own");
    let inspector = ready.inspector.context("the inspector listens")?;
    assert_eq!(agent.process.line_with("inspector:").await?, format!("inspector: {inspector}"));
    let [tunnel] = ready.tunnels.as_slice() else { anyhow::bail!("one tunnel expected: {:?}", ready.tunnels) };
    assert_eq!((tunnel.name.as_str(), tunnel.local.as_str()), ("site", format!("127.0.0.1:{web}").as_str()));
    assert_eq!(tunnel.url, format!("tcp://127.0.0.1:{}", tunnel.port));
    let line = agent.process.line_with("tunnel site:").await?;
    assert_eq!(line, format!("tunnel site: {} -> 127.0.0.1:{web}", tunnel.url), "the file and the output agree");
    assert!(http_get(tunnel.port).await?.ends_with(PAGE));
    assert_eq!(agent.process.terminate().await?, 0);
    Ok(())
}
