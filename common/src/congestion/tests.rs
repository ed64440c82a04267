use super::random_loss::{FLOOR_WINDOW, queue_tolerance};
use super::*;

const MTU: u16 = 1200;
const RTT: Duration = Duration::from_millis(50);

/// A bulk sender on a synthetic path: one datagram acknowledged every millisecond, each sent
/// one round trip earlier.
struct Sender {
    now: Instant,
    cc: TolerantCubic,
}

impl Sender {
    fn new() -> Self {
        let now = Instant::now();
        Self { now, cc: TolerantCubic::new(128 * 1024, now, MTU) }
    }

    fn run(&mut self, duration: Duration, rtt: Duration) {
        let until = self.now + duration;
        while self.now < until {
            self.now += Duration::from_millis(1);
            self.cc.acked(self.now, self.now - rtt, u64::from(MTU), false, rtt);
        }
    }

    /// Loses the datagram sent most recently, as loss detection reports it.
    fn lose(&mut self, rtt: Duration) -> (u64, u64) {
        let before = self.cc.window();
        self.cc.lost(self.now, self.now - rtt / 8, false, u64::from(MTU));
        (before, self.cc.window())
    }
}

#[test]
fn a_loss_while_the_round_trip_sits_at_its_floor_keeps_the_window() {
    let mut sender = Sender::new();
    sender.run(Duration::from_secs(2), RTT);
    let (before, after) = sender.lose(RTT);
    assert_eq!(after, before);
    assert_eq!(sender.cc.random_losses(), 1);
}

#[test]
fn a_loss_over_a_standing_queue_cuts_the_window_as_cubic_does() {
    let mut sender = Sender::new();
    sender.run(Duration::from_secs(2), RTT);
    // A queue of 20 ms, more than the tolerance at this floor, for two rounds.
    assert!(queue_tolerance(RTT) < Duration::from_millis(20));
    sender.run(RTT * 3, RTT + Duration::from_millis(20));
    let (before, after) = sender.lose(RTT);
    assert_eq!(after, (before as f64 * 0.7) as u64);
    assert_eq!(sender.cc.random_losses(), 0);
}

#[test]
fn a_queue_within_the_tolerance_still_counts_as_empty() {
    let mut sender = Sender::new();
    sender.run(Duration::from_secs(2), RTT);
    sender.run(RTT * 3, RTT + queue_tolerance(RTT));
    let (before, after) = sender.lose(RTT);
    assert_eq!(after, before);
}

#[test]
fn losses_above_the_rate_cap_cut_the_window_even_at_the_floor() {
    let mut sender = Sender::new();
    sender.run(Duration::from_secs(2), RTT);
    // Two rounds acknowledge 100 datagrams here; the cap is 3 of them, but 4 losses are
    // always allowed.
    let mut cut_at = None;
    for loss in 1..=6 {
        let (before, after) = sender.lose(RTT);
        if after < before {
            cut_at = Some(loss);
            break;
        }
    }
    assert_eq!(cut_at, Some(5), "the first loss past 4 datagrams and 3 % of two rounds' bytes cuts");
}

#[test]
fn slow_start_ends_when_a_standing_queue_appears_not_at_a_random_loss() {
    let mut sender = Sender::new();
    sender.run(Duration::from_millis(500), RTT);
    sender.lose(RTT);
    assert_eq!(sender.cc.cubic.ssthresh(), u64::MAX, "still in slow start after a random loss");
    sender.run(RTT * 3, RTT + Duration::from_millis(20));
    let window = sender.cc.window();
    assert!(sender.cc.cubic.ssthresh() <= window, "slow start ended once the queue showed");
    sender.run(RTT, RTT + Duration::from_millis(20));
    assert!(sender.cc.window() < window + window / 4, "{} after one more round trip", sender.cc.window());
}

#[test]
fn after_a_cut_an_empty_queue_grows_the_window_faster_than_cubic() {
    let grown_over = |rtt_after_cut: Duration| {
        let mut sender = Sender::new();
        sender.run(Duration::from_secs(2), RTT);
        sender.run(RTT * 3, RTT + Duration::from_millis(20));
        sender.lose(RTT);
        let cut = sender.cc.window();
        // Fewer acknowledgements per round than the window holds: only growth is compared.
        sender.run(RTT * 10, rtt_after_cut);
        sender.cc.window() as f64 / cut as f64
    };
    let at_the_floor = grown_over(RTT);
    let over_a_queue = grown_over(RTT + Duration::from_millis(20));
    // 500 acknowledgements of 1200 bytes, an eighth of each added: 75 KB more.
    assert!(at_the_floor > over_a_queue, "{at_the_floor} vs {over_a_queue}");
    assert!(at_the_floor - over_a_queue > 0.02, "{at_the_floor} vs {over_a_queue}");
}

#[test]
fn an_acknowledgement_stamped_early_does_not_lower_the_floor() {
    let mut sender = Sender::new();
    sender.run(Duration::from_secs(2), RTT);
    // A batch stamped with a stale clock: the packet seems to have come back in 37 ms,
    // while the smoothed round trip hardly moves.
    let now = sender.now;
    sender.cc.acked(now, now - Duration::from_millis(37), u64::from(MTU), false, RTT);
    assert_eq!(sender.cc.rtt_floor(), Some(RTT));
    sender.run(RTT * 3, RTT);
    let (before, after) = sender.lose(RTT);
    assert_eq!(after, before);
}

#[test]
fn an_ecn_mark_always_cuts_the_window() {
    let mut sender = Sender::new();
    sender.run(Duration::from_secs(2), RTT);
    let before = sender.cc.window();
    let now = sender.now;
    sender.cc.lost(now, now - RTT / 8, false, 0);
    assert_eq!(sender.cc.window(), (before as f64 * 0.7) as u64);
}

#[test]
fn before_any_round_trip_is_known_a_loss_counts_as_congestion() {
    let mut sender = Sender::new();
    let (before, after) = sender.lose(RTT);
    assert!(after < before);
}

/// The case where quinn's BBR stayed at 0.7 Mbit/s: the round trip grows from 1 ms to 50 ms
/// in the middle of a connection.
#[test]
fn after_persistent_congestion_a_grown_round_trip_is_the_new_floor() {
    let mut sender = Sender::new();
    sender.run(Duration::from_secs(2), Duration::from_millis(1));
    sender.run(RTT * 3, RTT);
    let (before, after) = sender.lose(RTT);
    assert!(after < before, "judged against the old floor, 50 ms is a standing queue");
    let now = sender.now;
    sender.cc.lost(now, now - RTT, true, u64::from(MTU));
    assert_eq!(sender.cc.window(), 2 * u64::from(MTU));
    assert_eq!(sender.cc.rtt_floor(), None);
    sender.run(Duration::from_secs(2), RTT);
    assert_eq!(sender.cc.rtt_floor(), Some(RTT));
    let (before, after) = sender.lose(RTT);
    assert_eq!(after, before);
    assert!(sender.cc.window() > 100 * u64::from(MTU), "the window grew back: {}", sender.cc.window());
}

#[test]
fn without_persistent_congestion_a_grown_round_trip_becomes_the_floor_within_two_windows() {
    let mut sender = Sender::new();
    sender.run(Duration::from_secs(2), Duration::from_millis(1));
    sender.run(FLOOR_WINDOW, RTT);
    assert_eq!(sender.cc.rtt_floor(), Some(Duration::from_millis(1)));
    sender.run(FLOOR_WINDOW, RTT);
    assert_eq!(sender.cc.rtt_floor(), Some(RTT));
    let (before, after) = sender.lose(RTT);
    assert_eq!(after, before);
}

/// Every link, the agent's and the relay's, is built with this controller.
#[tokio::test]
async fn both_ends_of_a_link_use_the_tolerant_controller() -> anyhow::Result<()> {
    use crate::{tls, transport};
    let signed = tls::self_signed(&["relay.test".into()])?;
    let identity = tls::Identity::from_pem(signed.cert_pem.as_bytes(), signed.key_pem.as_bytes())?;
    let server_config = tls::server_config(identity, transport::relay(Duration::from_secs(10)))?;
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let agent = transport::agent(Duration::from_secs(5), Duration::from_secs(10));
    client.set_default_client_config(tls::client_config(&tls::Trust::Insecure, agent)?);
    let accepting =
        async { Ok::<_, anyhow::Error>(server.accept().await.ok_or(anyhow::anyhow!("no incoming"))?.await?) };
    let connecting = async { Ok::<_, anyhow::Error>(client.connect(server.local_addr()?, "relay.test")?.await?) };
    let (accepted, connected) =
        tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(accepting, connecting) }).await?;
    for conn in [accepted?, connected?] {
        assert!(conn.congestion_state().into_any().downcast::<TolerantCubic>().is_ok());
    }
    Ok(())
}
