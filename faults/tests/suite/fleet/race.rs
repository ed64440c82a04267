//! Scenario 2: two tokens race for one name through two relays; the store gives it to one.

use std::time::{Duration, Instant};

use burrow_faults::fleet::Fleet;
use testkit::processes::AgentBinary;

/// Rounds of the race; each races for a port and a subdomain at once.
const ROUNDS: u16 = 100;

/// The first port raced for; round `r` races for `FIRST_PORT + r`.
const FIRST_PORT: u16 = 21000;

/// What each of the two agents of one race ask for.
enum Name<'a> {
    Port(u16),
    Subdomain(&'a str),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tokens_racing_for_a_name_through_two_relays_one_wins_the_other_is_told_it_is_taken() -> anyhow::Result<()>
{
    let Some(fleet) = Fleet::up("frace", &[]).await? else {
        return Ok(());
    };
    let tokens = [fleet.add_token(0, "red").await?, fleet.add_token(1, "blue").await?];
    let echo = burrow_faults::traffic::echo_server(&fleet.sim)?.to_string();
    let started = Instant::now();
    let mut wins = [[0u32; 2]; 2];
    // Who won each round (r: red, b: blue), port then subdomain: a race, not a fixed order.
    let mut winners = [String::new(), String::new()];
    for round in 0..ROUNDS {
        let relays = [usize::from(round) % 3, (usize::from(round) + 1) % 3];
        let subdomain = format!("race-{round}");
        let (port, name) = tokio::try_join!(
            race(&fleet, relays, &tokens, &echo, Name::Port(FIRST_PORT + round)),
            race(&fleet, relays, &tokens, &echo, Name::Subdomain(&subdomain)),
        )?;
        for (kind, won) in [port, name].into_iter().enumerate() {
            wins[kind][won] += 1;
            winners[kind].push(['r', 'b'][won]);
        }
    }
    let took = started.elapsed();
    eprintln!(
        "fleet race: {ROUNDS} rounds in {took:?}; port won by red {}, blue {}; subdomain red {}, blue {}",
        wins[0][0], wins[0][1], wins[1][0], wins[1][1]
    );
    eprintln!("fleet race winners by round: ports {}, subdomains {}", winners[0], winners[1]);
    assert!(took < Duration::from_secs(150), "the race took {took:?}");
    Ok(())
}

/// Starts an agent of each token at once, the first through `relays[0]`, the second through
/// `relays[1]`, both asking for `name`. Returns which won, once the other has said the name is
/// taken and the winner has stopped (so that nothing of this round is held in the next).
async fn race(
    fleet: &Fleet,
    relays: [usize; 2],
    tokens: &[String; 2],
    echo: &str,
    name: Name<'_>,
) -> anyhow::Result<usize> {
    let mut commands = Vec::new();
    for (relay, token) in relays.into_iter().zip(tokens) {
        let mut command = fleet.agent_command(relay, token, &[])?;
        command.args(["--local", echo]);
        match &name {
            Name::Port(port) => command.args(["--remote-port", &port.to_string()]),
            Name::Subdomain(subdomain) => command.args(["--http", subdomain]),
        };
        commands.push(command);
    }
    let [first, second] = &mut commands[..] else { unreachable!("two commands were made") };
    let taken = match &name {
        Name::Port(port) => format!("port {port} is already in use"),
        Name::Subdomain(subdomain) => format!("the subdomain \"{subdomain}\" is held by another agent"),
    };
    let (won, refused, winner) = match tokio::join!(AgentBinary::launch(first), AgentBinary::launch(second)) {
        (Ok(won), Err(refused)) => (won, refused, 0),
        (Err(refused), Ok(won)) => (won, refused, 1),
        (Ok(_), Ok(_)) => anyhow::bail!("both tokens were given {taken:?}"),
        (Err(a), Err(b)) => anyhow::bail!("neither token won {taken:?}:\n{a:#}\n{b:#}"),
    };
    let refusal = format!("{refused:#}");
    anyhow::ensure!(refusal.contains(&taken), "the loser should be told {taken:?}: {refusal}");
    let tunnel = won.ready.tunnels.first().ok_or_else(|| anyhow::anyhow!("the winner serves a tunnel"))?;
    match name {
        Name::Port(port) => anyhow::ensure!(tunnel.port == port, "the winner got port {}", tunnel.port),
        Name::Subdomain(subdomain) => {
            anyhow::ensure!(tunnel.urls.iter().any(|u| u.contains(subdomain)), "the winner got {:?}", tunnel.urls)
        }
    }
    let code = won.process.terminate().await?;
    anyhow::ensure!(code == 0, "the winner exited {code} on SIGTERM");
    Ok(winner)
}
