//! The messages relay and agent exchange, as serde types; [`super::frame`] gives them their
//! bytes and [`super::conversation`] their order.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// First message of a session, sent by the agent on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub token: crate::Secret,
    pub tunnels: Vec<TunnelSpec>,
}

/// The first message on a link's control stream: a Hello opens a session, a Join adds the
/// link to a session another link opened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LinkOpening {
    Hello(Hello),
    Join { ticket: JoinTicket },
}

/// The secret that lets an agent add links to the session it was welcomed into: 32 random
/// bytes, known only to that agent and (as a hash) to the relay.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTicket(pub [u8; 32]);

impl std::fmt::Debug for JoinTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinTicket(<redacted>)")
    }
}

/// One tunnel an agent asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelSpec {
    /// Stable name; with the token it keys the port reservation.
    pub name: String,
    /// The agent's local target, shown in relay logs only.
    pub local: String,
    pub kind: TunnelKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TunnelKind {
    /// A public TCP port: the one asked for, or one the relay picks from its range.
    Tcp { port: Option<u16> },
    /// A name on the relay's shared HTTP and HTTPS ports, TLS ended at the relay; the relay
    /// picks a readable subdomain when none is asked for.
    Http { name: Option<PublicName>, access: HttpAccess },
    /// A name on the relay's shared HTTPS port, routed by SNI with the TLS bytes passed
    /// through untouched: the local server holds the certificate.
    Tls { name: Option<PublicName> },
    /// A public UDP port (from the same range as TCP ports, a separate number space). Each
    /// visitor address is a flow, ended after `flow_idle` quiet (the relay's default when
    /// none is asked for).
    Udp { port: Option<u16>, flow_idle: Option<std::time::Duration> },
}

/// The name an HTTP or TLS tunnel asks to be reached at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PublicName {
    /// One label under the relay's domain: `myapp` for `myapp.DOMAIN`.
    Subdomain(String),
    /// A whole DNS name the user points at the relay (a CNAME), like `app.example.org`;
    /// the relay serves it only to a token allowed it. A name under the relay's own domain
    /// is taken as that subdomain.
    Hostname(String),
}

impl std::fmt::Display for PublicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublicName::Subdomain(name) | PublicName::Hostname(name) => f.write_str(name),
        }
    }
}

/// Who may reach an HTTP tunnel, checked by the relay before a request crosses the tunnel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpAccess {
    /// `USER:PASSWORD` that visitors must present with HTTP basic auth.
    pub basic_auth: Option<crate::Secret>,
    /// Source ranges allowed; empty allows every address not denied.
    pub allow: Vec<ipnet::IpNet>,
    /// Source ranges refused, even when also allowed.
    pub deny: Vec<ipnet::IpNet>,
    /// `Upgrade` protocols (lowercase) that may switch besides `websocket`, which always may;
    /// any other upgrade is forwarded as a plain request, so a visitor cannot smuggle a raw
    /// byte stream past the relay's HTTP handling.
    pub upgrades: Vec<String>,
}

/// The relay's answer to [`Hello`], then to each [`AgentMsg::Update`]; or to a Join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Every requested tunnel is open, in the order of the Hello.
    Welcome(Welcome),
    /// Nothing is open; the relay closes the session with [`crate::CloseCode::Refused`].
    Refused(Refusal),
    /// The update is applied: the removed tunnels are closed, and of the added ones these
    /// are open and these were refused (by tunnel name), each alone.
    Updated { granted: Vec<Granted>, refused: Vec<(String, Refusal)> },
    /// The link carries the session's visitors from now on, beside its other links.
    Joined,
}

/// A session's admission: its tunnels, and how the agent may add links to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Every requested tunnel, in the order of the Hello.
    pub tunnels: Vec<Granted>,
    /// Presented in a Join on each further link.
    pub ticket: JoinTicket,
    /// How many links, this one included, the relay takes for the session.
    pub links: u8,
    /// The other relays of this relay's fleet, where the agent may open a session for the
    /// same tunnels; empty for a relay on its own.
    pub fleet: Vec<FleetMember>,
}

/// One relay of a fleet, as the relay that answers a Hello knows it from the fleet's store.
/// Each runs its own session with the agent and opens the same public places.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FleetMember {
    /// Where agents reach it, `HOST:PORT`: its own address, not a shared load balancer's.
    pub addr: String,
    /// Its certificate's fingerprint (`sha256:...`): an agent that pinned the relay it
    /// dialed pins each member by this, learned over that trusted link.
    pub fingerprint: String,
    /// The failure domain it runs in, if its operator labelled it: an agent with fewer
    /// sessions than relays spreads them across zones first.
    pub zone: Option<String>,
}

/// What the agent sends on the control stream after the Welcome: a change of its tunnels
/// (its config file was edited), applied without touching the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMsg {
    /// Close the tunnels granted with ids `remove`, then open `add`.
    Update { add: Vec<TunnelSpec>, remove: Vec<u32> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    /// Carried in each [`StreamHeader`] for this tunnel.
    pub id: u32,
    pub name: String,
    pub port: u16,
    /// The relay's configured public hostname, if it has one; otherwise the agent shows the
    /// host it dialed.
    pub host: Option<String>,
    /// Where visitors reach an HTTP or TLS tunnel, like `https://myapp.relay.example.com`;
    /// empty for a TCP tunnel, whose address is its host and port.
    pub urls: Vec<String>,
}

/// Why a relay refused a session. Typed so each end words it the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("the relay rejected the token (check --token or BURROW_TOKEN)")]
    BadToken,
    #[error("protocol version {agent} is not supported by this relay (it speaks {relay})")]
    Version { agent: u32, relay: u32 },
    #[error("port {port} is already in use on the relay")]
    PortTaken { port: u16 },
    #[error("port {port} is outside the ports this relay or token allows ({allowed})")]
    PortNotAllowed { port: u16, allowed: String },
    #[error("no free port left in the relay's range {range}")]
    NoFreePort { range: String },
    #[error("too many tunnels in one session: {asked} asked, at most {max} allowed")]
    TooManyTunnels { asked: usize, max: usize },
    #[error("invalid tunnel {name:?}: {why}")]
    BadTunnel { name: String, why: String },
    #[error(
        "another agent with this token is serving tunnel {name:?} right now; stop it, or give this one another --name"
    )]
    TunnelActive { name: String },
    #[error("this token already holds {max} tunnels on the relay, its limit; stop some of them first")]
    TokenTunnelLimit { max: usize },
    #[error("this relay serves no HTTP or TLS tunnels: it was started without --domain")]
    NoDomain,
    #[error("the subdomain {name:?} is held by another agent on this relay; choose another name")]
    SubdomainTaken { name: String },
    /// Nothing is wrong with the Hello, but the relay cannot answer it now: its token store is
    /// unreadable, this address made too many failed attempts, or the relay is full.
    #[error("the relay cannot take this session right now ({why}); retrying")]
    TryLater { why: String },
    #[error("this token already has {max} agent sessions on the relay, its limit; stop some agents first")]
    TokenSessionLimit { max: usize },
    #[error("the subdomain {name:?} is outside the names this token allows ({allowed})")]
    SubdomainNotAllowed { name: String, allowed: String },
    #[error("the relay knows no live session with this join ticket; the session has ended")]
    UnknownSession,
    #[error("this session already has {max} links, the relay's limit (max_links_per_session)")]
    LinkLimit { max: usize },
    #[error("the hostname {name:?} is outside the hostnames token {token:?} allows ({allowed})")]
    HostnameNotAllowed { name: String, token: String, allowed: String },
    #[error("the hostname {name:?} is held by another agent on this relay; choose another name")]
    HostnameTaken { name: String },
}

impl Refusal {
    /// Whether the same Hello may succeed later without the user changing anything.
    pub fn is_transient(&self) -> bool {
        self.is_retryable()
            || matches!(
                self,
                Refusal::PortTaken { .. }
                    | Refusal::NoFreePort { .. }
                    | Refusal::TunnelActive { .. }
                    | Refusal::TokenSessionLimit { .. }
            )
    }

    /// Whether the agent retries even before it was ever online: the refusal says nothing
    /// about the agent's config, only about the relay's state at this moment.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Refusal::TryLater { .. })
    }
}

/// Written by the relay at the start of every stream it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub tunnel: u32,
    /// The visitor's IP and port; an IPv6 scope id or flow label is not carried.
    pub visitor: SocketAddr,
    /// Set on a UDP tunnel's flow stream: the id its datagrams carry (see
    /// [`super::datagram`]). The stream carries no bytes; it lasts as long as the flow, and
    /// either end finishing or resetting it ends the flow.
    pub flow: Option<u64>,
}

impl StreamHeader {
    /// The header of a TCP visitor's stream.
    pub fn visitor(tunnel: u32, visitor: SocketAddr) -> Self {
        Self { tunnel, visitor, flow: None }
    }
}
