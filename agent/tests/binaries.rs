//! The compiled `relay` and `agent` binaries, run as a user runs them.
//! Run with `cargo test --workspace --test binaries` (the relay binary is built alongside).

mod support;

use std::{process::Stdio, time::Duration};

use anyhow::Context;
use support::processes::{agent_bin, relay_bin};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines},
    net::{TcpListener, TcpStream},
    process::{Child, ChildStdout, Command},
};

const STEP: Duration = Duration::from_secs(30);
const PAGE: &str = "<h1>served from the laptop</h1>";

struct Process {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Process {
    fn start(mut command: Command) -> anyhow::Result<Self> {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).spawn()?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        Ok(Self { child, lines: BufReader::new(stdout).lines() })
    }

    /// Reads stdout until a line contains `marker`; returns that line.
    async fn line_with(&mut self, marker: &str) -> anyhow::Result<String> {
        let wait = async {
            while let Some(line) = self.lines.next_line().await? {
                if line.contains(marker) {
                    return Ok(line);
                }
            }
            anyhow::bail!("stdout ended before a line with {marker:?}")
        };
        match tokio::time::timeout(STEP, wait).await {
            Ok(Ok(line)) => Ok(line),
            Ok(Err(e)) => Err(e.context(self.stderr().await)),
            Err(_) => anyhow::bail!("no line with {marker:?} in time"),
        }
    }

    async fn stderr(&mut self) -> String {
        self.child.start_kill().ok();
        let mut text = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            err.read_to_string(&mut text).await.ok();
        }
        text
    }

    /// Sends SIGTERM and returns the exit code.
    async fn terminate(mut self) -> anyhow::Result<i32> {
        let pid = self.child.id().context("process still running")?;
        Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
        let status = tokio::time::timeout(STEP, self.child.wait()).await??;
        status.code().context("exited by signal")
    }

    /// Waits for the process to exit by itself; returns its code and stderr.
    async fn exit(mut self) -> anyhow::Result<(i32, String)> {
        let status = tokio::time::timeout(STEP, self.child.wait()).await??;
        let mut text = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            err.read_to_string(&mut text).await?;
        }
        Ok((status.code().context("exited by signal")?, text))
    }
}

/// Serves one small page to every request.
async fn web_server() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The page is the same whatever the request asks for.
                support::read_head(&mut tcp).await?;
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

/// The value after `label` on a banner line.
fn field(line: &str, label: &str) -> anyhow::Result<String> {
    let rest = line.split_once(label).with_context(|| format!("{label:?} in {line:?}"))?.1;
    Ok(rest.split_whitespace().next().context("value after label")?.to_string())
}

/// The public port in an agent line such as `tunnel web: tcp://127.0.0.1:20001 -> ...`.
fn public_port(line: &str) -> anyhow::Result<u16> {
    let url = field(line, "tcp://")?;
    Ok(url.rsplit(':').next().context("port")?.parse()?)
}

struct RunningRelay {
    process: Process,
    udp_port: u16,
    fingerprint: String,
    token: String,
    _dir: tempfile::TempDir,
}

async fn start_relay() -> anyhow::Result<RunningRelay> {
    let dir = tempfile::tempdir()?;
    let mut command = Command::new(relay_bin()?);
    command
        .args(["--listen", "127.0.0.1:0", "--public-bind", "127.0.0.1", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path());
    let mut process = Process::start(command)?;
    let udp = process.line_with("agents connect to").await?;
    let udp_port = field(&udp, "udp")?.rsplit(':').next().context("port")?.parse()?;
    let fingerprint = field(&process.line_with("fingerprint").await?, "fingerprint")?;
    let token = field(&process.line_with("new token").await?, "\"default\"")?;
    Ok(RunningRelay { process, udp_port, fingerprint, token, _dir: dir })
}

fn agent_command(relay: &RunningRelay, token: &str, local: u16) -> Command {
    let mut command = Command::new(agent_bin());
    command.env("BURROW_TOKEN", token).args(["--relay", &format!("127.0.0.1:{}", relay.udp_port)]).args([
        "--fingerprint",
        &relay.fingerprint,
        "--local",
        &local.to_string(),
    ]);
    command
}

#[tokio::test]
async fn relay_and_agent_binaries_serve_a_web_page() -> anyhow::Result<()> {
    let web = web_server().await?;
    let relay = start_relay().await?;
    let mut agent = Process::start(agent_command(&relay, &relay.token, web))?;
    let line = agent.line_with("tunnel tcp-").await?;
    assert!(line.ends_with(&format!("-> 127.0.0.1:{web}")), "{line}");

    let response = http_get(public_port(&line)?).await?;
    assert!(response.starts_with("HTTP/1.1 200 OK") && response.ends_with(PAGE), "{response}");

    assert_eq!(agent.terminate().await?, 0, "agent exits 0 on SIGTERM");
    assert_eq!(relay.process.terminate().await?, 0, "relay exits 0 on SIGTERM");
    Ok(())
}

#[tokio::test]
async fn agent_binary_with_a_wrong_token_exits_non_zero_naming_the_problem() -> anyhow::Result<()> {
    let relay = start_relay().await?;
    let agent = Process::start(agent_command(&relay, "brw_wrong_but_long_enough_0123456789", 8080))?;
    let (code, stderr) = agent.exit().await?;
    assert_eq!(code, 1);
    assert!(stderr.contains("error: the relay refused: the relay rejected the token"), "{stderr}");
    assert!(!stderr.contains("brw_wrong_but_long_enough_0123456789"), "the token must not be printed");
    relay.process.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn agent_binary_refuses_a_guessable_token_before_connecting() -> anyhow::Result<()> {
    let mut agent = Command::new(agent_bin());
    agent.env("BURROW_TOKEN", "").args(["--local", "8080", "--relay", "127.0.0.1:9"]);
    let (code, stderr) = Process::start(agent)?.exit().await?;
    assert_eq!(code, 1);
    assert!(stderr.contains("token is 0 characters long: expected at least 16"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn agent_binary_without_relay_serves_through_an_embedded_one() -> anyhow::Result<()> {
    let web = web_server().await?;
    let home = tempfile::tempdir()?;
    let mut command = Command::new(agent_bin());
    command.env("XDG_DATA_HOME", home.path()).args(["--local", &web.to_string()]);
    let mut agent = Process::start(command)?;
    let line = agent.line_with("tunnel tcp-").await?;
    assert!(line.contains("tcp://127.0.0.1:"), "{line}");

    let response = http_get(public_port(&line)?).await?;
    assert!(response.ends_with(PAGE), "{response}");
    assert!(home.path().join("burrow/embedded/cert.pem").exists(), "certificate generated and kept");
    assert_eq!(agent.terminate().await?, 0);
    Ok(())
}

#[tokio::test]
async fn bad_config_values_stop_startup_naming_key_value_and_form() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut relay = Command::new(relay_bin()?);
    relay.args(["--ports", "9-1", "--data-dir"]).arg(dir.path());
    let (code, stderr) = Process::start(relay)?.exit().await?;
    assert_eq!(code, 1);
    assert!(stderr.contains("invalid port range \"9-1\"") && stderr.contains("key `ports`"), "{stderr}");

    let mut agent = Command::new(agent_bin());
    agent.env("BURROW_KEEP_ALIVE", "often").args(["--local", "8080", "--relay", "127.0.0.1"]);
    let (code, stderr) = Process::start(agent)?.exit().await?;
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
    let mut relay = Process::start(relay)?;
    let fingerprint = field(&relay.line_with("fingerprint").await?, "fingerprint")?;
    assert_eq!(after("--fingerprint"), Some(fingerprint.as_str()), "the invitation names the relay's certificate");

    // Pasted as printed, but exposing this test's web server instead of port 8080.
    let local_flag = words.iter().position(|w| *w == "--local").context("--local")?;
    let mut agent = Command::new(agent_bin());
    agent.env("BURROW_TOKEN", token).args(&words[2..local_flag]).args(["--local", &web.to_string()]);
    let mut agent = Process::start(agent)?;
    let line = agent.line_with("tunnel tcp-").await?;
    assert!(http_get(public_port(&line)?).await?.ends_with(PAGE));
    assert_eq!(agent.terminate().await?, 0);

    let toml: String = printed
        .lines()
        .skip_while(|l| !l.contains("relay = "))
        .map(|l| l.trim().replace("local = 8080", &format!("local = {web}")) + "\n")
        .collect();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, toml)?;
    let mut from_file = Command::new(agent_bin());
    from_file.env_remove("BURROW_TOKEN").arg("--config").arg(&config);
    let mut from_file = Process::start(from_file)?;
    let line = from_file.line_with("tunnel tcp-").await?;
    assert!(http_get(public_port(&line)?).await?.ends_with(PAGE));
    assert_eq!(from_file.terminate().await?, 0);
    assert_eq!(relay.terminate().await?, 0);
    Ok(())
}
