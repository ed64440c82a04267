//! What a session may cost the compiled relay: connections that never authenticate are
//! refused before TLS past a small count per address, and their datagrams are read and
//! dropped as they come, so a flood of them costs nothing lasting; one token's
//! sessions are capped, and churning its tunnels keeps the relay's memory flat.
//! Run with `cargo build --workspace --bins && cargo test -p burrow-relay --test session_budget -- --nocapture`.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use burrow_common::{
    CloseCode, Refusal, Secret,
    link::{Link, LinkError},
    protocol::conversation::HelloAnswer,
};
use bytes::Bytes;
use testkit::{STEP, echo_server, exchange, processes::RelayBinary, raw_agent, sample};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

const FLOODER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const SILENT_CLIENTS: usize = 2_000;
const HANDSHAKING_AT_ONCE: usize = 64;
const PER_ADDRESS: usize = 16;
/// The relay's default `handshake_timeout`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The flood is aborted when the relay has grown this much (KiB): each connection could
/// otherwise pin its datagram buffer, and 2,000 of them would exhaust a small machine.
const GROWTH_GUARD_KIB: u64 = 64 * 1024;
const FLOOD_LIMIT: Duration = Duration::from_secs(20);
/// Datagrams each connected client sends at most.
const DATAGRAMS_EACH: usize = 20_000;
const AGENT_LIMIT: Duration = Duration::from_secs(2);
/// A silent client's handshake takes well under a second; past this it counts as failed.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);

/// How the flood's clients fared.
#[derive(Default)]
struct Tally {
    connected: AtomicUsize,
    refused: AtomicUsize,
    other_failures: AtomicUsize,
    datagrams_unsupported: AtomicUsize,
    datagrams_sent: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_quic_flood_from_one_address_is_refused_before_tls_and_costs_little_memory() -> anyhow::Result<()> {
    let relay = RelayBinary::start(&[]).await?;
    let (_warm_agent, warm) = relay.agent(echo_server().await?).await?;
    for i in 0..20 {
        let message = format!("warm-up {i}");
        assert_eq!(exchange(warm, message.as_bytes()).await?, message.as_bytes());
    }
    let baseline = relay.process.vm_rss_kib()?;
    let peak = Arc::new(AtomicU64::new(baseline));
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(watch_memory(relay.process.pid()?, baseline, peak.clone(), stop.clone()));
    let tally = Arc::new(Tally::default());
    let flood_started = Instant::now();
    let flooding = flood(&relay, tally.clone(), stop.clone());
    let held = tokio::time::timeout(FLOOD_LIMIT, flooding).await.ok().transpose()?;
    let flood_took = flood_started.elapsed();
    let growth_during_flood = peak.load(Relaxed).saturating_sub(baseline);
    eprintln!(
        "flood over: {} connected, {} refused, {} datagrams sent, relay grown by {growth_during_flood} KiB",
        tally.connected.load(Relaxed),
        tally.refused.load(Relaxed),
        tally.datagrams_sent.load(Relaxed)
    );
    assert!(growth_during_flood < GROWTH_GUARD_KIB, "relay grew by {growth_during_flood} KiB during the flood");
    let mut held = held.context("the flood did not end within its time limit")?;

    let started = Instant::now();
    let (_agent, public) = relay.agent(echo_server().await?).await?;
    assert_eq!(exchange(public, b"through the flood").await?, b"through the flood");
    let agent_seconds = started.elapsed();
    stop.cancel();
    watcher.await??;
    while let Some(sender) = held.senders.join_next().await {
        sender?;
    }
    let refused = sample(&relay.metrics().await?, "burrow_handshakes_refused_total{reason=\"address_limit\"}");
    let growth = peak.load(Relaxed).saturating_sub(baseline);
    eprintln!(
        "silent flood: {} connected, {} refused ({refused:?} counted), {} other failures; \
         datagrams: {} sent, {} refused; peak growth {growth} KiB; agent in {agent_seconds:?}",
        tally.connected.load(Relaxed),
        tally.refused.load(Relaxed),
        tally.other_failures.load(Relaxed),
        tally.datagrams_sent.load(Relaxed),
        tally.datagrams_unsupported.load(Relaxed),
    );
    assert!(growth < GROWTH_GUARD_KIB, "relay grew by {growth} KiB");
    // A silent client is closed at the handshake timeout, and its place taken by the next:
    // the cap holds at every moment, so each timeout the flood lasted lets in one more batch.
    let batches = 1 + (flood_took.as_secs_f64() / HANDSHAKE_TIMEOUT.as_secs_f64()) as usize;
    let least_refused = (SILENT_CLIENTS - PER_ADDRESS * batches) as f64;
    assert!(refused.is_some_and(|n| n >= least_refused), "refusals counted: {refused:?}");
    assert!(tally.refused.load(Relaxed) as f64 >= least_refused, "clients refused: {}", tally.refused.load(Relaxed));
    assert_eq!(tally.other_failures.load(Relaxed), 0);
    // The relay takes datagrams (UDP tunnels need them advertised before any Hello), reads
    // and drops those of clients that never said Hello, and stays within the guard.
    assert_eq!(tally.datagrams_unsupported.load(Relaxed), 0, "a silent client's datagrams were refused");
    assert!(tally.datagrams_sent.load(Relaxed) > 0, "the silent clients sent no datagrams");
    assert!(agent_seconds < AGENT_LIMIT, "the agent took {agent_seconds:?}");
    Ok(())
}

/// The connected clients, held open, and their datagram senders, which run until `stop`.
struct Held {
    /// Held only to keep the clients connected.
    _connections: Vec<quinn::Connection>,
    senders: JoinSet<()>,
}

/// Opens the silent clients from [`FLOODER`], a few at a time, and returns once every
/// handshake has ended; each connected client sends datagrams until `stop`.
async fn flood(relay: &RelayBinary, tally: Arc<Tally>, stop: CancellationToken) -> anyhow::Result<Held> {
    let client = quinn::TransportConfig::default();
    let endpoint = raw_agent::endpoint(FLOODER, relay.fingerprint, Some(client))?;
    let at_once = Arc::new(Semaphore::new(HANDSHAKING_AT_ONCE));
    let mut clients = JoinSet::new();
    let mut held = Held { _connections: Vec::new(), senders: JoinSet::new() };
    for _ in 0..SILENT_CLIENTS {
        while let Some(done) = clients.try_join_next() {
            held.keep(done?, &tally, &stop);
        }
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = at_once.clone().acquire_owned() => permit?,
        };
        let connecting = endpoint.connect(relay.addr, "localhost")?;
        let tally = tally.clone();
        clients.spawn(async move {
            let _permit = permit;
            let e = match tokio::time::timeout(HANDSHAKE_LIMIT, connecting).await {
                Ok(Ok(conn)) => return Some(conn),
                Ok(Err(e)) => e,
                Err(_) => quinn::ConnectionError::TimedOut,
            };
            let counter = if refused(&e) { &tally.refused } else { &tally.other_failures };
            counter.fetch_add(1, Relaxed);
            None
        });
    }
    while let Some(done) = clients.join_next().await {
        held.keep(done?, &tally, &stop);
    }
    Ok(held)
}

impl Held {
    /// Holds a connected client open, sending datagrams.
    fn keep(&mut self, conn: Option<quinn::Connection>, tally: &Arc<Tally>, stop: &CancellationToken) {
        let Some(conn) = conn else { return };
        tally.connected.fetch_add(1, Relaxed);
        let (tally, stop, sending) = (tally.clone(), stop.clone(), conn.clone());
        self.senders.spawn(async move { send_datagrams(&sending, &tally, &stop).await });
        self._connections.push(conn);
    }
}

fn refused(e: &quinn::ConnectionError) -> bool {
    matches!(e, quinn::ConnectionError::ConnectionClosed(close)
        if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

async fn send_datagrams(conn: &quinn::Connection, tally: &Tally, stop: &CancellationToken) {
    let datagram = Bytes::from(vec![0x5a; 1024]);
    for _ in 0..DATAGRAMS_EACH {
        let sent = tokio::select! {
            _ = stop.cancelled() => return,
            sent = conn.send_datagram_wait(datagram.clone()) => sent,
        };
        match sent {
            Ok(()) => tally.datagrams_sent.fetch_add(1, Relaxed),
            Err(quinn::SendDatagramError::UnsupportedByPeer | quinn::SendDatagramError::TooLarge) => {
                tally.datagrams_unsupported.fetch_add(1, Relaxed);
                return;
            }
            Err(_) => return,
        };
    }
}

/// Samples the relay's memory every 10 ms into `peak`, and stops the flood once it has grown
/// past the guard.
async fn watch_memory(pid: u32, baseline: u64, peak: Arc<AtomicU64>, stop: CancellationToken) -> anyhow::Result<()> {
    let mut pace = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = pace.tick() => {}
        }
        let rss = testkit::processes::vm_rss_kib(pid)?;
        peak.fetch_max(rss, Relaxed);
        if rss.saturating_sub(baseline) >= GROWTH_GUARD_KIB {
            stop.cancel();
            return Ok(());
        }
    }
}

const SESSIONS_PER_TOKEN: usize = 16;
const UPDATES: usize = 2_000;
const WARM_UP_UPDATES: usize = 200;
/// What the churn may leave behind, in KiB.
const CHURN_GROWTH_KIB: u64 = 4 * 1024;
const MEMORY_SETTLE_LIMIT: Duration = Duration::from_secs(15);
/// Each update waits for the reservations to be stored, a disk write.
const CHURN_LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn update_churn_with_one_token_keeps_sessions_capped_and_memory_flat() -> anyhow::Result<()> {
    let relay = RelayBinary::start(&[]).await?;
    let token = Secret::new(relay.token()?);
    let endpoint = raw_agent::endpoint(IpAddr::V4(Ipv4Addr::LOCALHOST), relay.fingerprint, None)?;
    let mut sessions = Vec::new();
    for i in 0..SESSIONS_PER_TOKEN {
        let tunnel = raw_agent::tcp_tunnel(&format!("s{i}"));
        let (session, answer) = raw_agent::hello(&endpoint, relay.addr, &token, vec![tunnel]).await?;
        anyhow::ensure!(matches!(answer, HelloAnswer::Welcome(_)), "session {i}: {answer:?}");
        sessions.push(session);
    }
    let extra = raw_agent::tcp_tunnel("one-too-many");
    let (_refused, answer) = raw_agent::hello(&endpoint, relay.addr, &token, vec![extra]).await?;
    let max = SESSIONS_PER_TOKEN;
    assert_eq!(answer, HelloAnswer::Refused(Refusal::TokenSessionLimit { max }));

    let churned = &mut sessions[0];
    let mut open = 0;
    let started = Instant::now();
    for i in 0..WARM_UP_UPDATES {
        open = replace_tunnel(churned, open, i).await?;
    }
    let baseline = relay.process.vm_rss_kib()?;
    let churn = async {
        for i in WARM_UP_UPDATES..UPDATES {
            open = replace_tunnel(churned, open, i).await?;
        }
        anyhow::Ok(open)
    };
    open = tokio::time::timeout(CHURN_LIMIT, churn).await.context("the churn did not end in time")??;
    let churned = &mut sessions[0];
    let churn_seconds = started.elapsed().as_secs_f64();
    let after = relay.memory_back_under(baseline + CHURN_GROWTH_KIB, MEMORY_SETTLE_LIMIT).await?;
    eprintln!("churn: {UPDATES} updates in {churn_seconds:.1} s; relay RSS {baseline} -> {after} KiB");
    assert!(after <= baseline + CHURN_GROWTH_KIB, "relay memory grew from {baseline} to {after} KiB");

    // Removing the last tunnel ends the session; the answer may or may not arrive first.
    churned.control.update(Vec::new(), vec![open]).await.ok();
    let closed = tokio::time::timeout(STEP, churned.link.closed()).await?;
    assert!(matches!(closed, LinkError::Closed(CloseCode::NoTunnels)), "closed with {closed:?}");
    Ok(())
}

/// Opens tunnel `t{i}` and closes the tunnel `open` in one update; returns the new one's id.
async fn replace_tunnel(session: &mut raw_agent::RawSession, open: u32, i: usize) -> anyhow::Result<u32> {
    let answer = session.control.update(vec![raw_agent::tcp_tunnel(&format!("t{i}"))], vec![open]).await?;
    anyhow::ensure!(answer.refused.is_empty(), "update {i} refused: {:?}", answer.refused);
    Ok(answer.granted.first().context("no tunnel granted")?.id)
}
