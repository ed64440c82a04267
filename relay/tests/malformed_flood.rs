//! A thousand authenticated-looking sessions that send malformed control frames at the
//! compiled relay: each is closed with `protocol violation` within a second, the relay's
//! memory comes back, and another agent's tunnel keeps answering throughout.
//! Run with `cargo build --workspace --bins && cargo test -p burrow-relay --test malformed_flood`.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use burrow_common::{
    CloseCode,
    tls::{self, Trust},
    transport,
};
use testkit::{
    echo_server, exchange,
    processes::{Canary, RelayBinary},
};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

const SESSIONS: usize = 1_000;
const AT_ONCE: usize = 32;
const CLOSE_LIMIT: Duration = Duration::from_secs(1);
const LASTING_GROWTH_KIB: u64 = 8 * 1024;

/// What each hostile session sends as its first control frame.
fn malformed(i: usize) -> Vec<u8> {
    match i % 4 {
        // A length prefix far past the cap.
        0 => u32::MAX.to_be_bytes().to_vec(),
        // A frame within the cap whose body is not a Hello.
        1 => [&8u32.to_be_bytes()[..], &[0xff; 8]].concat(),
        // A truncated frame, then the end of the stream.
        2 => [&100u32.to_be_bytes()[..], b"short"].concat(),
        // One byte past the control frame cap.
        _ => (64 * 1024 + 1u32).to_be_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_sessions_are_closed_fast_and_leave_no_memory_behind() -> anyhow::Result<()> {
    // The hostile sessions all come from one address, more at once than the relay lets wait
    // for their Hello by default; this test is about what they send.
    let relay =
        RelayBinary::start(&[("BURROW_RELAY_MAX_UNAUTHENTICATED_PER_ADDRESS", (2 * AT_ONCE).to_string())]).await?;
    let (_agent, target) = relay.agent(echo_server().await?).await?;
    let canary = Canary::start(&relay).await?;
    for i in 0..20 {
        let message = format!("warm-up {i}");
        assert_eq!(exchange(target, message.as_bytes()).await?, message.as_bytes());
    }
    let baseline = relay.process.vm_rss_kib()?;
    let stop = CancellationToken::new();
    let rounds = canary.run(Duration::from_millis(20), 2_000, stop.clone())?;

    let at_once = Arc::new(Semaphore::new(AT_ONCE));
    let mut sessions = JoinSet::new();
    for i in 0..SESSIONS {
        let permit = at_once.clone().acquire_owned().await?;
        let (addr, fingerprint) = (relay.addr, relay.fingerprint);
        sessions.spawn(async move {
            let _permit = permit;
            let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
            let transport = transport::agent(Duration::from_secs(10), Duration::from_secs(30));
            endpoint.set_default_client_config(tls::client_config(&Trust::Pinned(fingerprint), transport)?);
            let conn = endpoint.connect(addr, "localhost")?.await?;
            let (mut send, _recv) = conn.open_bi().await?;
            send.write_all(&malformed(i)).await?;
            if i % 4 == 2 {
                send.finish()?;
            }
            let closed = tokio::time::timeout(CLOSE_LIMIT, conn.closed()).await.context("not closed within 1 s")?;
            let code = match &closed {
                quinn::ConnectionError::ApplicationClosed(close) => CloseCode::from_code(close.error_code),
                _ => None,
            };
            anyhow::ensure!(code == Some(CloseCode::ProtocolViolation), "session {i} closed with {closed:?}");
            anyhow::Ok(())
        });
    }
    let mut closed = 0;
    while let Some(done) = sessions.join_next().await {
        done??;
        closed += 1;
    }
    stop.cancel();
    let rounds = rounds.await??;
    relay.settled("burrow_sessions", 2.0).await?;
    let after = relay.memory_back_under(baseline + LASTING_GROWTH_KIB, Duration::from_secs(15)).await?;
    eprintln!(
        "malformed flood: {closed} sessions closed with `protocol violation`; relay RSS {} -> {} KiB; \
         canary {} round trips, slowest {:?}",
        baseline, after, rounds.count, rounds.slowest
    );
    assert!(after <= baseline + LASTING_GROWTH_KIB, "relay memory grew from {baseline} to {after} KiB");
    assert!(rounds.slowest < Duration::from_secs(1), "a canary round trip took {:?}", rounds.slowest);
    assert_eq!(exchange(target, b"still serving").await?, b"still serving");
    Ok(())
}
