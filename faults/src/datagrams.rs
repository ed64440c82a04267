//! A paced stream of numbered datagrams from one client socket through a UDP tunnel to an
//! echo, and when each one's echo came back: loss, round-trip times, and when replies
//! resume after a fault. The same messages can go over a TCP tunnel, for comparison.

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream, UdpSocket,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::JoinHandle,
};

/// Sequence number and send time (microseconds after the probe started), padded to a small
/// packet like a game's or a voice call's.
const PAYLOAD: usize = 64;

/// One datagram of the probe.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub at: Instant,
    /// Its echo's round trip, if the echo came back.
    pub rtt: Option<Duration>,
}

#[derive(Default)]
struct Record {
    sent: Vec<Sent>,
    /// Echoes of a datagram already echoed: a datagram tunnel never duplicates.
    duplicates: u64,
    send_errors: u64,
}

pub struct DatagramProbe {
    record: Arc<Mutex<Record>>,
    /// Bumped on every send and every echo, so waiters look again.
    changes: watch::Receiver<u64>,
    sending: JoinHandle<()>,
    receiving: JoinHandle<()>,
}

impl DatagramProbe {
    /// Sends one datagram every `every` on `socket` (connected to the tunnel's public
    /// address), `count` in all, and times their echoes.
    pub fn start(socket: UdpSocket, every: Duration, count: usize) -> Self {
        let socket = Arc::new(socket);
        Self::spawn(Sink::Udp(socket.clone()), Source::Udp(socket), every, count)
    }

    /// The same messages, one every `every`, on a TCP connection through a TCP tunnel to an
    /// echo: each arrives, but one lost on the way holds up those behind it.
    pub fn over_tcp(tcp: TcpStream, every: Duration, count: usize) -> std::io::Result<Self> {
        tcp.set_nodelay(true)?;
        let (read, write) = tcp.into_split();
        Ok(Self::spawn(Sink::Tcp(write), Source::Tcp(read), every, count))
    }

    fn spawn(sink: Sink, source: Source, every: Duration, count: usize) -> Self {
        let record = Arc::new(Mutex::new(Record::default()));
        let (changed, changes) = watch::channel(0u64);
        let changed = Arc::new(changed);
        let started = Instant::now();
        let sending = tokio::spawn(send(sink, record.clone(), changed.clone(), (started, every, count)));
        let receiving = tokio::spawn(receive(source, record.clone(), changed, started));
        Self { record, changes, sending, receiving }
    }

    /// Stops sending; echoes still in flight are still timed.
    pub fn stop_sending(&self) {
        self.sending.abort();
    }

    /// Every datagram sent so far.
    pub fn sent(&self) -> Vec<Sent> {
        lock(&self.record).sent.clone()
    }

    pub fn duplicates(&self) -> u64 {
        lock(&self.record).duplicates
    }

    pub fn send_errors(&self) -> u64 {
        lock(&self.record).send_errors
    }

    /// Waits, up to `within`, until `ready` finds what it looks for in the datagrams sent.
    pub async fn until<T>(&self, within: Duration, mut ready: impl FnMut(&[Sent]) -> Option<T>) -> anyhow::Result<T> {
        let mut changes = self.changes.clone();
        let waiting = async {
            loop {
                changes.borrow_and_update();
                if let Some(found) = ready(&lock(&self.record).sent) {
                    return anyhow::Ok(found);
                }
                changes.changed().await?;
            }
        };
        tokio::time::timeout(within, waiting).await.map_err(|_| anyhow::anyhow!("not within {within:?}"))?
    }

    /// When the first echo of a datagram sent at or after `after` arrived, up to `within`
    /// after the call.
    pub async fn first_echo_of_one_sent_after(&self, after: Instant, within: Duration) -> anyhow::Result<Instant> {
        self.until(within, |sent| sent.iter().filter(|s| s.at >= after).filter_map(|s| Some(s.at + s.rtt?)).min()).await
    }

    /// Waits until `count` datagrams have been sent at or after `from`.
    pub async fn sent_after(&self, from: Instant, count: usize, within: Duration) -> anyhow::Result<()> {
        self.until(within, |sent| (sent.iter().filter(|s| s.at >= from).count() >= count).then_some(())).await
    }

    /// Waits until every datagram sent has its echo, or `window` has passed: echoes later
    /// than that are as good as lost.
    pub async fn settle(&self, window: Duration) {
        let all_back = self.until(window, |sent| sent.iter().all(|s| s.rtt.is_some()).then_some(()));
        all_back.await.ok();
    }
}

impl Drop for DatagramProbe {
    fn drop(&mut self) {
        self.sending.abort();
        self.receiving.abort();
    }
}

enum Sink {
    Udp(Arc<UdpSocket>),
    Tcp(OwnedWriteHalf),
}

enum Source {
    Udp(Arc<UdpSocket>),
    Tcp(OwnedReadHalf),
}

impl Sink {
    async fn send(&mut self, packet: &[u8; PAYLOAD]) -> std::io::Result<()> {
        match self {
            Sink::Udp(socket) => socket.send(packet).await.map(drop),
            Sink::Tcp(tcp) => tcp.write_all(packet).await,
        }
    }
}

impl Source {
    /// The next echo; `None` once no more can come.
    async fn next(&mut self, packet: &mut [u8; PAYLOAD]) -> Option<()> {
        match self {
            // A datagram socket may report an earlier send's ICMP error here: read on.
            Source::Udp(socket) => loop {
                if let Ok(len) = socket.recv(packet).await
                    && len == PAYLOAD
                {
                    return Some(());
                }
            },
            Source::Tcp(tcp) => tcp.read_exact(packet).await.ok().map(drop),
        }
    }
}

async fn send(
    mut sink: Sink,
    record: Arc<Mutex<Record>>,
    changed: Arc<watch::Sender<u64>>,
    (started, every, count): (Instant, Duration, usize),
) {
    let mut tick = tokio::time::interval(every);
    // A stalled sender resumes its pace rather than catching up in a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut packet = [0u8; PAYLOAD];
    for seq in 0..count as u64 {
        tick.tick().await;
        let at = Instant::now();
        let since_start = u64::try_from(at.duration_since(started).as_micros()).unwrap_or(u64::MAX);
        packet[..8].copy_from_slice(&seq.to_be_bytes());
        packet[8..16].copy_from_slice(&since_start.to_be_bytes());
        lock(&record).sent.push(Sent { at, rtt: None });
        if sink.send(&packet).await.is_err() {
            lock(&record).send_errors += 1;
        }
        changed.send_modify(|n| *n += 1);
    }
}

async fn receive(mut source: Source, record: Arc<Mutex<Record>>, changed: Arc<watch::Sender<u64>>, started: Instant) {
    let mut packet = [0u8; PAYLOAD];
    while source.next(&mut packet).await.is_some() {
        let arrived = Instant::now();
        let field = |at: usize| u64::from_be_bytes(packet[at..at + 8].try_into().unwrap_or_default());
        let (seq, since_start) = (field(0), Duration::from_micros(field(8)));
        let rtt = arrived.saturating_duration_since(started + since_start);
        let mut record = lock(&record);
        match usize::try_from(seq).ok().and_then(|seq| record.sent.get_mut(seq)) {
            Some(Sent { rtt: Some(_), .. }) => record.duplicates += 1,
            Some(sent) => sent.rtt = Some(rtt),
            None => {}
        }
        drop(record);
        changed.send_modify(|n| *n += 1);
    }
}

fn lock(record: &Mutex<Record>) -> MutexGuard<'_, Record> {
    record.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Loss and round-trip times of some of the probe's datagrams.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub sent: usize,
    pub echoed: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// How much later than both of its nearest echoed neighbours in sending order the most
    /// isolated echo came. A stall of the machine or the path delays neighbours alike; a
    /// datagram resent alone stands out by a round trip.
    pub alone: Duration,
}

impl Summary {
    pub fn of<'a>(sent: impl IntoIterator<Item = &'a Sent>) -> Self {
        let sent: Vec<&Sent> = sent.into_iter().collect();
        let mut rtts: Vec<Duration> = sent.iter().filter_map(|s| s.rtt).collect();
        let alone = rtts.windows(3).map(|w| w[1].saturating_sub(w[0].max(w[2]))).max().unwrap_or_default();
        rtts.sort();
        let at = |q: f64| rtts.get(((rtts.len() as f64 * q) as usize).min(rtts.len().saturating_sub(1))).copied();
        let (p50, p99) = (at(0.5).unwrap_or_default(), at(0.99).unwrap_or_default());
        let max = rtts.last().copied().unwrap_or_default();
        Self { sent: sent.len(), echoed: rtts.len(), p50, p99, max, alone }
    }

    pub fn lost(&self) -> usize {
        self.sent - self.echoed
    }

    pub fn loss_percent(&self) -> f64 {
        100.0 * self.lost() as f64 / self.sent.max(1) as f64
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} sent, {} echoed ({:.2} % lost round trip)", self.sent, self.echoed, self.loss_percent())?;
        if self.echoed > 0 {
            write!(f, "; RTT p50 {:.1?}, p99 {:.1?}, max {:.1?}", self.p50, self.p99, self.max)?;
        }
        Ok(())
    }
}
