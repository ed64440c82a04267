//! Scenario 5: one relay cut off from etcd past its lease stops serving its names, and only
//! then may another token claim them through another relay.

use std::time::{Duration, Instant};

use burrow_faults::fleet::{Fleet, PREFIX};
use testkit::processes::{AgentBinary, tcp_addr};

use super::echo_through;

/// The relays' lease, short so that the scenario is.
const LEASE_TTL: Duration = Duration::from_secs(5);

/// The port both tokens want.
const PORT: u16 = 22222;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cut_off_from_etcd_past_its_lease_stops_serving_and_only_then_another_token_gets_the_port()
-> anyhow::Result<()> {
    // Released places are forgotten at once, so that the port is free as soon as the lease
    // holding it ends (a reservation would keep it for the same token).
    let env = [("BURROW_RELAY_STORE__LEASE_TTL", "5s"), ("BURROW_RELAY_RESERVATION_TTL", "0s")];
    let Some(fleet) = Fleet::up("ffence", &env).await? else {
        return Ok(());
    };
    let (red, blue) = (fleet.add_token(0, "red").await?, fleet.add_token(1, "blue").await?);
    let echo = burrow_faults::traffic::echo_server(&fleet.sim)?.to_string();
    let port = PORT.to_string();
    let mut command = fleet.agent_command(0, &red, &[("BURROW_RECONNECT_MAX_DELAY", "1s")])?;
    let red = AgentBinary::launch(command.args(["--local", &echo, "--remote-port", &port])).await?;
    let red_public = tcp_addr(red.ready.tunnels.first().ok_or_else(|| anyhow::anyhow!("a tunnel"))?)?;
    echo_through(&fleet.sim, red_public).await?;
    let held_key = held(&fleet).await?.into_iter().next().ok_or_else(|| anyhow::anyhow!("relay 0 holds the port"))?;

    fleet.cut_from_store(0)?;
    let cut = Instant::now();
    // Until relay 0's lease ends, blue is refused the port through relay 1; then it gets it.
    let mut refused_while_held = 0;
    let blue = loop {
        anyhow::ensure!(cut.elapsed() < LEASE_TTL * 4, "blue never got the port");
        let mut command = fleet.agent_command(1, &blue, &[])?;
        let attempt = AgentBinary::launch(command.args(["--local", &echo, "--remote-port", &port])).await;
        let still_held = held(&fleet).await?.contains(&held_key);
        match attempt {
            Ok(blue) => {
                anyhow::ensure!(!still_held, "blue got the port while relay 0's lease still held it");
                break blue;
            }
            Err(e) => {
                let refusal = format!("{e:#}");
                anyhow::ensure!(refusal.contains(&format!("port {PORT} is already in use")), "{refusal}");
                refused_while_held += usize::from(still_held);
            }
        }
    };
    let taken_over = cut.elapsed();
    assert!(refused_while_held > 0, "blue was never refused while relay 0's lease held the port");

    // Relay 0 had ended red's session (fenced) before blue got the port, and serves it no more.
    let ended = red.process.stderr_lines_with("retry_in=");
    let (at, why) = ended.first().ok_or_else(|| anyhow::anyhow!("red's session never ended"))?;
    let fenced = at.duration_since(cut);
    assert!(
        fenced <= taken_over,
        "relay 0 ended red's session {fenced:?} after the cut, blue had the port at {taken_over:?}"
    );
    assert!(fenced <= LEASE_TTL + Duration::from_secs(1), "relay 0 ended red's session only {fenced:?} after the cut");
    assert!(echo_through(&fleet.sim, red_public).await.is_err(), "relay 0 still serves red's port");
    echo_through(&fleet.sim, tcp_addr(&blue.ready.tunnels[0])?).await?;
    eprintln!(
        "relay cut off from etcd (lease {LEASE_TTL:?}): red's session ended {fenced:?} after the cut ({why}); \
         blue refused {refused_while_held} times while the lease held, then got the port {taken_over:?} after the cut"
    );
    Ok(())
}

/// The `held/` keys of [`PORT`], read through relay 1's way to etcd.
async fn held(fleet: &Fleet) -> anyhow::Result<Vec<String>> {
    let prefix = format!("{PREFIX}held/port/{PORT}/");
    let keys = fleet.etcdctl(1, &["get", "--prefix", "--keys-only", &prefix]).await?;
    Ok(keys.lines().filter(|line| !line.is_empty()).map(str::to_string).collect())
}
