//! A UDP tunnel's datagrams on the link: the flow id as a QUIC variable-length integer
//! (RFC 9000 section 16, as RFC 9298 prefixes its context id), then the visitor's payload
//! unchanged. One visitor packet is one link datagram: nothing is fragmented, so a payload
//! that does not fit the link's datagram size now is dropped by the sender and counted.
//!
//! Flow ids start at 1, are given by the relay per session and never reused within it.
//! Flow 0 is no flow: the relay's liveness probe is a one-byte datagram `0`, which the agent
//! reads and ignores.

use bytes::{BufMut, Bytes, BytesMut};

use crate::link::{DatagramError, Link, LinkError};

/// The largest flow id a varint holds.
pub const MAX_FLOW: u64 = (1 << 62) - 1;

/// Why a datagram is not a flow's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DatagramDecodeError {
    #[error("the datagram ends inside its flow id")]
    Truncated,
    #[error("flow 0 is no flow (a liveness probe)")]
    NoFlow,
}

/// How many bytes flow id `flow` takes before the payload.
pub fn header_len(flow: u64) -> usize {
    match flow {
        0..64 => 1,
        64..16_384 => 2,
        16_384..1_073_741_824 => 4,
        _ => 8,
    }
}

/// The largest payload of flow `flow` that fits a link datagram of `max_datagram` bytes.
pub fn max_payload(max_datagram: usize, flow: u64) -> usize {
    max_datagram.saturating_sub(header_len(flow))
}

/// The payload room shown to people (console, admin API): that of flows 64 to 16,383, whose
/// ids take two bytes; the session's first 63 flows have one byte more.
pub fn typical_max_payload(max_datagram: usize) -> usize {
    max_payload(max_datagram, 64)
}

/// The largest payload of flow `flow` that fits a datagram of `link` now; 0 when the link
/// takes none. It changes with the path's MTU.
pub fn room_on(link: &impl Link, flow: u64) -> usize {
    link.max_datagram_size().map_or(0, |size| max_payload(size, flow))
}

/// Why a flow's packet did not go out on the link.
#[derive(Debug)]
pub enum NotSent {
    /// Larger than the link's datagram room now: dropped whole, never fragmented.
    Oversize,
    /// The link is gone; so is the flow's stream.
    Lost(LinkError),
}

/// Sends one packet of flow `flow` as one datagram of `link`, or says why not. Both ends send
/// their flows' packets through here, and count the outcome each its own way.
pub fn send_on(link: &impl Link, flow: u64, payload: &[u8]) -> Result<(), NotSent> {
    if payload.len() > room_on(link, flow) {
        return Err(NotSent::Oversize);
    }
    link.send_datagram(encode(flow, payload)).map_err(|e| match e {
        // The path's datagram size shrank since it was read.
        DatagramError::TooLarge | DatagramError::Unsupported => NotSent::Oversize,
        DatagramError::Lost(lost) => NotSent::Lost(lost),
    })
}

/// The link datagram carrying `payload` for flow `flow`.
///
/// # Panics
/// If `flow` is over [`MAX_FLOW`]; the relay never gives out such an id.
pub fn encode(flow: u64, payload: &[u8]) -> Bytes {
    assert!(flow <= MAX_FLOW, "flow id {flow} does not fit a varint");
    let len = header_len(flow);
    let mut out = BytesMut::with_capacity(len + payload.len());
    match len {
        1 => out.put_u8(flow as u8),
        2 => out.put_u16(0x4000 | flow as u16),
        4 => out.put_u32(0x8000_0000 | flow as u32),
        _ => out.put_u64(0xc000_0000_0000_0000 | flow),
    }
    out.put_slice(payload);
    out.freeze()
}

/// The flow id and the payload of a link datagram; the payload shares its bytes.
pub fn decode(datagram: &Bytes) -> Result<(u64, Bytes), DatagramDecodeError> {
    let first = *datagram.first().ok_or(DatagramDecodeError::Truncated)?;
    let len = 1usize << (first >> 6);
    let head = datagram.get(..len).ok_or(DatagramDecodeError::Truncated)?;
    let flow = head[1..].iter().fold(u64::from(first & 0x3f), |id, byte| (id << 8) | u64::from(*byte));
    if flow == 0 {
        return Err(DatagramDecodeError::NoFlow);
    }
    Ok((flow, datagram.slice(len..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_varint_length_round_trips() {
        for flow in [1, 63, 64, 16_383, 16_384, 1_073_741_823, 1_073_741_824, MAX_FLOW] {
            let datagram = encode(flow, b"payload");
            assert_eq!(datagram.len(), header_len(flow) + 7, "flow {flow}");
            assert_eq!(decode(&datagram), Ok((flow, Bytes::from_static(b"payload"))), "flow {flow}");
        }
        assert_eq!(decode(&encode(5, b"")), Ok((5, Bytes::new())));
    }

    #[test]
    fn the_wire_form_is_rfc_9000s_varint() {
        // RFC 9000 appendix A.1's examples.
        assert_eq!(&encode(151_288_809_941_952_652, b"")[..], &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]);
        assert_eq!(&encode(494_878_333, b"")[..], &[0x9d, 0x7f, 0x3e, 0x7d]);
        assert_eq!(&encode(15_293, b"")[..], &[0x7b, 0xbd]);
        assert_eq!(&encode(37, b"")[..], &[0x25]);
    }

    #[test]
    fn probes_and_truncated_datagrams_are_refused() {
        assert_eq!(decode(&Bytes::from_static(&[0])), Err(DatagramDecodeError::NoFlow));
        assert_eq!(decode(&Bytes::new()), Err(DatagramDecodeError::Truncated));
        assert_eq!(decode(&Bytes::from_static(&[0x40])), Err(DatagramDecodeError::Truncated));
        assert_eq!(decode(&Bytes::from_static(&[0xc0, 0, 0])), Err(DatagramDecodeError::Truncated));
    }

    #[test]
    fn the_payload_room_is_the_datagram_less_the_flow_id() {
        assert_eq!(max_payload(1200, 1), 1199);
        assert_eq!(max_payload(1200, 100), 1198);
        assert_eq!(max_payload(1, 100), 0);
    }
}
