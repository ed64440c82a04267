//! Floods against the compiled relay: ten thousand visitors at one tunnel from many source
//! addresses, then hundreds of QUIC clients that finish their handshake and never say Hello.
//! The caps hold and every refusal is counted, another agent's tunnel keeps answering within
//! a second, a new agent still gets in, and the relay's memory comes back down.
//! Run with `cargo build --workspace --bins && cargo test -p burrow-relay --test floods -- --nocapture`
//! (`--nocapture` shows the measured figures).

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use burrow_common::{
    Fingerprint,
    tls::{self, Trust},
    transport,
};
use testkit::{
    STEP, echo_server, exchange,
    processes::{Canary, RelayBinary, Rounds},
    sample,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpSocket,
    sync::Semaphore,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

/// Visitors sent at the flood tunnel, and at most this many in flight at once.
const ATTEMPTS: usize = 10_000;
const MOST_IN_FLIGHT: usize = 1_000;
/// Descriptors left for everything else this process holds.
const FD_MARGIN: usize = 300;
/// One address sends a third of the flood, more than the per-address cap lets in.
const HEAVY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The rest come from 127.0.0.3 upwards, spread over this many addresses.
const LIGHT_SOURCES: usize = 64;
/// A served visitor stays this long, so the flood keeps pressing against the caps.
const HOLD: Duration = Duration::from_millis(50);
const FLOOD_LIMIT: Duration = Duration::from_secs(40);
/// What the canary promises: every round trip through the other tunnel under this.
const CANARY_LIMIT: Duration = Duration::from_secs(1);
const CANARY_PACE: Duration = Duration::from_millis(20);
const CANARY_MOST_ROUNDS: usize = 2_000;
/// QUIC clients in the handshake flood, and the relay's threshold for demanding a Retry.
const SILENT_CLIENTS: usize = 300;
/// They come from 127.0.0.2 upwards, 15 from each address: under the relay's cap on clients
/// waiting to authenticate per address (16), so the relay asks them for a Retry rather than
/// refusing them.
const SILENT_SOURCES: usize = 20;
const RETRY_ABOVE: usize = 16;
/// Address-validation tokens the relay sends a client on each connection (quinn's default),
/// each good for one later connection from the same address.
const TOKENS_PER_CONNECTION: usize = 2;
/// Memory bounds, in KiB over the relay's RSS before the flood.
const PEAK_GROWTH: u64 = 64 * 1024;
const LASTING_GROWTH: u64 = 8 * 1024;
/// Time for the allocator to return freed pages (it purges after 1 s).
const MEMORY_SETTLE_LIMIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread")]
async fn floods_leave_the_caps_other_tunnels_and_memory_intact() -> anyhow::Result<()> {
    let started = Instant::now();
    let shape = Shape::for_this_process()?;
    let relay = RelayBinary::start(&shape.relay_env()).await?;
    let (_target_agent, target) = relay.agent(echo_server().await?).await?;
    let canary = Canary::start(&relay).await?;
    // The first visitors allocate what later ones reuse; the baseline is taken after them.
    for i in 0..20 {
        let message = format!("warm-up {i}");
        assert_eq!(exchange(target, message.as_bytes()).await?, message.as_bytes());
        assert_eq!(exchange(canary.public, message.as_bytes()).await?, message.as_bytes());
    }
    let figures = visitor_flood(&relay, &shape, target, &canary).await.context("visitor flood")?;
    figures.print(&shape);
    figures.check(&shape)?;
    handshake_flood(&relay, &canary).await.context("handshake flood")?;
    eprintln!("floods: whole test {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The flood's size and the relay's caps, scaled to this process's open files limit.
struct Shape {
    in_flight: usize,
    tunnel_cap: usize,
    ip_cap: usize,
}

impl Shape {
    fn for_this_process() -> anyhow::Result<Self> {
        // A served visitor holds two descriptors here: its socket and the echo server's.
        let in_flight = MOST_IN_FLIGHT.min(open_files_limit()?.saturating_sub(FD_MARGIN) / 2);
        anyhow::ensure!(in_flight >= 100, "the open files limit is too low for this test: raise `ulimit -n`");
        // Twice the tunnel's cap in flight keeps the tunnel full, and the heavy address's
        // third of them is more than three times its own cap.
        Ok(Self { in_flight, tunnel_cap: in_flight / 2, ip_cap: in_flight / 10 })
    }

    fn relay_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("BURROW_RELAY_MAX_VISITORS_PER_TUNNEL", self.tunnel_cap.to_string()),
            ("BURROW_RELAY_MAX_VISITORS_PER_IP", self.ip_cap.to_string()),
            ("BURROW_RELAY_RETRY_HANDSHAKES_ABOVE", RETRY_ABOVE.to_string()),
            // The silent clients stay in their handshake for the whole phase.
            ("BURROW_RELAY_HANDSHAKE_TIMEOUT", "60s".into()),
        ]
    }
}

fn open_files_limit() -> anyhow::Result<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits.lines().find(|l| l.starts_with("Max open files")).context("open files in /proc/self/limits")?;
    Ok(line.split_whitespace().nth(3).context("soft limit")?.parse()?)
}

/// A counter that may be absent: label sets appear at their first use.
fn counter(page: &str, series: &str) -> f64 {
    sample(page, series).unwrap_or(0.0)
}

/// What the visitor flood measured, from both ends.
struct Figures {
    seconds: f64,
    tally: Tally,
    peaks: Peaks,
    canary: Rounds,
    /// The relay's counters over the flood: accepted, refused at each cap, refused for want
    /// of a stream.
    accepted: f64,
    by_tunnel: f64,
    by_ip: f64,
    no_stream: f64,
    baseline_kib: u64,
    settled_kib: u64,
}

async fn visitor_flood(
    relay: &RelayBinary,
    shape: &Shape,
    target: SocketAddr,
    canary: &Canary,
) -> anyhow::Result<Figures> {
    let before = relay.settled("burrow_visitors", 0.0).await?;
    let baseline_kib = relay.process.vm_rss_kib()?;
    let stop = CancellationToken::new();
    let canary_rounds = canary.run(CANARY_PACE, CANARY_MOST_ROUNDS, stop.clone())?;
    let flooding = async {
        let flooded = tokio::time::timeout(FLOOD_LIMIT, flood(target, shape.in_flight)).await;
        stop.cancel();
        flooded.context("the flood overran its time bound")?
    };
    let started = Instant::now();
    let (tally, peaks) = tokio::join!(flooding, watch_relay(relay, &stop));
    let seconds = started.elapsed().as_secs_f64();
    let (tally, peaks, canary) = (tally?, peaks?, canary_rounds.await??);
    let after = relay.settled("burrow_visitors", 0.0).await?;
    let settled_kib = relay.memory_back_under(baseline_kib + LASTING_GROWTH, MEMORY_SETTLE_LIMIT).await?;
    let delta = |series| counter(&after, series) - counter(&before, series);
    Ok(Figures {
        seconds,
        tally,
        peaks,
        canary,
        accepted: delta("burrow_visitors_accepted_total"),
        by_tunnel: delta("burrow_visitors_refused_total{reason=\"tunnel_limit\"}"),
        by_ip: delta("burrow_visitors_refused_total{reason=\"ip_limit\"}"),
        no_stream: delta("burrow_visitors_refused_total{reason=\"agent_unavailable\"}"),
        baseline_kib,
        settled_kib,
    })
}

impl Figures {
    fn print(&self, shape: &Shape) {
        let (t, p) = (&self.tally, &self.peaks);
        eprintln!("visitor flood: {ATTEMPTS} attempts, {} in flight, {:.1} s", shape.in_flight, self.seconds);
        eprintln!("  caps: {} visitors per tunnel, {} per address", shape.tunnel_cap, shape.ip_cap);
        eprintln!("  visitors: {} connected, {} not", t.connected, t.unconnected);
        eprintln!("  {} served, {} turned away, {} unanswered", t.served, t.turned_away, t.unanswered);
        eprintln!("  relay: {} accepted, refused {} at the tunnel cap", self.accepted, self.by_tunnel);
        eprintln!("  refused {} at the address cap, {} without a stream", self.by_ip, self.no_stream);
        eprintln!("  open visitors at most: {} by the relay's gauge ({} samples)", p.visitors, p.samples);
        eprintln!("  {} served at once by the visitors' own count", t.most_open);
        eprintln!("  canary: {} round trips, slowest {:.1} ms", self.canary.count, millis(self.canary.slowest));
        let (baseline, peak, settled) = (mib(self.baseline_kib), mib(p.rss_kib), mib(self.settled_kib));
        eprintln!("  relay RSS: baseline {baseline:.1} MiB, peak {peak:.1} MiB, settled {settled:.1} MiB");
    }

    fn check(&self, shape: &Shape) -> anyhow::Result<()> {
        let (t, cap) = (&self.tally, shape.tunnel_cap);
        // The gauge counts every tunnel's visitors. The canary opens one visitor at a time,
        // but the relay may still be finishing its last one (the close crossing the agent
        // and back) when it admits the next, so the canary counts for two.
        let relay_wide = cap + 2;
        anyhow::ensure!(self.peaks.visitors <= relay_wide as f64, "the relay had more than {relay_wide} visitors");
        anyhow::ensure!(t.most_open <= cap, "{} visitors were served at once, over the cap of {cap}", t.most_open);
        anyhow::ensure!(self.by_tunnel > 0.0, "the flood never met the tunnel's cap");
        anyhow::ensure!(self.by_ip > 0.0, "the flood never met the address cap");
        anyhow::ensure!(t.unanswered == 0, "every visitor is served or turned away at once");
        let counted = self.accepted + self.by_tunnel + self.by_ip + self.no_stream;
        let arrived = (t.connected + self.canary.count) as f64;
        anyhow::ensure!(counted == arrived, "{arrived} visitors reached the relay, which counted {counted}");
        let echoed = (t.served + self.canary.count) as f64;
        anyhow::ensure!(self.accepted == echoed, "{} accepted but {echoed} got their echo", self.accepted);
        check_canary(&self.canary)?;
        let peak_growth = self.peaks.rss_kib.saturating_sub(self.baseline_kib);
        anyhow::ensure!(peak_growth < PEAK_GROWTH, "relay memory peaked {peak_growth} KiB over its baseline");
        let lasting = self.settled_kib.saturating_sub(self.baseline_kib);
        anyhow::ensure!(lasting <= LASTING_GROWTH, "relay memory stayed {lasting} KiB over its baseline");
        Ok(())
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What the flood's visitors saw.
#[derive(Default)]
struct Tally {
    connected: usize,
    unconnected: usize,
    served: usize,
    turned_away: usize,
    unanswered: usize,
    most_open: usize,
}

enum Outcome {
    Unconnected,
    Served,
    TurnedAway,
    Unanswered,
}

/// Visitors holding an echo right now, and the most there have been.
#[derive(Default)]
struct Open {
    now: AtomicUsize,
    most: AtomicUsize,
}

/// Sends `ATTEMPTS` visitors at `target`, at most `in_flight` at once.
async fn flood(target: SocketAddr, in_flight: usize) -> anyhow::Result<Tally> {
    let open = Arc::new(Open::default());
    let places = Arc::new(Semaphore::new(in_flight));
    let mut visitors = JoinSet::new();
    let mut tally = Tally::default();
    for i in 0..ATTEMPTS {
        let place = places.clone().acquire_owned().await?;
        let open = open.clone();
        visitors.spawn(async move {
            let _place = place;
            visit(source(i), target, &open).await
        });
        while let Some(done) = visitors.try_join_next() {
            tally.count(done??);
        }
    }
    while let Some(done) = visitors.join_next().await {
        tally.count(done??);
    }
    tally.most_open = open.most.load(Relaxed);
    Ok(tally)
}

impl Tally {
    fn count(&mut self, outcome: Outcome) {
        self.connected += usize::from(!matches!(outcome, Outcome::Unconnected));
        match outcome {
            Outcome::Unconnected => self.unconnected += 1,
            Outcome::Served => self.served += 1,
            Outcome::TurnedAway => self.turned_away += 1,
            Outcome::Unanswered => self.unanswered += 1,
        }
    }
}

fn source(i: usize) -> Ipv4Addr {
    match u8::try_from(i % LIGHT_SOURCES) {
        Ok(light) if i % 3 != 0 => Ipv4Addr::new(127, 0, 0, 3 + light),
        _ => HEAVY,
    }
}

/// One visitor: connects from `source`, sends a byte and sees whether it comes back.
async fn visit(source: Ipv4Addr, target: SocketAddr, open: &Open) -> anyhow::Result<Outcome> {
    let socket = TcpSocket::new_v4()?;
    // Served visitors close first, leaving their source ports in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let mut tcp = match tokio::time::timeout(STEP, socket.connect(target)).await {
        Ok(Ok(tcp)) => tcp,
        // The relay accepted and reset it before the connect call saw it complete.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(Outcome::TurnedAway),
        _ => return Ok(Outcome::Unconnected),
    };
    // A turned-away visitor may be reset before it writes; the read below tells.
    tcp.write_all(b"x").await.ok();
    let mut byte = [0u8; 1];
    match tokio::time::timeout(STEP, tcp.read(&mut byte)).await {
        Ok(Ok(1)) => {
            anyhow::ensure!(byte == *b"x", "the echo changed the byte");
            let now = open.now.fetch_add(1, Relaxed) + 1;
            open.most.fetch_max(now, Relaxed);
            tokio::time::sleep(HOLD).await;
            // Counted out before the close, so the count never exceeds what the relay holds.
            open.now.fetch_sub(1, Relaxed);
            Ok(Outcome::Served)
        }
        Ok(_) => Ok(Outcome::TurnedAway),
        Err(_) => Ok(Outcome::Unanswered),
    }
}

/// The most the relay showed while the flood ran.
#[derive(Default)]
struct Peaks {
    visitors: f64,
    rss_kib: u64,
    samples: usize,
}

/// Samples the relay's open visitors and memory until `stop`.
async fn watch_relay(relay: &RelayBinary, stop: &CancellationToken) -> anyhow::Result<Peaks> {
    let mut peaks = Peaks::default();
    let mut pace = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(peaks),
            _ = pace.tick() => {}
        }
        let page = relay.metrics().await?;
        let visitors = sample(&page, "burrow_visitors").context("burrow_visitors")?;
        peaks.visitors = peaks.visitors.max(visitors);
        peaks.rss_kib = peaks.rss_kib.max(relay.process.vm_rss_kib()?);
        peaks.samples += 1;
    }
}

async fn handshake_flood(relay: &RelayBinary, canary: &Canary) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let canary_rounds = canary.run(CANARY_PACE, CANARY_MOST_ROUNDS, stop.clone())?;
    let flood = tokio::spawn(silent_sessions(relay.addr, relay.fingerprint));
    // The newcomer arrives while the relay is demanding Retries.
    relay.until("burrow_handshakes_retried_total", |n| n > 0.0).await?;
    let started = Instant::now();
    let (mut late_agent, late) = relay.agent(echo_server().await?).await?;
    assert_eq!(exchange(late, b"through the flood").await?, b"through the flood");
    let late_seconds = started.elapsed().as_secs_f64();
    let late_links = late_agent.all_links_up().await.context("the new agent's links")?.links_up;
    let silent = tokio::time::timeout(STEP, flood).await.context("silent clients hung")???;
    // Still open: the relay was holding them all when the newcomer came.
    let waiting = silent.sessions.iter().filter(|(_, conn)| conn.close_reason().is_none()).count();
    stop.cancel();
    let rounds = canary_rounds.await??;
    let retried = counter(&relay.metrics().await?, "burrow_handshakes_retried_total");
    let late_retried = retried - (SILENT_CLIENTS - RETRY_ABOVE) as f64;

    eprintln!("handshake flood: {SILENT_CLIENTS} QUIC clients that never send a Hello, Retry above {RETRY_ABOVE}");
    eprintln!(
        "  {} through their handshake in {:.2} s, {HANDSHAKING_AT_ONCE} at a time",
        silent.sessions.len(),
        silent.seconds
    );
    eprintln!("  {} stalled in their handshake", silent.stalled);
    eprintln!("  {retried} asked for a Retry; {waiting} still waiting when a new agent served its first visitor");
    eprintln!("  new agent started and served a visitor in {late_seconds:.2} s");
    eprintln!("  {late_links} links of the new agent up, {late_retried} of them asked for a Retry");
    eprintln!("  canary: {} round trips, slowest {:.1} ms", rounds.count, millis(rounds.slowest));
    anyhow::ensure!(retried > 0.0, "the relay never asked for a Retry");
    // A stall here once came from connection IDs colliding with Retry IDs (see relay/src/cid.rs).
    anyhow::ensure!(silent.stalled == 0, "{} handshakes stalled", silent.stalled);
    anyhow::ensure!(waiting == silent.sessions.len(), "only {waiting} silent clients were still waiting");
    anyhow::ensure!(late_seconds < 5.0, "the new agent took {late_seconds:.1} s");
    // Every silent client past the threshold proves its address with a Retry, and so does
    // the new agent's first link, which has nothing else to prove it with. Its joined links,
    // dialed from the same address, present the address tokens the relay gave the first
    // (NEW_TOKEN frames), which prove it as well: on a quiet machine only those beyond the
    // tokens are asked, but a token that arrives after its link was dialed is not used.
    let fewest = 1 + (late_links - 1).saturating_sub(TOKENS_PER_CONNECTION);
    anyhow::ensure!(
        (fewest as f64..=late_links as f64).contains(&late_retried),
        "{late_retried} of the new agent's {late_links} links asked for a Retry"
    );
    check_canary(&rounds)
}

/// Clients in their handshake at once. All at once, the flood's own TLS work in this process
/// starved every process on a two-core machine, the canary's included.
const HANDSHAKING_AT_ONCE: usize = 32;
/// A silent client's handshake takes well under a second; past this it has stalled.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);

struct Silent {
    sessions: Vec<(quinn::Endpoint, quinn::Connection)>,
    stalled: usize,
    seconds: f64,
}

/// QUIC clients that complete the handshake and then say nothing, each from its own port and
/// with its own configuration, so none presents an address token another one earned.
async fn silent_sessions(relay: SocketAddr, fingerprint: Fingerprint) -> anyhow::Result<Silent> {
    let started = Instant::now();
    let handshaking = Arc::new(Semaphore::new(HANDSHAKING_AT_ONCE));
    let mut clients = JoinSet::new();
    for i in 0..SILENT_CLIENTS {
        let permit = handshaking.clone().acquire_owned().await?;
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % SILENT_SOURCES) as u8);
        clients.spawn(async move {
            let _permit = permit;
            let transport = transport::agent(Duration::from_secs(10), Duration::from_secs(60));
            let mut endpoint = quinn::Endpoint::client(SocketAddr::from((source, 0)))?;
            endpoint.set_default_client_config(tls::client_config(&Trust::Pinned(fingerprint), transport)?);
            let connecting = endpoint.connect(relay, "localhost")?;
            anyhow::Ok(tokio::time::timeout(HANDSHAKE_LIMIT, connecting).await.ok().transpose()?.map(|c| (endpoint, c)))
        });
    }
    let mut silent = Silent { sessions: Vec::with_capacity(SILENT_CLIENTS), stalled: 0, seconds: 0.0 };
    while let Some(done) = clients.join_next().await {
        match done?? {
            Some(session) => silent.sessions.push(session),
            None => silent.stalled += 1,
        }
    }
    silent.seconds = started.elapsed().as_secs_f64();
    Ok(silent)
}

fn check_canary(rounds: &Rounds) -> anyhow::Result<()> {
    // A handful of rounds at least, so the canary ran while the flood did.
    anyhow::ensure!(rounds.count >= 10, "only {} canary round trips", rounds.count);
    anyhow::ensure!(rounds.slowest < CANARY_LIMIT, "a canary round trip took {:?}", rounds.slowest);
    Ok(())
}
