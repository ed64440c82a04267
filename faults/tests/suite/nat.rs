//! The home NAT misbehaves: it moves the agent to a new outside port or address mid-flow,
//! or forgets idle mappings.

use std::time::Duration;

use anyhow::Context;
use burrow_faults::{
    sim::Impairment,
    traffic::{Progress, echo_transfer, metric_until},
};

use crate::{SCENARIO, World};

const TRANSFER: usize = 50 << 20;
const REBIND_EVERY: Duration = Duration::from_secs(3);
/// Slow enough that a 50 MB transfer spans several rebindings.
const UPLINK_RATE: &str = "40mbit";
/// The agent's default keep-alive: an idle link sends, and so migrates, at least this often.
const AGENT_KEEP_ALIVE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_rebinding_mid_transfer_keeps_the_session_and_the_bytes() -> anyhow::Result<()> {
    let Some(world) = World::build("rebind", &[], &[]).await? else {
        return Ok(());
    };
    world.sim.impair(&Impairment { rate: Some(UPLINK_RATE), ..Impairment::default() })?;
    let progress = Progress::default();
    let mut transfer = tokio::spawn(echo_transfer(world.visit().await?, TRANSFER, progress));
    let mut rebind = tokio::time::interval_at(tokio::time::Instant::now() + REBIND_EVERY, REBIND_EVERY);
    let mut moves = 0u32;
    let finished = tokio::time::timeout(SCENARIO, async {
        loop {
            tokio::select! {
                done = &mut transfer => return anyhow::Ok(done?),
                _ = rebind.tick() => {
                    // Alternate: the outside port changes, then the outside address.
                    if moves.is_multiple_of(2) { world.sim.rebind_port()? } else { world.sim.rebind_address()? }
                    moves += 1;
                }
            }
        }
    });
    finished.await??.map_err(|e| e.context(format!("50 MB each way across {moves} rebindings")))?;
    assert!(moves >= 2, "the transfer ended after {moves} rebinding(s); both kinds must happen during it");
    // The public port is unchanged: a new visitor reaches the same tunnel. Its packets also
    // carry the session over a rebinding made just as the transfer ended.
    world.one_echo().await?;
    // Each link has its own socket at the agent and moves when it next sends: the transfer's
    // link crosses every rebinding, an idle one at its next keep-alive (10 s), and collapses
    // the rebindings it slept through into one move.
    let links = world.metric("burrow_links{transport=\"quic\"}").await?;
    let within = AGENT_KEEP_ALIVE + Duration::from_secs(2);
    let migrations = metric_until(&world.sim, "burrow_migrations_total", within, |m| m >= f64::from(moves)).await?;
    assert!(
        migrations <= f64::from(moves) * links,
        "{migrations} migrations counted for {moves} moves of {links} links"
    );
    assert_eq!(world.metric("burrow_sessions_admitted_total").await?, 1.0, "the agent registered again");
    eprintln!(
        "rebinding: {moves} moves during the transfer, {migrations} link migrations counted over {links} links, one session"
    );
    Ok(())
}

/// The control for the test above: with migration off at the relay, the same rebinding
/// stalls the transfer, so the test above does exercise QUIC migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_migration_a_rebinding_stalls_the_transfer() -> anyhow::Result<()> {
    let Some(world) = World::build("nomig", &[("BURROW_RELAY_MIGRATION", "false")], &[]).await? else {
        return Ok(());
    };
    world.sim.impair(&Impairment { rate: Some(UPLINK_RATE), ..Impairment::default() })?;
    let progress = Progress::default();
    let transfer = tokio::spawn(echo_transfer(world.visit().await?, TRANSFER, progress.clone()));
    progress.reached(1 << 20, Duration::from_secs(20)).await.context("the transfer never started")?;
    world.sim.rebind_port()?;
    // Let what was already in flight drain, then watch: a stalled transfer moves no byte.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = progress.bytes();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = progress.bytes();
    assert!(!transfer.is_finished(), "the transfer finished although the relay refused to migrate");
    assert_eq!(before, after, "bytes kept flowing after the rebinding with migration off");
    assert_eq!(world.metric("burrow_migrations_total").await?, 0.0);
    transfer.abort();
    Ok(())
}

/// A NAT forgets a UDP mapping idle for 20 s; the agent's keep-alives (every 10 s) keep it,
/// so after two quiet minutes the next visitor is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_outlast_a_short_nat_timeout() -> anyhow::Result<()> {
    let Some(world) = World::build("natexp", &[], &[]).await? else {
        return Ok(());
    };
    world.sim.nat_timeout(20)?;
    world.one_echo().await?;
    // The idle period itself is the fault being tested.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let took = world.one_echo().await?;
    eprintln!("after 120 s idle behind a 20 s NAT timeout, the next visitor's echo took {took:?}");
    assert!(took < Duration::from_secs(1), "the first visitor after the idle period waited {took:?}");
    assert_eq!(world.metric("burrow_sessions_admitted_total").await?, 1.0, "the session was lost meanwhile");
    Ok(())
}
