//! The wire protocol: what relay and agent say to each other, in which order, with which caps
//! and timeouts.
//!
//! The whole exchange, on one [`crate::link::Link`]:
//! 1. The agent opens the **control stream** and sends [`LinkOpening::Hello`] (its token and
//!    tunnels).
//! 2. The relay answers [`ServerMsg::Welcome`] (the granted tunnels, each with an id, and a
//!    join ticket with how many links the session may have) or
//!    [`ServerMsg::Refused`], after which it closes the link with
//!    [`crate::CloseCode::Refused`].
//! 3. For as long as the session lasts the control stream stays open: the agent may send
//!    [`AgentMsg::Update`] (its config changed) and the relay answers each with
//!    [`ServerMsg::Updated`].
//! 4. For every visitor the relay opens a stream, writes a [`StreamHeader`] (tunnel id and
//!    visitor address) and the visitor's bytes right behind it; the agent reads the header and
//!    carries the rest to the tunnel's local target.
//!
//! 5. For every UDP flow (one visitor address of a UDP tunnel) the relay opens a stream whose
//!    header also names the flow; the flow's packets then cross both ways as datagrams
//!    (see [`datagram`]) on that link, and the stream's end is the flow's end.
//!
//! Each further link of the session opens its control stream with [`LinkOpening::Join`] and
//! the ticket; the relay answers [`ServerMsg::Joined`] or refuses, and from then on opens
//! visitors' streams on it as on the first.
//!
//! [`messages`] holds the types, [`frame`] their one framing and [`conversation`] the functions
//! each end calls for each step above: callers say what to send, never how.

pub mod conversation;
pub mod datagram;
pub mod frame;
pub mod messages;

pub use self::{
    frame::{FrameError, read_msg, write_msg},
    messages::{
        AgentMsg, FleetMember, Granted, Hello, HttpAccess, JoinTicket, LinkOpening, PublicName, Refusal, ServerMsg,
        StreamHeader, TunnelKind, TunnelSpec, Welcome,
    },
};

/// The QUIC ALPN id; its suffix is the protocol version, so mismatched peers fail in the TLS
/// handshake with a clear "no application protocol" error instead of misreading frames.
pub const ALPN: &[u8] = b"burrow/6";

/// Version carried in [`Hello`], for changes that stay wire-compatible within one ALPN; it
/// starts again at 1 with each ALPN.
pub const PROTOCOL_VERSION: u32 = 1;

/// The relay's QUIC port when an address names none.
pub const DEFAULT_RELAY_PORT: u16 = 4443;

/// Token and tunnel names: 1-64 letters, digits, `-`, `_` or `.`; they appear in file
/// names, logs and metrics labels.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What [`is_valid_name`] accepts, for error messages.
pub const VALID_NAME: &str = "1-64 letters, digits, '-', '_' or '.'";

/// Shortest basic-auth password a tunnel may set: the relay refuses a shorter one, since a
/// tunnel's password faces every stranger who learns its URL.
pub const MIN_BASIC_AUTH_PASSWORD: usize = 12;

/// Largest control-stream frame (Hello, Welcome, Refused, updates and their answers).
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;

/// Largest stream header frame.
pub const MAX_HEADER_FRAME: usize = 512;
