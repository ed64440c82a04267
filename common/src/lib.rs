//! What the burrow relay and agent must agree on.
//!
//! # Glossary
//! - **relay**: the public server. It accepts agents over QUIC and visitors over TCP.
//! - **agent**: the program next to a local server. It dials the relay and forwards streams
//!   to a local target such as `127.0.0.1:8080`.
//! - **session**: one agent's QUIC connection to the relay.
//! - **tunnel**: one public port on the relay mapped to one local target of an agent.
//! - **visitor**: an outside TCP client connecting to a tunnel's public port.
//! - **stream**: one QUIC bidirectional stream, opened by the relay, carrying one visitor.
//! - **token**: the secret an agent presents; the relay keeps only its hash.
//! - **reservation**: the port a token and tunnel name get back after a reconnect or restart.

pub mod codes;
pub mod config;
pub mod error_page;
pub mod http;
pub mod logging;
pub mod protocol;
pub mod ready;
pub mod reload;
pub mod signal;
pub mod splice;
pub mod stream_io;
pub mod tls;
pub mod transport;
pub mod upgrade;

pub use codes::{CloseCode, StreamCode};
pub use config::{PortRange, Secret};
pub use protocol::{
    ALPN, AgentMsg, Granted, Hello, HttpAccess, Refusal, ServerMsg, StreamHeader, TunnelKind, TunnelSpec,
};
pub use tls::Fingerprint;
