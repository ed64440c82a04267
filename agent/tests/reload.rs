//! Tunnels added and removed while the agent runs (its config file edited): the new tunnel
//! appears, the removed one's visitors are closed, and the others' connections carry on.

use std::time::Duration;

use agent::{Status, TunnelPlan};
use anyhow::Context;
use testkit::{
    STEP, TestAgent, TestRelay, echo_server,
    processes::{AgentBinary, agent_bin, tcp_addr},
    public_addr, round_trip, tunnel,
};
use tokio::{io::AsyncReadExt, net::TcpStream, process::Command, sync::watch};

/// Reads until the connection ends; says whether it ended (EOF or reset) within `limit`.
async fn closes_within(tcp: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0; 64];
    let ended = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, ended).await.is_ok()
}

async fn online_with(agent: &mut TestAgent, names: &[&str]) -> anyhow::Result<Vec<agent::PublicTunnel>> {
    let wanted = |s: &Status| match s {
        Status::Online(tunnels) => {
            let mut listed: Vec<&str> = tunnels.iter().map(|t| t.name.as_str()).collect();
            listed.sort_unstable();
            let mut expected = names.to_vec();
            expected.sort_unstable();
            listed == expected
        }
        _ => false,
    };
    let status = tokio::time::timeout(STEP, agent.status.wait_for(wanted)).await.context("no such Online")??;
    match &*status {
        Status::Online(tunnels) => Ok(tunnels.clone()),
        _ => unreachable!("waited for Online"),
    }
}

#[tokio::test]
async fn a_reload_opens_added_tunnels_and_closes_only_the_removed_ones() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let (web_local, ssh_local, db_local) = (echo_server().await?, echo_server().await?, echo_server().await?);
    let first = vec![tunnel("web", web_local), tunnel("ssh", ssh_local)];
    let mut plan = relay.plan(first.clone());
    let (lists, reloads) = watch::channel(first);
    plan.reloads = Some(reloads);
    let (mut agent, tunnels) = TestAgent::start(plan).await?;
    let address = |tunnels: &[agent::PublicTunnel], name: &str| {
        tunnels.iter().find(|t| t.name == name).map(public_addr).context("tunnel listed")
    };
    let mut web = TcpStream::connect(address(&tunnels, "web")?).await?;
    let mut ssh = TcpStream::connect(address(&tunnels, "ssh")?).await?;
    assert_eq!(round_trip(&mut web, b"web before").await?, b"web before");
    assert_eq!(round_trip(&mut ssh, b"ssh before").await?, b"ssh before");

    lists.send_replace(vec![tunnel("web", web_local), tunnel("db", db_local)]);
    let tunnels = online_with(&mut agent, &["web", "db"]).await?;
    let mut db = TcpStream::connect(address(&tunnels, "db")?).await?;
    assert_eq!(round_trip(&mut db, b"db is new").await?, b"db is new");
    assert!(closes_within(&mut ssh, STEP).await, "the removed tunnel's visitor is closed");
    assert_eq!(round_trip(&mut web, b"web after").await?, b"web after", "the kept tunnel's connection lives on");
    let web_port = address(&tunnels, "web")?;

    // A changed tunnel (another local port) is replaced; the same name keeps its port.
    lists.send_replace(vec![tunnel("web", db_local), tunnel("db", db_local)]);
    let changed = tokio::time::timeout(STEP, async {
        loop {
            let tunnels = online_with(&mut agent, &["web", "db"]).await?;
            if tunnels.iter().any(|t| t.name == "web" && t.local.port == db_local.port()) {
                return anyhow::Ok(tunnels);
            }
            agent.status.changed().await?;
        }
    })
    .await??;
    assert_eq!(address(&changed, "web")?, web_port, "the reservation keeps the port");
    assert!(closes_within(&mut web, STEP).await, "a replaced tunnel's visitors are closed");
    assert_eq!(round_trip(&mut db, b"db untouched").await?, b"db untouched");

    let api = testkit::api(&relay, "agents").await?;
    let listed: Vec<&str> =
        api[0]["tunnels"].as_array().context("tunnels")?.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(listed.len(), 2, "the relay's API follows the update: {listed:?}");
    assert!(listed.contains(&"web") && listed.contains(&"db"), "{listed:?}");
    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn a_refused_addition_leaves_the_other_tunnels_serving() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let local = echo_server().await?;
    let mut plan = relay.plan(vec![tunnel("web", local)]);
    let (lists, reloads) = watch::channel(plan.tunnels.clone());
    plan.reloads = Some(reloads);
    let (mut agent, tunnels) = TestAgent::start(plan).await?;
    let mut web = TcpStream::connect(public_addr(&tunnels[0])).await?;
    let mut outside = TunnelPlan::tcp("outside", tunnel("x", local).local);
    outside.remote_port = Some(80);
    lists.send_replace(vec![tunnel("web", local), outside]);
    // The refusal is logged; the status stays Online with the one tunnel, republished.
    agent.status.changed().await?;
    let tunnels = online_with(&mut agent, &["web"]).await?;
    assert_eq!(tunnels.len(), 1);
    assert_eq!(round_trip(&mut web, b"still here").await?, b"still here");
    agent.stop().await?;
    relay.stop().await
}

/// The compiled agent follows its config file: an edit adds a tunnel, SIGHUP re-reads it.
#[tokio::test]
async fn the_agent_binary_follows_edits_of_its_config_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let (one, two) = (echo_server().await?, echo_server().await?);
    let config = dir.path().join("agent.toml");
    let write = |tunnels: &[(&str, u16)], length: Option<u64>| {
        let mut text =
            format!("relay = \"{}\"\nfingerprint = \"{}\"\ninspect = \"off\"\n", relay.relay_addr(), relay.fingerprint);
        for (name, port) in tunnels {
            text.push_str(&format!("[[tunnels]]\nname = \"{name}\"\nlocal = {port}\n"));
        }
        // Padded to a given length, so only a signal can tell the file changed.
        if let Some(length) = length {
            text.push('#');
            while (text.len() as u64) < length - 1 {
                text.push(' ');
            }
            text.push('\n');
        }
        std::fs::write(&config, text)
    };
    write(&[("one", one.port())], None)?;
    let mut agent = AgentBinary::launch(
        Command::new(agent_bin()?).env("BURROW_TOKEN", relay.token.expose()).arg("--config").arg(&config),
    )
    .await?;
    let mut first = TcpStream::connect(tcp_addr(&agent.tunnel("one").await?)?).await?;
    assert_eq!(round_trip(&mut first, b"one").await?, b"one");

    write(&[("one", one.port()), ("two", two.port())], None)?;
    let mut second = TcpStream::connect(tcp_addr(&agent.tunnel("two").await?)?).await?;
    assert_eq!(round_trip(&mut second, b"two").await?, b"two");
    assert_eq!(round_trip(&mut first, b"one again").await?, b"one again", "tunnel one was not touched");

    // SIGHUP re-reads the file even when its time stamp did not move.
    let before = std::fs::metadata(&config)?;
    write(&[("two", two.port())], Some(before.len()))?;
    let modified = before.modified()?;
    assert_eq!(std::fs::metadata(&config)?.len(), before.len());
    std::fs::File::options().write(true).open(&config)?.set_modified(modified)?;
    Command::new("kill").args(["-HUP", &agent.process.pid()?.to_string()]).status().await?;
    assert!(closes_within(&mut first, STEP).await, "tunnel one was removed");
    assert_eq!(round_trip(&mut second, b"two again").await?, b"two again");
    drop(agent);
    relay.stop().await
}
