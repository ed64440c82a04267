//! QUIC transport settings for each end of a session.

use std::time::Duration;

use quinn::{TransportConfig, VarInt};

/// Streams the relay may have open to one agent at once. A permitted but unused stream costs
/// only a map entry, and `open_bi` past the limit would stall a visitor silently.
pub const AGENT_MAX_STREAMS: u32 = 4096;

/// Per stream: enough for fast single transfers on ordinary paths.
const STREAM_RECEIVE_WINDOW: u32 = 2 * 1024 * 1024;
/// Per session. Credit returns only as the application reads, so a visitor that stops
/// reading pins one stream window; the session stalls for everyone once the stalled windows
/// fill this. A large multiple keeps that out of reach of a few slow or hostile visitors,
/// while still bounding what one session can buffer (the default is unbounded).
const CONNECTION_RECEIVE_WINDOW: u32 = 128 * STREAM_RECEIVE_WINDOW;

/// Data a session may hold unacknowledged or unsent, across all its streams. Every stream
/// waits for room here: with quinn's default (10 MB) a few bulk visitors on a slow path fill
/// it, and an interactive visitor's next keystroke then waits seconds for room, although
/// once written it is sent at once (streams take turns). This lets 32 streams fill their
/// windows before anyone waits, while still bounding what one session can buffer.
const SEND_WINDOW: u64 = 32 * STREAM_RECEIVE_WINDOW as u64;

/// The agent's side: it keeps the NAT mapping alive and accepts the relay's streams.
pub fn agent(keep_alive: Duration, idle_timeout: Duration) -> TransportConfig {
    let mut t = common(idle_timeout);
    t.keep_alive_interval(Some(keep_alive));
    t.max_concurrent_bidi_streams(VarInt::from_u32(AGENT_MAX_STREAMS));
    t
}

/// The relay's side: an agent may open only its control stream.
pub fn relay(idle_timeout: Duration) -> TransportConfig {
    let mut t = common(idle_timeout);
    t.max_concurrent_bidi_streams(VarInt::from_u32(1));
    t
}

/// Congestion window a session starts with. One session carries many visitors, whose new
/// connections arrive in bursts that never grow the window (it grows only when full), and
/// quinn paces sends at window / RTT: with the usual 10 packets, 50 visitors' first
/// responses took most of an extra round trip to leave.
const INITIAL_WINDOW: u64 = 128 * 1024;

fn common(idle_timeout: Duration) -> TransportConfig {
    let mut t = TransportConfig::default();
    let mut congestion = quinn::congestion::CubicConfig::default();
    congestion.initial_window(INITIAL_WINDOW);
    t.congestion_controller_factory(std::sync::Arc::new(congestion));
    t.max_idle_timeout(Some(idle_timeout.try_into().unwrap_or(quinn::IdleTimeout::from(VarInt::MAX))));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t.send_window(SEND_WINDOW);
    t
}
