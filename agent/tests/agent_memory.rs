//! The compiled agent's memory stays flat while it serves one bulk visitor after another.
//! quinn recycles a finished stream's receive state, with the buffer capacity it grew to,
//! into a slot for every stream the agent permits; the agent permits only what visitors use.
//! Run with `cargo build --workspace --bins && cargo test -p burrow-agent --test agent_memory`.

use std::time::Duration;

use testkit::{
    echo_server,
    processes::{AgentBinary, RelayBinary},
    random_bytes,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Large enough that each stream's receive state grows to its largest, so the warm-up fills
/// every recycled slot the agent permits (64 at first) to its final size.
const TRANSFER: usize = 8 << 20;
const WARM_UP: usize = 80;
const MEASURED: usize = 120;
/// With every stream permitted from the start, each transfer here kept up to about 100 KiB.
const MOST_GROWTH_KIB: u64 = 3 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn agent_memory_is_flat_across_sequential_bulk_visitors() -> anyhow::Result<()> {
    let relay = RelayBinary::start(&[]).await?;
    // One link: the slots are per QUIC connection, and with more links sequential visitors
    // take turns over them, so the warm-up would need as many times more transfers.
    let mut command = relay.agent_command(echo_server().await?)?;
    let agent = AgentBinary::launch(command.args(["--inspect", "off", "--links", "1"])).await?;
    let public = agent.public_addr()?;
    let payload = random_bytes(TRANSFER);
    let mut after_warm_up = 0;
    for i in 0..WARM_UP + MEASURED {
        if i == WARM_UP {
            after_warm_up = agent.process.vm_rss_kib()?;
        }
        let tcp = tokio::net::TcpStream::connect(public).await?;
        let (mut read, mut write) = tcp.into_split();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            write.write_all(&sent).await?;
            write.shutdown().await
        });
        let mut back = Vec::with_capacity(TRANSFER);
        tokio::time::timeout(Duration::from_secs(20), read.read_to_end(&mut back)).await??;
        writer.await??;
        assert!(back == payload, "transfer {i} came back different");
    }
    let at_end = agent.process.vm_rss_kib()?;
    eprintln!("agent RSS after {WARM_UP} transfers {after_warm_up} KiB, after {MEASURED} more {at_end} KiB");
    assert!(
        at_end <= after_warm_up + MOST_GROWTH_KIB,
        "the agent grew from {after_warm_up} to {at_end} KiB over {MEASURED} sequential transfers"
    );
    Ok(())
}
