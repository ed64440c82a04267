//! Is an agent's session still alive? Asked before a newer session may take over its tunnel,
//! so a crashed agent's successor gets the port back quickly while a live agent is never
//! knocked off by a second one using the same token and tunnel name.

use std::time::Duration;

use burrow_common::link::{DatagramError, Link};

/// A live agent acknowledges within its ACK delay (25 ms) plus a round trip.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
const POLL: Duration = Duration::from_millis(10);

/// Asks the agent for an answer (a QUIC ACK, an HTTP/2 PING) and waits for anything back.
pub(crate) async fn answers(link: &impl Link) -> bool {
    if link.close_reason().is_some() {
        return false;
    }
    let before = link.path().received_packets;
    match link.elicit_answer() {
        Ok(()) => {}
        Err(DatagramError::Lost(_)) => return false,
        // Without datagram support we cannot tell; treat the holder as alive.
        Err(DatagramError::TooLarge | DatagramError::Unsupported) => return true,
    }
    let heard = async {
        let mut poll = tokio::time::interval(POLL);
        while link.path().received_packets == before && link.close_reason().is_none() {
            poll.tick().await;
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, heard).await.is_ok() && link.close_reason().is_none()
}
