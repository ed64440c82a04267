//! Visitor caps: per tunnel and per source address. A visitor past a cap is reset at once,
//! and others are served as before. Run with `cargo test -p burrow-agent --test limits`.

mod support;

use std::net::SocketAddr;

use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// A visitor from `source` whose echo came back: it holds a place under the caps.
async fn held_visitor(source: &str, target: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse()?)?;
    let mut tcp = socket.connect(target).await?;
    tcp.write_all(b"x").await?;
    let mut byte = [0u8; 1];
    tokio::time::timeout(STEP, tcp.read_exact(&mut byte)).await??;
    Ok(tcp)
}

/// Whether a new visitor from 127.0.0.1 is turned away (closed without data).
async fn turned_away(target: SocketAddr) -> anyhow::Result<bool> {
    let mut tcp = TcpStream::connect(target).await?;
    tcp.write_all(b"x").await.ok();
    let mut byte = [0u8; 1];
    Ok(!matches!(tokio::time::timeout(STEP, tcp.read(&mut byte)).await?, Ok(1)))
}

#[tokio::test]
async fn a_tunnel_at_its_limit_turns_new_visitors_away_until_one_leaves() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = relay_config(dir.path());
    config.max_visitors_per_tunnel = 3;
    let relay = TestRelay::start_with(config).await?;
    let (agent, tunnels) = TestAgent::start(relay.plan(vec![tunnel("capped", echo_server().await?)])).await?;
    let public = public_addr(&tunnels[0]);

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(held_visitor("127.0.0.1", public).await?);
    }
    assert!(turned_away(public).await?, "a fourth visitor must be turned away");

    // One leaves; its place frees once the relay has seen it go.
    drop(held.pop());
    tokio::time::timeout(STEP, async {
        while turned_away(public).await? {
            tokio::task::yield_now().await;
        }
        anyhow::Ok(())
    })
    .await??;
    drop(held);
    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn an_address_at_its_limit_is_turned_away_on_every_tunnel_while_others_are_served() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = relay_config(dir.path());
    config.max_visitors_per_ip = 2;
    let relay = TestRelay::start_with(config).await?;
    let echo = echo_server().await?;
    let (agent, tunnels) = TestAgent::start(relay.plan(vec![tunnel("a", echo), tunnel("b", echo)])).await?;
    let (a, b) = (public_addr(&tunnels[0]), public_addr(&tunnels[1]));

    let _one = held_visitor("127.0.0.1", a).await?;
    let _two = held_visitor("127.0.0.1", b).await?;
    assert!(turned_away(a).await?, "a third visitor from the same address, tunnel a");
    assert!(turned_away(b).await?, "a third visitor from the same address, tunnel b");
    let _other = held_visitor("127.0.0.2", a).await?;

    agent.stop().await?;
    relay.stop().await
}
