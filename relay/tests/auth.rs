//! Token guessing gains nothing from haste or parallelism, and a relay that cannot read its
//! tokens asks agents to come back rather than sending them away.
//! Run with `cargo test -p burrow-relay --test auth`.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::Context;
use burrow_common::{
    Fingerprint, Refusal, Secret, TunnelKind, TunnelSpec,
    link::QuicLink,
    protocol::conversation::{AgentControl, HelloAnswer},
    tls::{self, Trust},
    transport,
};
use quinn::{ConnectionError, TransportErrorCode};
use relay::tokens::TokenStore;
use testkit::*;

/// What became of one Hello sent by hand.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The relay refused the QUIC handshake itself, before any TLS.
    RefusedBeforeTls,
    Refused(Refusal),
    Welcomed,
}

/// Dials the relay from `source` and says Hello with `token`, as an agent would.
async fn hello(relay: (SocketAddr, Fingerprint), source: IpAddr, token: &str) -> anyhow::Result<Outcome> {
    let (relay_addr, fingerprint) = relay;
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(source, 0))?;
    let transport = transport::agent(Duration::from_secs(5), Duration::from_secs(10));
    endpoint.set_default_client_config(tls::client_config(&Trust::Pinned(fingerprint), transport)?);
    let connection = match endpoint.connect(relay_addr, "localhost")?.await {
        Ok(connection) => connection,
        Err(ConnectionError::ConnectionClosed(close)) if close.error_code == TransportErrorCode::CONNECTION_REFUSED => {
            return Ok(Outcome::RefusedBeforeTls);
        }
        Err(e) => return Err(e).context("handshake"),
    };
    let link = QuicLink::from(connection);
    let mut control = AgentControl::open(&link).await?;
    let spec = TunnelSpec { name: "web".into(), local: "127.0.0.1:1".into(), kind: TunnelKind::Tcp { port: None } };
    let outcome = match control.hello(&Secret::new(token), vec![spec]).await? {
        HelloAnswer::Welcome(_) => Outcome::Welcomed,
        HelloAnswer::Refused(refusal) => Outcome::Refused(refusal),
    };
    link.connection().close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(outcome)
}

fn series(page: &str, name: &str) -> f64 {
    sample(page, name).unwrap_or(0.0)
}

/// The checks a guesser may get: the burst, then one a second, and one for rounding.
fn allowed_checks(elapsed: Duration) -> f64 {
    10.0 + elapsed.as_secs_f64().ceil() + 1.0
}

#[tokio::test]
async fn parallel_token_guesses_are_checked_at_most_once_a_second_and_refused_before_tls() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    // The in-process agent dials from 127.0.0.1, so the guesser does too: one address, as
    // behind one NAT.
    let source: IpAddr = "127.0.0.1".parse()?;
    let started = Instant::now();
    let mut guessers = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let target = (relay.addr, relay.fingerprint);
        guessers.spawn(async move {
            let mut outcomes = Vec::new();
            // Bounded in count and time; stops once refused before TLS.
            for _ in 0..20 {
                let outcome = tokio::time::timeout(STEP, hello(target, source, "brw_wrong-guess")).await??;
                let before_tls = outcome == Outcome::RefusedBeforeTls;
                outcomes.push(outcome);
                if before_tls || started.elapsed() > Duration::from_secs(5) {
                    break;
                }
            }
            anyhow::Ok(outcomes)
        });
    }
    let mut outcomes = Vec::new();
    while let Some(done) = guessers.join_next().await {
        outcomes.extend(done??);
    }
    let elapsed = started.elapsed();
    let page = metrics(&relay).await?;
    let checks = series(&page, "burrow_credential_checks_total{kind=\"token\"}");
    assert!(checks <= allowed_checks(elapsed), "{checks} checks in {elapsed:?}");
    assert!(outcomes.iter().all(|o| *o != Outcome::Welcomed));
    let try_later = outcomes.iter().filter(|o| matches!(o, Outcome::Refused(Refusal::TryLater { .. }))).count();
    assert!(try_later > 0, "over quota, Hellos are asked to try later: {outcomes:?}");
    assert!(series(&page, "burrow_handshakes_refused_total{reason=\"guessing\"}") > 0.0, "{page}");

    // A valid agent behind the same address, arriving while it is throttled, gets in once the
    // quota refills.
    let arrived = Instant::now();
    let (agent, _) = TestAgent::start(relay.plan(vec![tunnel("web", echo_server().await?)])).await?;
    assert!(arrived.elapsed() < Duration::from_secs(3), "took {:?}", arrived.elapsed());
    agent.stop().await?;
    relay.stop().await
}

/// Replaces the valid-tokens-are-never-delayed promise: a guesser that waits for each answer
/// is paced to one a second and never drains its address's quota, so a valid agent behind the
/// same address connects at once; only a parallel guesser delays it (see above).
#[tokio::test]
async fn sequential_token_failures_are_paced_and_a_valid_agent_still_connects() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(dir.path()).await?;
    let (target, source): (_, IpAddr) = ((relay.addr, relay.fingerprint), "127.0.0.1".parse()?);
    let bad_token = Outcome::Refused(Refusal::BadToken);

    // The first failures (half the burst) are answered at once.
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(hello(target, source, "brw_wrong-guess").await?, bad_token);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // Past it, refusals wait: the quota refills meanwhile, so the guesser reaches the paced
    // refusals within a few more tries, then gets about one answer a second.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(hello(target, source, "brw_wrong-guess").await?, bad_token);
        slowest = slowest.max(started.elapsed());
        if slowest >= Duration::from_millis(900) {
            break;
        }
    }
    assert!(slowest >= Duration::from_millis(900), "only {slowest:?}");

    let echo = echo_server().await?;
    let started = Instant::now();
    let (agent, _) = TestAgent::start(relay.plan(vec![tunnel("web", echo)])).await?;
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    agent.stop().await?;
    relay.stop().await
}

#[tokio::test]
async fn an_unreadable_token_store_is_a_transient_refusal_and_the_agent_retries() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let team = TokenStore::open(dir.path()).add("team", Default::default())?;
    let relay = TestRelay::start(dir.path()).await?;
    let tokens = dir.path().join("tokens.json");
    let saved = tokens.with_extension("saved");
    // A directory in its place cannot be read even by root, whom a chmod would not stop.
    std::fs::rename(&tokens, &saved)?;
    std::fs::create_dir(&tokens)?;

    let mut plan = relay.plan(vec![tunnel("web", echo_server().await?)]);
    plan.token = team;
    let mut agent = TestAgent::spawn(plan);
    settled_at_least(&relay, "burrow_token_store_errors_total", 1.0).await?;
    assert!(!agent.task.is_finished(), "the agent keeps trying");

    std::fs::remove_dir(&tokens)?;
    std::fs::rename(&saved, &tokens)?;
    agent.online().await?;
    agent.stop().await?;
    relay.stop().await
}

/// Waits until `series` reaches `least`, by scraping: a metric is the relay's own word.
async fn settled_at_least(relay: &TestRelay, name: &str, least: f64) -> anyhow::Result<()> {
    tokio::time::timeout(STEP, async {
        loop {
            if series(&metrics(relay).await?, name) >= least {
                return anyhow::Ok(());
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .with_context(|| format!("{name} did not reach {least}"))?
}
