//! QUIC transport settings for each end of a session.

use std::time::Duration;

use quinn::{TransportConfig, VarInt};

/// Streams the relay may have open to one agent at once, at most. `open_bi` past the limit
/// would stall a visitor silently.
pub const AGENT_MAX_STREAMS: u32 = 4096;

/// Streams the agent allows at first; it raises the limit as visitors come (see
/// [`next_stream_limit`]). Every permitted stream costs more than a map entry: quinn keeps a
/// slot for each, and recycles a finished stream's receive state into the next free slot
/// with the buffer capacity it grew to (up to about 100 KiB after a fast transfer). With all
/// 4096 permitted from the start, an agent serving one bulk transfer after another grew by
/// about 55 KiB per transfer, toward hundreds of MiB. Permitting only what visitors use
/// bounds that by the session's peak concurrency.
pub const AGENT_INITIAL_STREAMS: u32 = 64;

/// The stream limit to announce when `open` streams are running under `limit`: doubled once
/// half are in use, up to [`AGENT_MAX_STREAMS`]; `None` to keep it.
pub fn next_stream_limit(open: usize, limit: u32) -> Option<u32> {
    let half_used = open.saturating_mul(2) >= limit as usize;
    (half_used && limit < AGENT_MAX_STREAMS).then(|| limit.saturating_mul(2).min(AGENT_MAX_STREAMS))
}

/// Bytes in flight that one session must be able to carry to fill its path: 1 Gbit/s over a
/// 50 ms round trip (6.25 MB), rounded up. A receive window below this caps the session's
/// throughput on long paths whatever the congestion window allows.
const SESSION_BDP: u32 = 8 * 1024 * 1024;

/// Per session, shared by all its streams: everything a session can make its receiver
/// buffer, whatever its visitors do. Credit returns only as the application reads, so it is
/// also the session's memory budget: at quinn's over-allocation of up to 2.5x buffered bytes
/// this keeps a relay session near 20 MiB even when every visitor stalls, where 256 MiB
/// before let 50 bulk downloads take the relay past 100 MiB. One bandwidth-delay product is
/// enough: a session drains its buffers at least as fast as its path fills them, unless a
/// visitor stops reading, which is what [`STREAM_RECEIVE_WINDOW`] is for.
pub(crate) const CONNECTION_RECEIVE_WINDOW: u32 = SESSION_BDP;

/// Per stream: an eighth of the session's window, so visitors that stop reading pin at most
/// that each and seven of them still leave the others room (the write deadline then cuts
/// them off). One stream alone moves a window per round trip: about 170 Mbit/s at 50 ms,
/// 8 Gbit/s at 1 ms; several streams share the session's full window.
pub(crate) const STREAM_RECEIVE_WINDOW: u32 = CONNECTION_RECEIVE_WINDOW / 8;

/// Data a session may hold unacknowledged or unsent, across all its streams. Every stream
/// waits for room here: with quinn's default (10 MB) a few bulk visitors on a slow path fill
/// it, and an interactive visitor's next keystroke then waits seconds for room, although
/// once written it is sent at once (streams take turns). 64 MiB lets many streams fill
/// their windows before anyone waits, while still bounding what one session can buffer.
const SEND_WINDOW: u64 = 64 * 1024 * 1024;

/// The agent's side: it keeps the NAT mapping alive and accepts the relay's streams.
pub fn agent(keep_alive: Duration, idle_timeout: Duration) -> TransportConfig {
    let mut t = common(idle_timeout);
    t.keep_alive_interval(Some(keep_alive));
    t.max_concurrent_bidi_streams(VarInt::from_u32(AGENT_INITIAL_STREAMS));
    t.datagram_receive_buffer_size(Some(AGENT_DATAGRAM_BUFFER));
    t
}

/// Bytes of UDP tunnel datagrams a session may hold unread at the relay: about 180 of the
/// largest, some 7 ms at 200 Mbit/s, while one task per link reads them as they come.
/// quinn drops the oldest past this, counted by nobody: the reader keeping up is what keeps
/// it empty. The size is advertised to every connection at its handshake, so a connection
/// that never authenticates can fill it too; it counts in [`SESSION_BUDGET_PRE_AUTH`].
pub const RELAY_DATAGRAM_BUFFER: Option<usize> = Some(256 * 1024);

/// Datagrams the agent holds unread: its UDP flows' packets from visitors, and the relay's
/// one-byte liveness probes, read and ignored. Larger than the relay's because an agent's
/// one reader feeds every flow of the session.
pub const AGENT_DATAGRAM_BUFFER: usize = 1024 * 1024;

/// What a session may make the relay buffer before its Hello is answered: one largest Hello
/// with slack. The window is raised to the full one after the Welcome
/// ([`crate::link::Link::allow_receive`]).
pub const PRE_AUTH_RECEIVE_WINDOW: u32 = 128 * 1024;

/// The most a connection that never authenticates costs in buffers: its receive window,
/// the TLS handshake's crypto buffer (quinn's default 16 KiB) and one control frame being
/// decoded.
pub const SESSION_BUDGET_PRE_AUTH: usize = PRE_AUTH_RECEIVE_WINDOW as usize
    + 16 * 1024
    + crate::protocol::MAX_CONTROL_FRAME
    + match RELAY_DATAGRAM_BUFFER {
        Some(bytes) => bytes,
        None => 0,
    };

/// The receive window of a welcomed session.
pub const SESSION_RECEIVE_WINDOW: u64 = CONNECTION_RECEIVE_WINDOW as u64;

/// The relay's side: an agent may open only its control stream, and may send little until
/// it is welcomed.
pub fn relay(idle_timeout: Duration) -> TransportConfig {
    let mut t = common(idle_timeout);
    t.max_concurrent_bidi_streams(VarInt::from_u32(1));
    t.datagram_receive_buffer_size(RELAY_DATAGRAM_BUFFER);
    t.receive_window(VarInt::from_u32(PRE_AUTH_RECEIVE_WINDOW));
    t
}

/// Congestion window a session starts with. One session carries many visitors, whose new
/// connections arrive in bursts that never grow the window (it grows only when full), and
/// quinn paces sends at window / RTT: with the usual 10 packets, 50 visitors' first
/// responses took most of an extra round trip to leave.
const INITIAL_WINDOW: u64 = 128 * 1024;

fn common(idle_timeout: Duration) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.congestion_controller_factory(std::sync::Arc::new(crate::congestion::TolerantCubicConfig::new(INITIAL_WINDOW)));
    t.max_idle_timeout(Some(idle_timeout.try_into().unwrap_or(quinn::IdleTimeout::from(VarInt::MAX))));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t.send_window(SEND_WINDOW);
    t
}

/// Socket buffer size of every QUIC endpoint, relay and agent alike. At Linux's 208 KiB
/// default a fast bulk transfer drops packets in the kernel before quinn reads them, and
/// each drop costs the sender a retransmission and a halved window.
const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// Raises `socket`'s buffers to [`UDP_BUFFER`] before quinn takes it; a kernel that grants
/// less is said once, with the setting that caps it.
pub fn size_udp_buffers(socket: &std::net::UdpSocket) -> std::io::Result<()> {
    let state = quinn::udp::UdpSocketState::new(socket.into())?;
    state.set_recv_buffer_size(socket.into(), UDP_BUFFER).ok();
    state.set_send_buffer_size(socket.into(), UDP_BUFFER).ok();
    warn_if_capped("receive", state.recv_buffer_size(socket.into())?, "net.core.rmem_max");
    warn_if_capped("send", state.send_buffer_size(socket.into())?, "net.core.wmem_max");
    Ok(())
}

fn warn_if_capped(which: &str, got: usize, sysctl: &str) {
    // Linux grants double the requested size (half is bookkeeping) and reports that.
    let granted_in_full = if cfg!(target_os = "linux") { 2 * UDP_BUFFER } else { UDP_BUFFER };
    if got < granted_in_full {
        tracing::warn!(
            wanted = UDP_BUFFER,
            got,
            "UDP {which} buffer capped by the kernel; raise {sysctl} for fast tunnels"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The session's receive window is its memory budget and must still fill a fast long
    /// path; stream windows must leave room when several visitors stall.
    #[test]
    fn the_session_window_is_one_path_bdp_and_holds_eight_streams() {
        let bdp_1_gbit_50_ms = 1_000_000_000 / 8 / 20;
        assert!(SESSION_RECEIVE_WINDOW >= bdp_1_gbit_50_ms);
        assert!(SESSION_RECEIVE_WINDOW <= 2 * bdp_1_gbit_50_ms, "the budget bounds relay memory");
        assert_eq!(SESSION_RECEIVE_WINDOW, 8 * u64::from(STREAM_RECEIVE_WINDOW));
    }

    #[test]
    fn the_stream_limit_doubles_at_half_use_up_to_the_ceiling() {
        assert_eq!(next_stream_limit(31, 64), None);
        assert_eq!(next_stream_limit(32, 64), Some(128));
        assert_eq!(next_stream_limit(3000, 2048), Some(AGENT_MAX_STREAMS));
        assert_eq!(next_stream_limit(4096, AGENT_MAX_STREAMS), None);
    }

    /// A client learns the datagram size the relay takes: room for a UDP tunnel's packets,
    /// bounded by the buffer every connection may fill.
    #[tokio::test]
    async fn the_relay_advertises_its_datagram_buffer() -> anyhow::Result<()> {
        use crate::tls;
        let signed = tls::self_signed(&["relay.test".into()])?;
        let identity = tls::Identity::from_pem(signed.cert_pem.as_bytes(), signed.key_pem.as_bytes())?;
        let server_config = tls::server_config(identity, relay(Duration::from_secs(10)))?;
        let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        client.set_default_client_config(tls::client_config(&tls::Trust::Insecure, TransportConfig::default())?);
        let accepting =
            async { Ok::<_, anyhow::Error>(server.accept().await.ok_or(anyhow::anyhow!("no incoming"))?.await?) };
        let connecting = async { Ok::<_, anyhow::Error>(client.connect(server.local_addr()?, "relay.test")?.await?) };
        let (accepted, connected) =
            tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(accepting, connecting) }).await?;
        let (_accepted, conn) = (accepted?, connected?);
        let size = conn.max_datagram_size().unwrap_or(0);
        assert!((1100..1500).contains(&size), "a path's datagram, not the buffer, bounds the size: {size}");
        conn.send_datagram(bytes::Bytes::from(vec![1u8; size]))?;
        Ok(())
    }
}
