//! Scenario 1: one relay of the fleet killed (`kill -9`) under steady load through all three.
//! Visitors of the other two see nothing; the agent, which dialed one relay and linked to the
//! others its Welcome listed, keeps serving and links again to the relay once it is back.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context;
use burrow_faults::{
    fleet::{Fleet, place},
    sim::{Host, Sim},
    traffic,
};
use testkit::processes::AgentBinary;
use tokio::{net::TcpStream, sync::watch};

use super::{echo_through, visit_until};

/// How long the load runs before the kill, and on after the relay is back.
const STEADY: Duration = Duration::from_secs(3);

/// How long the agent may take to serve through every relay, at its start and once the killed
/// relay is back (a few reconnect delays of 2 s).
const LINKED_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_the_agent_linked_to_killed_under_load_costs_the_others_nothing_and_comes_back() -> anyhow::Result<()> {
    kill_under_load("fkill", 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_the_agent_dialed_killed_under_load_costs_the_others_nothing_and_comes_back() -> anyhow::Result<()> {
    kill_under_load("fkilld", 0).await
}

/// Relay `killed` of three (0 is the one the agent dialed) killed and restarted under load.
async fn kill_under_load(name: &str, killed: usize) -> anyhow::Result<()> {
    let Some(mut fleet) = Fleet::up(name, &[]).await? else {
        return Ok(());
    };
    let token = fleet.add_token(0, "alice").await?;
    let echo = burrow_faults::traffic::echo_server(&fleet.sim)?;
    let mut command = fleet.fleet_agent_command(0, &token, &[("BURROW_RECONNECT_MAX_DELAY", "2s")])?;
    let mut agent = AgentBinary::launch(command.args(["--local", &echo.to_string(), "--name", "app"])).await?;
    let port = agent.tunnel("app").await?.port;
    // The same public port on each relay's address.
    let publics: Vec<SocketAddr> = (0..3).map(|n| SocketAddr::from((place(n).ip, port))).collect();
    for public in &publics {
        serving(&fleet.sim, *public, LINKED_WITHIN).await?;
    }

    let others: Vec<SocketAddr> = publics.iter().enumerate().filter(|(n, _)| *n != killed).map(|(_, p)| *p).collect();
    let (stop, stopped) = watch::channel(false);
    let sim = fleet.sim.clone();
    // Visitors already connected through the others before the crash, talking throughout.
    let mut long = Vec::new();
    for public in &others {
        long.push(sim.connect(Host::Client, *public).await?);
    }
    let fault = async {
        tokio::time::sleep(STEADY).await;
        fleet.kill(killed).await?;
        let killed_at = Instant::now();
        fleet.restart(killed).await?;
        let back = serving(&sim, publics[killed], LINKED_WITHIN).await;
        tokio::time::sleep(STEADY).await;
        stop.send(true).ok();
        anyhow::Ok((killed_at, back?))
    };
    let [first, second] = &mut long[..] else { unreachable!("two relays are not killed") };
    let (first, second) = (talk_until(first, stopped.clone()), talk_until(second, stopped.clone()));
    let talking = async {
        let (first, second) = tokio::join!(first, second);
        [first, second]
    };
    let (visits, fault, talked) = tokio::join!(visit_until(&sim, &publics, stopped), fault, talking);
    let (killed_at, back) = fault?;

    for (n, (public, visits)) in publics.iter().zip(&visits).enumerate() {
        eprintln!("fleet kill -9: {public} echoed {} times, {} failures", visits.echoes, visits.failures.len());
        if n != killed {
            assert!(visits.failures.is_empty(), "new visitors of {public} failed: {:?}", visits.failures);
            assert!(visits.echoes > 0, "{public} was never visited");
        }
    }
    for (public, talked) in others.iter().zip(talked) {
        let round_trips = talked.with_context(|| format!("the visitor connected to {public} before the kill"))?;
        eprintln!("fleet kill -9: a visitor of {public} connected before the kill made {round_trips} round trips");
    }
    assert!(agent.process.running(), "the agent stopped: {}", agent.process.stderr_text());
    eprintln!("fleet kill -9: the restarted relay served the agent's port again {:?} after the kill", back - killed_at);
    Ok(())
}

/// Round trips on `tcp` every 100 ms until `stop`; how many.
async fn talk_until(tcp: &mut TcpStream, mut stop: watch::Receiver<bool>) -> anyhow::Result<u32> {
    let mut round_trips = 0;
    while !*stop.borrow() {
        let trip = traffic::timed_round_trip(tcp, b"still there?");
        tokio::time::timeout(Duration::from_secs(5), trip).await.context("no echo in 5 s")??;
        round_trips += 1;
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    Ok(round_trips)
}

/// Waits until a visitor to `public` gets its echo back, up to `within`; returns when.
async fn serving(sim: &Sim, public: SocketAddr, within: Duration) -> anyhow::Result<Instant> {
    let started = Instant::now();
    loop {
        let tried = Instant::now();
        match echo_through(sim, public).await {
            Ok(_) => return Ok(Instant::now()),
            Err(e) => anyhow::ensure!(started.elapsed() < within, "{public} not serving after {within:?}: {e:#}"),
        }
        // Not faster than every 100 ms while it refuses at once.
        tokio::time::sleep(Duration::from_millis(100).saturating_sub(tried.elapsed())).await;
    }
}
