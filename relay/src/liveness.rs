//! Is an agent's session still alive? Asked before a newer session may take over its tunnel,
//! so a crashed agent's successor gets the port back quickly while a live agent is never
//! knocked off by a second one using the same token and tunnel name.

use std::time::Duration;

use bytes::Bytes;

/// A live agent acknowledges within its ACK delay (25 ms) plus a round trip.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
const POLL: Duration = Duration::from_millis(10);

/// Sends an ack-eliciting DATAGRAM and waits for any packet back from the peer.
pub(crate) async fn answers(conn: &quinn::Connection) -> bool {
    if conn.close_reason().is_some() {
        return false;
    }
    let before = conn.stats().udp_rx.datagrams;
    if conn.send_datagram(Bytes::from_static(&[0])).is_err() {
        // Without datagram support we cannot tell; treat the holder as alive.
        return true;
    }
    let heard = async {
        let mut poll = tokio::time::interval(POLL);
        while conn.stats().udp_rx.datagrams == before && conn.close_reason().is_none() {
            poll.tick().await;
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, heard).await.is_ok() && conn.close_reason().is_none()
}
