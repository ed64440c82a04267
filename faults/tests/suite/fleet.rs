//! A fleet of three relays sharing one etcd: names claimed through different relays, a
//! revocation reaching every relay, etcd going away, and one relay cut off from it.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use burrow_faults::{
    fleet::Fleet,
    sim::{Host, Sim},
    traffic,
};
use testkit::processes::{AgentBinary, tcp_addr};
use tokio::sync::watch;

mod fencing;
mod kill;
mod outage;
mod race;

/// How often each relay's tunnel is visited while a fault is on.
const VISIT_EVERY: Duration = Duration::from_millis(200);

/// Agents of `token` exposing `echo`, one through each relay, tunnels `app-0`, `app-1`,
/// `app-2`; returns them with their public addresses.
async fn one_agent_per_relay(
    fleet: &Fleet,
    token: &str,
    echo: SocketAddr,
) -> anyhow::Result<Vec<(AgentBinary, SocketAddr)>> {
    let mut agents = Vec::new();
    for n in 0..3 {
        let mut command = fleet.agent_command(n, token, &[])?;
        command.args(["--local", &echo.to_string(), "--name", &format!("app-{n}")]);
        let agent = AgentBinary::launch(&mut command).await?;
        let public = tcp_addr(agent.ready.tunnels.first().ok_or_else(|| anyhow::anyhow!("a tunnel"))?)?;
        agents.push((agent, public));
    }
    Ok(agents)
}

/// One fresh visitor from the outside client to `public`, one small echo.
async fn echo_through(sim: &Sim, public: SocketAddr) -> anyhow::Result<Duration> {
    let mut tcp = sim.connect(Host::Client, public).await?;
    let took = tokio::time::timeout(Duration::from_secs(5), traffic::timed_round_trip(&mut tcp, b"fleet")).await;
    took.map_err(|_| anyhow::anyhow!("no echo from {public} in 5 s"))?
}

/// Echoes made through one tunnel, and why the others failed.
#[derive(Default)]
struct Visits {
    echoes: u32,
    failures: Vec<String>,
}

/// Visits each of `publics` every [`VISIT_EVERY`] until `stop` says so.
async fn visit_until(sim: &Sim, publics: &[SocketAddr], mut stop: watch::Receiver<bool>) -> Vec<Visits> {
    let mut visits: Vec<Visits> = publics.iter().map(|_| Visits::default()).collect();
    let started = Instant::now();
    while !*stop.borrow() {
        for (public, visits) in publics.iter().zip(&mut visits) {
            match echo_through(sim, *public).await {
                Ok(_) => visits.echoes += 1,
                Err(e) => visits.failures.push(format!("at {:?}: {e:#}", started.elapsed())),
            }
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(VISIT_EVERY) => {}
        }
    }
    visits
}

/// Scenario 3: a token revoked through one relay's store ends its sessions on all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_through_one_relay_ends_its_sessions_on_all_three_within_a_second() -> anyhow::Result<()> {
    let Some(fleet) = Fleet::up("frevoke", &[]).await? else {
        return Ok(());
    };
    let token = fleet.add_token(0, "alice").await?;
    let echo = traffic::echo_server(&fleet.sim)?;
    let agents = one_agent_per_relay(&fleet, &token, echo).await?;
    for (_, public) in &agents {
        echo_through(&fleet.sim, *public).await?;
    }

    let asked = Instant::now();
    let revoked = fleet.relay_command(2, &["token", "revoke", "alice"]).await?;
    anyhow::ensure!(revoked.status.success(), "relay token revoke: {}", String::from_utf8_lossy(&revoked.stderr));
    let done = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut publics = Vec::new();
    for (n, (agent, public)) in agents.into_iter().enumerate() {
        let (code, stderr) = agent.process.exit(Duration::from_secs(5)).await?;
        let took = done.elapsed();
        slowest = slowest.max(took);
        assert_eq!(code, 1, "the agent on relay {n} should stop for good: {stderr}");
        assert!(stderr.contains("revoked"), "the agent on relay {n} should say its token was revoked: {stderr}");
        assert!(took < Duration::from_secs(1), "the session on relay {n} lasted {took:?} after the revocation");
        publics.push(public);
    }
    for (n, public) in publics.into_iter().enumerate() {
        assert!(echo_through(&fleet.sim, public).await.is_err(), "relay {n} still serves the revoked token's port");
    }
    let command = done - asked;
    eprintln!(
        "fleet revocation: all three sessions ended {slowest:?} after `token revoke` returned (it ran {command:?})"
    );
    Ok(())
}
