//! A poor path: 50 ms round trip and 1% loss each way between the home and the internet.

use std::time::{Duration, Instant};

use burrow_faults::{
    sim::Impairment,
    traffic::{Progress, echo_transfer, timed_round_trip},
};

use crate::{SCENARIO, World};

const PARALLEL: usize = 20;
/// 1 MB each: the suite's scenarios run side by side on a small machine, and the delay on
/// this path is a user-space program that other work can starve, so the scenario asks for
/// integrity and interactivity under loss, not a throughput figure (bench/lossy.py
/// measures that).
const EACH: usize = 1 << 20;
const CANARY_EVERY: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_transfers_over_a_lossy_slow_path_arrive_intact_and_the_canary_stays_interactive() -> anyhow::Result<()>
{
    let Some(world) = World::build("lossy", &[], &[]).await? else {
        return Ok(());
    };
    world.sim.impair(&Impairment { delay_ms: 25, loss_percent: 1.0, rate: None })?;
    let mut canary = world.visit().await?;
    timed_round_trip(&mut canary, b"warm-up").await?;
    let started = Instant::now();
    let mut transfers = tokio::task::JoinSet::new();
    for _ in 0..PARALLEL {
        transfers.spawn(echo_transfer(world.visit().await?, EACH, Progress::default()));
    }
    let mut slowest = Duration::ZERO;
    let mut canary_trips = 0u32;
    let mut every = tokio::time::interval(CANARY_EVERY);
    let all_done = tokio::time::timeout(SCENARIO, async {
        while !transfers.is_empty() {
            tokio::select! {
                done = transfers.join_next() => {
                    if let Some(done) = done { done??; }
                }
                _ = every.tick() => {
                    let took = timed_round_trip(&mut canary, b"ping").await?;
                    slowest = slowest.max(took);
                    canary_trips += 1;
                }
            }
        }
        anyhow::Ok(())
    });
    all_done.await??;
    let elapsed = started.elapsed();
    let megabits = (PARALLEL * EACH * 8) as f64 / elapsed.as_secs_f64() / 1e6;
    eprintln!(
        "lossy path: {PARALLEL} x {} KiB each way intact in {elapsed:.1?} ({megabits:.1} Mbit/s each way); \
         canary: {canary_trips} round trips, slowest {slowest:?}",
        EACH >> 10
    );
    assert!(slowest < Duration::from_secs(1), "a canary round trip took {slowest:?} during the transfers");
    assert_eq!(world.metric("burrow_sessions_admitted_total").await?, 1.0, "the session was lost");
    Ok(())
}
