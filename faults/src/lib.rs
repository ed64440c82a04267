//! burrow's fault suite: the compiled relay and agent on a simulated internet built from
//! network namespaces (`netsim.sh`): a VPS, an outside client, a home NAT router and a laptop
//! behind it, with outages, NAT rebinding, NAT expiry, delay, loss and bandwidth caps.
//!
//! Run with `scripts/test` (as root; it installs what the simulation needs), or alone with
//! `cargo build --workspace --bins && cargo test -p burrow-faults -- --test-threads 8`.
//! Without root or the network tools every scenario skips and says why.

pub mod datagrams;
pub mod fleet;
pub mod process;
pub mod sim;
pub mod traffic;
