//! The compiled relay under a low open files limit (`prlimit --nofile=512:512`): a flood of
//! visitors meets the relay's own visitor cap, derived from that limit, before the limit
//! itself, so the relay can still read its token store and a new agent still gets in.
//! Run with `cargo build --workspace --bins && cargo test -p burrow-relay --test descriptor_budget -- --nocapture`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
};

use anyhow::Context;
use testkit::{
    STEP, echo_server,
    processes::{AgentBinary, RelayBinary, agent_bin, relay_bin},
    sample,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    process::Command,
    task::JoinSet,
};

const OPEN_FILES: u64 = 512;
const VISITORS: usize = 600;
/// Visitors come from 127.0.0.2 up to 127.0.0.9.
const SOURCES: usize = 8;
/// This process holds each served visitor twice (its socket and the echo server's).
const OWN_FILES_NEEDED: u64 = 2 * VISITORS as u64 + 200;

#[tokio::test(flavor = "multi_thread")]
async fn a_visitor_flood_meets_the_relay_cap_and_agents_still_authenticate() -> anyhow::Result<()> {
    raise_own_open_files_limit()?;
    let dir = tempfile::tempdir()?;
    let token = add_token(dir.path(), "team").await?;
    let relay = start_relay(dir.path()).await?;
    let echo = echo_server().await?;
    let target = AgentBinary::launch(&mut agent_command(&relay, &token, echo)?).await?;
    let public = target.public_addr()?;

    let (held, unanswered) = flood(public).await?;
    let served = held.len();
    // Another agent authenticates (the relay reads its token file) while the flood is held.
    let mut late = agent_command(&relay, &token, echo)?;
    let late = AgentBinary::launch(late.args(["--name", "late"])).await.context("the late agent")?;
    let page = relay.metrics().await?;
    let refused = sample(&page, "burrow_visitors_refused_total{reason=\"relay_limit\"}").unwrap_or(0.0);
    let (status, body) = testkit::get(relay.admin()?, "/api/limits", None).await?;
    let stderr = relay.process.stderr_text();
    eprintln!(
        "descriptor budget: {served} of {VISITORS} visitors served, {refused} refused at the relay's cap, {unanswered} unanswered"
    );
    assert_eq!(status, 200, "{body}");
    let limits: serde_json::Value = serde_json::from_str(&body)?;
    let max_visitors = limits["max_visitors"].as_u64().context("max_visitors in /api/limits")?;
    assert!(max_visitors < OPEN_FILES, "max_visitors {max_visitors}");
    assert_eq!(limits["open_files"].as_u64(), Some(OPEN_FILES));
    assert!(refused > 0.0, "no visitor was refused at the relay's cap");
    assert!(!stderr.contains("Too many open files"), "the relay ran out of descriptors:\n{stderr}");
    assert!(!late.ready.tunnels.is_empty());
    assert_eq!(unanswered, 0, "visitors left unanswered");
    drop(held);
    Ok(())
}

/// The test holds a socket and an echo connection per visitor.
fn raise_own_open_files_limit() -> anyhow::Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum })?;
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    anyhow::ensure!(
        now >= OWN_FILES_NEEDED,
        "the open files limit ({now}) is too low for this test: raise `ulimit -Hn`"
    );
    Ok(())
}

/// `relay token add NAME` on the data directory; returns the token.
async fn add_token(data_dir: &Path, name: &str) -> anyhow::Result<String> {
    let output = Command::new(relay_bin()?).arg("--data-dir").arg(data_dir).args(["token", "add", name]).output();
    let output = tokio::time::timeout(STEP, output).await??;
    anyhow::ensure!(output.status.success(), "token add: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}

async fn start_relay(data_dir: &Path) -> anyhow::Result<RelayBinary> {
    let mut command = Command::new("prlimit");
    command.arg(format!("--nofile={OPEN_FILES}:{OPEN_FILES}")).arg(relay_bin()?);
    command.env("RUST_LOG", "warn").args(["--listen", "127.0.0.1:0", "--public-bind", "127.0.0.1"]);
    command.arg("--data-dir").arg(data_dir).args(["--admin-listen", "127.0.0.1:0"]);
    // Only the relay-wide cap is under test.
    command.env("BURROW_RELAY_MAX_VISITORS_PER_IP", "4096").env("BURROW_RELAY_MAX_VISITORS_PER_TUNNEL", "4096");
    RelayBinary::launch(&mut command).await
}

fn agent_command(relay: &RelayBinary, token: &str, local: SocketAddr) -> anyhow::Result<Command> {
    let mut command = Command::new(agent_bin()?);
    command.env("BURROW_TOKEN", token).env("RUST_LOG", "warn");
    command.args(["--relay", &relay.addr.to_string(), "--fingerprint", &relay.fingerprint.to_string()]);
    command.args(["--local", &local.to_string(), "--inspect", "off"]);
    Ok(command)
}

/// A visitor the relay neither serves nor refuses within this has been left in the
/// listen backlog: the relay cannot accept it.
const VISITOR_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends the visitors at `public`; returns those served, held open, and how many got no
/// answer at all.
async fn flood(public: SocketAddr) -> anyhow::Result<(Vec<TcpStream>, usize)> {
    let mut visitors = JoinSet::new();
    for i in 0..VISITORS {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % SOURCES) as u8);
        visitors.spawn(async move { tokio::time::timeout(VISITOR_LIMIT, visit(source, public)).await });
    }
    let (mut held, mut unanswered) = (Vec::new(), 0);
    while let Some(done) = visitors.join_next().await {
        match done? {
            Ok(served) => held.extend(served?),
            Err(_) => unanswered += 1,
        }
    }
    Ok((held, unanswered))
}

/// One echoed byte, or None when the relay turned the visitor away.
async fn visit(source: Ipv4Addr, public: SocketAddr) -> anyhow::Result<Option<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let Ok(mut tcp) = socket.connect(public).await else { return Ok(None) };
    tcp.write_all(b"x").await.ok();
    let mut byte = [0u8; 1];
    match tcp.read(&mut byte).await {
        Ok(1) => Ok(Some(tcp)),
        _ => Ok(None),
    }
}
