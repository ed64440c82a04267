//! Scenario 4: etcd goes away for 30 s. What the fleet serves keeps serving; what needs the
//! store waits for it, and nothing in it is lost.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use burrow_faults::fleet::{Fleet, PREFIX};
use testkit::processes::{AgentBinary, tcp_addr};
use tokio::sync::watch;

use super::{echo_through, one_agent_per_relay, visit_until};

/// How long etcd stays down.
const OUTAGE: Duration = Duration::from_secs(30);

/// What the relay says when the store cannot answer: a refusal the agent retries.
const TRY_LATER: &str = "cannot take this session right now";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_down_for_30_s_tunnels_keep_serving_and_a_new_agent_waits_for_it() -> anyhow::Result<()> {
    let Some(mut fleet) = Fleet::up("fetcd", &[]).await? else {
        return Ok(());
    };
    let token = fleet.add_token(0, "alice").await?;
    let echo = burrow_faults::traffic::echo_server(&fleet.sim)?;
    let agents = one_agent_per_relay(&fleet, &token, echo).await?;
    let publics: Vec<SocketAddr> = agents.iter().map(|(_, public)| *public).collect();
    let reconnect = [("BURROW_RECONNECT_MAX_DELAY", "2s")];
    let mut late = fleet.agent_command(0, &token, &reconnect)?;
    late.args(["--local", &echo.to_string(), "--name", "late"]);

    let (stop, stopped) = watch::channel(false);
    let (sim, etcd) = (&fleet.sim, &mut fleet.etcd);
    let outage = async {
        etcd.kill();
        let down = Instant::now();
        // Started halfway through the outage, the new agent is up within its launch bound
        // (30 s) only if it comes up soon after etcd does.
        tokio::time::sleep(OUTAGE / 2).await;
        let back = async {
            tokio::time::sleep(OUTAGE / 2).await;
            etcd.restart().await?;
            anyhow::Ok(Instant::now())
        };
        let up = async {
            let late = AgentBinary::launch(&mut late).await;
            (late, Instant::now())
        };
        let ((late, up), back) = tokio::join!(up, back);
        stop.send(true).ok();
        anyhow::Ok((down, late?, up, back?))
    };
    let (visits, outage) = tokio::join!(visit_until(sim, &publics, stopped), outage);
    let (down, mut late, up, back) = outage?;

    for (n, visits) in visits.iter().enumerate() {
        eprintln!("etcd outage: relay {n} echoed {} times, {} failures", visits.echoes, visits.failures.len());
        assert!(visits.failures.is_empty(), "relay {n} failed visitors: {:?}", visits.failures);
        assert!(visits.echoes >= 50, "relay {n} was visited only {} times", visits.echoes);
    }
    let refusals = late.process.stderr_lines_with(TRY_LATER);
    let refused = refusals.first().map(|(at, line)| (*at, line.clone()));
    let (at, line) = refused.ok_or_else(|| anyhow::anyhow!("no try-later refusal: {}", late.process.stderr_text()))?;
    assert!(at < back, "the try-later refusal should come while etcd is down: {line}");
    let tunnel = late.tunnel("late").await?;
    echo_through(sim, tcp_addr(&tunnel)?).await?;
    eprintln!(
        "etcd outage: the new agent was refused ({line}) and up {:?} after etcd came back ({:?} down)",
        up.saturating_duration_since(back),
        back - down
    );
    nothing_lost(&fleet, &agents, &token).await
}

/// After the outage: the token and every claim are still in etcd, and the agents of before
/// never lost their sessions.
async fn nothing_lost(fleet: &Fleet, agents: &[(AgentBinary, SocketAddr)], token: &str) -> anyhow::Result<()> {
    let listed = fleet.relay_command(1, &["token", "list"]).await?;
    assert!(String::from_utf8_lossy(&listed.stdout).starts_with("alice\t"), "tokens after the outage: {listed:?}");
    let held = fleet.etcdctl(2, &["get", "--prefix", "--keys-only", &format!("{PREFIX}held/port/")]).await?;
    for (n, (agent, public)) in agents.iter().enumerate() {
        let key = format!("{PREFIX}held/port/{}/", public.port());
        assert!(held.lines().any(|line| line.starts_with(&key)), "relay {n}'s claim is gone from etcd: {held}");
        let retries = agent.process.stderr_lines_with("retry_in=");
        assert!(retries.is_empty(), "the agent on relay {n} lost its session: {retries:?}");
        echo_through(&fleet.sim, *public).await?;
    }
    // The token still admits a new agent.
    let mut again = fleet.agent_command(2, token, &[])?;
    again.args(["--local", "127.0.0.1:9", "--name", "again"]);
    AgentBinary::launch(&mut again).await?.process.terminate().await?;
    Ok(())
}
