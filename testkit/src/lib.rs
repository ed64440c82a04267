//! What burrow's tests share (linkerd's integration-test crate is the model): a relay and
//! agents in the test's own process ([`in_process`]), the compiled binaries as child
//! processes known by their `--ready-file` ([`processes`]), local servers and probes that
//! send traffic through tunnels ([`probes`], [`http`], [`http_apps`]), readers of what the
//! relay and agent publish ([`admin`], [`inspector`]), and a real ACME server for the
//! relay's certificates ([`pebble`]), and etcd for a fleet of relays ([`etcd`]).
//!
//! The relay's tests (relay/tests), the agent's (agent/tests) and the fault suite (faults/)
//! all use it. Everything binds `127.0.0.1:0`; nothing waits by sleeping.

pub mod admin;
pub mod curl;
mod daemon;
pub mod env_program;
pub mod etcd;
pub mod http;
pub mod http_apps;
pub mod in_process;
pub mod inspector;
pub mod pebble;
pub mod probes;
pub mod processes;
pub mod raw_agent;
pub mod udp_proxy;
pub mod udp_tools;

use std::time::Duration;

pub use admin::{api, get, get_authorized, metrics, sample, settled};
pub use in_process::{TestAgent, TestRelay, public_addr, refusal, relay_config, tunnel};
pub use inspector::{event_where, snapshot_when, start_inspector};
pub use probes::{closed_port, echo_server, exchange, local_server, random_bytes, read_head, round_trip};
pub use udp_proxy::UdpProxy;
pub use udp_tools::{
    DigAnswer, Dnsmasq, Iperf3Server, Iperf3UdpReport, dig, installed, iperf3_udp_client, udp_echo_server,
};

/// Upper bound for any single step; a hang guard, not a synchroniser.
pub const STEP: Duration = Duration::from_secs(20);
