//! What the burrow relay and agent must agree on.
//!
//! # Glossary
//! - **relay**: the public server. It accepts agents' links and visitors' connections.
//! - **agent**: the program next to a local server. It dials the relay and carries the
//!   relay's streams to local targets such as `127.0.0.1:8080`.
//! - **link**: one transport connection between an agent and a relay: a QUIC connection
//!   today, TLS over TCP next; code sees it through [`link::Link`].
//! - **session**: one agent's admitted presence at a relay, from its Hello to its end,
//!   carried by one or more links (one today).
//! - **tunnel**: what an agent exposes through its session: a public TCP or UDP port, or a
//!   name for HTTP or passed-through TLS: a subdomain of the relay's domain, or a custom
//!   hostname (a name of the user's own, pointed at the relay, that its token allows).
//! - **place**: where visitors reach a tunnel: its public port or its hostname.
//! - **claim**: a tunnel's hold on its place; it is serving, parked or reserved.
//! - **park**: keep a lost session's claims, with their visitors waiting, for a while, so its
//!   agent can come back to them.
//! - **handover**: passing a parked claim and its waiting visitors to the session that takes it
//!   back.
//! - **reservation**: the place a token and tunnel name get back after a reconnect or a relay
//!   restart (a reserved claim).
//! - **grant**: what a valid token allows (its name, the ports it may hold); a [`Granted`]
//!   tunnel is one the relay opened for a session, with the id its streams carry.
//! - **route**: where a name's visitors go now: the serving session's link and tunnel id.
//! - **visitor**: an outside client of a tunnel.
//! - **stream**: one bidirectional stream on a link, opened by the relay, carrying one visitor
//!   (a TCP tunnel) or one visitor connection's requests (an HTTP tunnel).
//! - **token**: the secret an agent presents; the relay keeps only its hash.

pub mod codes;
pub mod config;
pub mod congestion;
pub mod deadline;
pub mod error_page;
pub mod http;
pub mod link;
pub mod logging;
pub mod protocol;
pub mod ready;
pub mod reload;
pub mod signal;
pub mod splice;
pub mod stream_io;
pub mod sync;
pub mod tls;
pub mod transport;
pub mod upgrade;

pub use codes::{CloseCode, StreamCode};
pub use config::{PortRange, Secret};
pub use protocol::{
    ALPN, AgentMsg, FleetMember, Granted, Hello, HttpAccess, JoinTicket, LinkOpening, PublicName, Refusal, ServerMsg,
    StreamHeader, TunnelKind, TunnelSpec, Welcome,
};
pub use tls::Fingerprint;
