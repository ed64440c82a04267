//! Processes die: the relay is killed and comes back (with its own identity, or with another
//! one), the agent is killed and restarted.

use std::time::{Duration, Instant};

use burrow_faults::{
    process::{AgentProcess, Binary, RelayProcess},
    traffic::{self, metric_until},
};

use crate::World;

/// The agent's default keep-alive interval; the relay's restart must show at the next one.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_and_restarted_is_noticed_at_the_next_keep_alive_and_the_port_comes_back() -> anyhow::Result<()>
{
    // A relay with another identity cannot reset the old session, so the agent notices it
    // only at the idle timeout: shortened here to keep the scenario short.
    let agent_env = [("BURROW_RECONNECT_MAX_DELAY", "2s"), ("BURROW_IDLE_TIMEOUT", "15s")];
    let Some(world) = World::build("kill9", &[], &agent_env).await? else {
        return Ok(());
    };
    let World { sim, data, relay, agent, echo: _ } = world;
    let original = relay.fingerprint.clone();
    // Killed while the session is quiet (not while the handshake's follow-up packets, such
    // as path MTU probes, are still flowing): only the next keep-alive can reveal it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    relay.daemon.kill_hard().await?;
    let killed = Instant::now();
    let relay = RelayProcess::start(&sim, data.path(), &[]).await?;
    assert_eq!(relay.fingerprint, original, "the same data directory must keep the same certificate");
    metric_until(&sim, "burrow_sessions_admitted_total", KEEP_ALIVE + Duration::from_secs(10), |n| n >= 1.0).await?;
    let back = killed.elapsed();
    let world = World { sim, data, relay, agent, echo: "127.0.0.1:9".parse()? };
    world.one_echo().await?;
    eprintln!("relay kill -9 and restart: the agent was serving on the same port {back:?} after the kill");
    assert!(back <= KEEP_ALIVE + Duration::from_secs(5), "re-registered {back:?} after the kill");

    // A relay with another certificate at the same address: never trusted, never skipped.
    let World { sim, data, relay, agent, echo: _ } = world;
    relay.daemon.kill_hard().await?;
    let stranger_data = tempfile::tempdir()?;
    let stranger = RelayProcess::start(&sim, stranger_data.path(), &[]).await?;
    assert_ne!(stranger.fingerprint, original);
    // The agent's first retry may still be for the killed relay's session (the idle timeout);
    // from the first one naming the certificate, each retry must name it.
    let retries_before = agent.daemon.stderr_lines_with(RETRY).len();
    let first = next_retry(&agent.daemon, retries_before, |line| line.contains("fingerprint")).await?;
    next_retry(&agent.daemon, first + 2, |_| true).await?;
    for (_, complaint) in &agent.daemon.stderr_lines_with(RETRY)[first..first + 3] {
        assert!(complaint.contains("fingerprint"), "the retry should say the certificate is wrong: {complaint}");
    }
    let admitted = traffic::sample(&traffic::metrics(&sim).await?, "burrow_sessions_admitted_total");
    assert_eq!(admitted, 0.0, "a relay with another certificate was trusted");
    stranger.daemon.kill_hard().await?;
    let relay = RelayProcess::start(&sim, data.path(), &[]).await?;
    metric_until(&sim, "burrow_sessions_admitted_total", Duration::from_secs(15), |n| n >= 1.0).await?;
    let world = World { sim, data, relay, agent, echo: "127.0.0.1:9".parse()? };
    world.one_echo().await?;
    Ok(())
}

/// What marks the agent's retry line (the reason comes first): every line logged inside a
/// session's span says `attempt=`, a further link's failure or "link to the relay up" too.
const RETRY: &str = "retry_in=";

/// The index, among the agent's retry lines, of the first at or after `from` that satisfies
/// `wanted`; waits for it (with the reconnect delay capped at 2 s, 40 s is many retries).
async fn next_retry(agent: &Binary, from: usize, wanted: impl Fn(&str) -> bool) -> anyhow::Result<usize> {
    let waited = Instant::now();
    loop {
        let retries = agent.stderr_lines_with(RETRY);
        if let Some(found) = retries.iter().skip(from).position(|(_, line)| wanted(line)) {
            return Ok(from + found);
        }
        anyhow::ensure!(
            waited.elapsed() < Duration::from_secs(40),
            "no such retry of the agent in 40 s; stderr:\n{}",
            agent.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_and_restarted_gets_its_port_back_and_another_token_never_does() -> anyhow::Result<()> {
    let Some(world) = World::build("agent9", &[], &[]).await? else {
        return Ok(());
    };
    let World { sim, data, relay, agent, echo } = world;
    let port = agent.public;
    agent.daemon.kill_hard().await?;

    // Another token asks for the port while its owner is away: refused, whatever happens.
    let other = add_token(&sim, data.path(), "other").await?;
    let mut command = AgentProcess::command(&sim, &relay.fingerprint, echo, &[("BURROW_TOKEN", &other)])?;
    command.args(["--remote-port", &port.port().to_string()]);
    let (code, stderr) = Binary::start(&mut command)?.exit(Duration::from_secs(20)).await?;
    assert_eq!(code, 1, "an agent with another token must be refused the port: {stderr}");
    assert!(stderr.contains(&port.port().to_string()), "the refusal should name the port: {stderr}");

    let restarted = Instant::now();
    let agent = AgentProcess::start(&sim, &relay.fingerprint, echo, &[]).await?;
    let took = restarted.elapsed();
    assert_eq!(agent.public, port, "the restarted agent got another port");
    eprintln!("agent kill -9 and restart: same port {took:?} after the new agent started");
    assert!(took <= Duration::from_secs(3), "the port came back only after {took:?}");
    let world = World { sim, data, relay, agent, echo };
    world.one_echo().await?;
    Ok(())
}

/// Creates a token with the relay's own command, as an operator would; returns it.
async fn add_token(sim: &burrow_faults::sim::Sim, data: &std::path::Path, name: &str) -> anyhow::Result<String> {
    let relay = burrow_faults::process::binary("relay")?;
    let output = sim
        .command(burrow_faults::sim::Host::Relay, &relay)
        .arg("--data-dir")
        .arg(data)
        .args(["token", "add", name])
        .output()
        .await?;
    anyhow::ensure!(output.status.success(), "relay token add: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}
