//! The home uplink goes silent: briefly (the session rides it out), long enough for the
//! session to be lost (visitors are parked), and for a minute and a half (the agent retries
//! with backoff and comes back on the same port).

use std::time::{Duration, Instant};

use anyhow::Context;
use burrow_faults::{
    sim::Impairment,
    traffic::{Progress, echo_transfer, metric_until, timed_round_trip},
};
use tokio::io::AsyncReadExt;

use crate::{SCENARIO, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_second_outage_is_ridden_out_by_the_same_session() -> anyhow::Result<()> {
    let Some(world) = World::build("short", &[], &[]).await? else {
        return Ok(());
    };
    world.sim.impair(&Impairment { rate: Some("40mbit"), ..Impairment::default() })?;
    let progress = Progress::default();
    let transfer = tokio::spawn(echo_transfer(world.visit().await?, 30 << 20, progress.clone()));
    progress.reached(2 << 20, Duration::from_secs(20)).await.context("the transfer never started")?;
    world.sim.cut()?;
    let cut_at = Instant::now();
    // A visitor who arrives during the outage: the relay accepts it and its bytes wait in
    // the session until the path is back, instead of hanging or being refused.
    let mut during = world.visit().await?;
    let waiting = tokio::spawn(async move { timed_round_trip(&mut during, b"sent during the outage").await });
    tokio::time::sleep(Duration::from_secs(10)).await;
    world.sim.heal()?;
    let healed = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), waiting).await???;
    let answered = healed.elapsed();
    tokio::time::timeout(SCENARIO, transfer).await???;
    eprintln!(
        "{:?} outage: the visitor who came during it was answered {answered:?} after the heal; \
         30 MB each way intact, done {:?} after the heal",
        healed.duration_since(cut_at),
        healed.elapsed()
    );
    assert_eq!(world.metric("burrow_sessions_admitted_total").await?, 1.0, "the session did not survive");
    Ok(())
}

/// Shorter timeouts than the defaults so the session is lost within seconds of the cut.
const QUICK_LOSS_RELAY: &[(&str, &str)] = &[("BURROW_RELAY_IDLE_TIMEOUT", "6s")];
const QUICK_LOSS_AGENT: &[(&str, &str)] =
    &[("BURROW_IDLE_TIMEOUT", "6s"), ("BURROW_KEEP_ALIVE", "2s"), ("BURROW_RECONNECT_MAX_DELAY", "4s")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_who_arrive_while_the_session_is_lost_are_parked_and_served_after() -> anyhow::Result<()> {
    let Some(world) = World::build("park", QUICK_LOSS_RELAY, QUICK_LOSS_AGENT).await? else {
        return Ok(());
    };
    world.one_echo().await?;
    world.sim.cut()?;
    metric_until(&world.sim, "burrow_sessions", Duration::from_secs(15), |open| open == 0.0).await?;
    let mut parked = world.visit().await?;
    metric_until(&world.sim, "burrow_parked_visitors", Duration::from_secs(5), |n| n == 1.0).await?;
    let answer = tokio::spawn(async move { timed_round_trip(&mut parked, b"parked until the agent is back").await });
    world.sim.heal()?;
    let healed = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), answer).await???;
    eprintln!("parked visitor answered {:?} after the heal", healed.elapsed());
    assert_eq!(world.metric("burrow_visitors_unparked_total").await?, 1.0);
    assert_eq!(world.metric("burrow_sessions_admitted_total").await?, 2.0, "the agent came back once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_ninety_second_outage_the_agent_is_back_on_the_same_port_within_the_backoff_cap() -> anyhow::Result<()>
{
    // Default timeouts: 10 s keep-alive, 30 s idle timeout, backoff capped at 30 s.
    let Some(world) = World::build("long", &[], &[]).await? else {
        return Ok(());
    };
    world.one_echo().await?;
    let cpu_before = world.agent.daemon.cpu_time()?;
    world.sim.cut()?;
    let cut_at = Instant::now();
    // A visitor parked while the agent is away is closed cleanly at the parking deadline.
    metric_until(&world.sim, "burrow_sessions", Duration::from_secs(40), |open| open == 0.0).await?;
    let relay_noticed = cut_at.elapsed();
    let mut parked = world.visit().await?;
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(40), parked.read_to_end(&mut rest)).await?;
    assert!(matches!(ended, Ok(0)), "a parked visitor past the deadline must get a clean end, got {ended:?}");
    let outage = Duration::from_secs(90);
    tokio::time::sleep(outage.saturating_sub(cut_at.elapsed())).await;
    let agent_cpu = world.agent.daemon.cpu_time()? - cpu_before;
    let retries = world.agent.daemon.stderr_lines_with("attempt=");
    world.sim.heal()?;
    let healed = Instant::now();
    metric_until(&world.sim, "burrow_sessions_admitted_total", Duration::from_secs(40), |n| n >= 2.0).await?;
    let back = healed.elapsed();
    world.one_echo().await?;
    let noticed = retries.first().map(|(at, _)| at.duration_since(cut_at));
    eprintln!(
        "90 s outage: relay noticed after {relay_noticed:?}, agent after {noticed:?}; {} attempts during the \
         outage, agent CPU {agent_cpu:?}; serving on the same port {back:?} after the heal",
        retries.len()
    );
    let noticed = noticed.ok_or_else(|| anyhow::anyhow!("the agent never noticed the outage"))?;
    // QUIC restarts the idle timer at the first packet sent after one is received, here the
    // next keep-alive: a silent path is noticed within idle timeout + keep-alive interval.
    assert!(
        noticed <= Duration::from_secs(42),
        "the agent noticed only after {noticed:?} (30 s idle + 10 s keep-alive)"
    );
    assert!(retries.len() <= 12, "{} reconnect attempts in one outage: backoff is not capping them", retries.len());
    assert!(agent_cpu < Duration::from_secs(2), "the agent used {agent_cpu:?} of CPU while waiting");
    assert!(back <= Duration::from_secs(35), "back {back:?} after the heal; the backoff cap is 30 s");
    Ok(())
}
