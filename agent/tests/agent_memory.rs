//! The compiled agent's memory stays flat while it serves one bulk visitor after another.
//! quinn recycles a finished stream's receive state, with the buffer capacity it grew to,
//! into a slot for every stream the agent permits; the agent permits only what visitors use.
//! Run with `cargo build --workspace --bins && cargo test -p burrow-agent --test agent_memory`.

mod support;

use std::time::Duration;

use support::{echo_server, processes::RelayBinary, random_bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRANSFER: usize = 2 << 20;
const WARM_UP: usize = 100;
const MEASURED: usize = 300;
/// With every stream permitted from the start, the debug agent grew by about 1.3 MiB per 100.
const MOST_GROWTH_KIB: u64 = 2048;

#[tokio::test(flavor = "multi_thread")]
async fn agent_memory_is_flat_across_sequential_bulk_visitors() -> anyhow::Result<()> {
    let relay = RelayBinary::start(&[]).await?;
    let (agent, public) = relay.agent(echo_server().await?).await?;
    let payload = random_bytes(TRANSFER);
    let mut after_warm_up = 0;
    for i in 0..WARM_UP + MEASURED {
        if i == WARM_UP {
            after_warm_up = agent.vm_rss_kib()?;
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
    let at_end = agent.vm_rss_kib()?;
    eprintln!("agent RSS after {WARM_UP} transfers {after_warm_up} KiB, after {MEASURED} more {at_end} KiB");
    assert!(
        at_end <= after_warm_up + MOST_GROWTH_KIB,
        "the agent grew from {after_warm_up} to {at_end} KiB over {MEASURED} sequential transfers"
    );
    Ok(())
}
