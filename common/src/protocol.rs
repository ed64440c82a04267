//! The wire protocol: message types and their one framing.
//!
//! Every message is a 4-byte big-endian length followed by a postcard body, capped per use.
//! Reads take exactly one frame and nothing more, so the visitor bytes that follow a
//! [`StreamHeader`] stay in the stream for the splice.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The QUIC ALPN id; its suffix is the protocol version, so mismatched peers fail in the TLS
/// handshake with a clear "no application protocol" error instead of misreading frames.
pub const ALPN: &[u8] = b"burrow/1";

/// Version carried in [`Hello`], for changes that stay wire-compatible within one ALPN.
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

/// Largest control-stream frame (Hello, Welcome, Refused).
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;

/// Largest stream header frame.
pub const MAX_HEADER_FRAME: usize = 512;

/// First message of a session, sent by the agent on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub token: crate::Secret,
    pub tunnels: Vec<TunnelSpec>,
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
    /// `SUBDOMAIN.DOMAIN` on the relay's shared HTTP and HTTPS ports, TLS ended at the relay;
    /// the relay picks a readable name when none is asked for.
    Http { subdomain: Option<String>, access: HttpAccess },
    /// `SUBDOMAIN.DOMAIN` on the relay's shared HTTPS port, routed by SNI with the TLS bytes
    /// passed through untouched: the local server holds the certificate.
    Tls { subdomain: Option<String> },
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
}

/// The relay's answer to [`Hello`], then to each [`AgentMsg::Update`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Every requested tunnel is open, in the order of the Hello.
    Welcome { tunnels: Vec<Granted> },
    /// Nothing is open; the relay closes the session with [`crate::CloseCode::Refused`].
    Refused(Refusal),
    /// The update is applied: the removed tunnels are closed, and of the added ones these
    /// are open and these were refused (by tunnel name), each alone.
    Updated { granted: Vec<Granted>, refused: Vec<(String, Refusal)> },
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
}

impl Refusal {
    /// Whether the same Hello may succeed later without the user changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(self, Refusal::PortTaken { .. } | Refusal::NoFreePort { .. } | Refusal::TunnelActive { .. })
    }
}

/// Written by the relay at the start of every stream it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub tunnel: u32,
    /// The visitor's IP and port; an IPv6 scope id or flow label is not carried.
    pub visitor: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("stream ended before a frame")]
    Eof,
}

/// Writes one length-prefixed message.
pub async fn write_msg<W, T>(writer: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = postcard::to_stdvec(msg)?;
    let len =
        u32::try_from(body.len()).map_err(|_| FrameError::TooLarge { len: body.len(), max: u32::MAX as usize })?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    writer.write_all(&frame).await?;
    Ok(())
}

/// Reads exactly one length-prefixed message of at most `max` bytes.
pub async fn read_msg<R, T>(reader: &mut R, max: usize) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let len = match reader.read_u32().await {
        Ok(len) => len as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Eof),
        Err(e) => return Err(e.into()),
    };
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await?;
    Ok(postcard::from_bytes(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            token: crate::Secret::new("t0ken"),
            tunnels: vec![TunnelSpec {
                name: "web".into(),
                local: "127.0.0.1:8080".into(),
                kind: TunnelKind::Tcp { port: Some(20080) },
            }],
        }
    }

    #[tokio::test]
    async fn messages_round_trip() -> anyhow::Result<()> {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_msg(&mut a, &hello()).await?;
        let welcome = ServerMsg::Welcome {
            tunnels: vec![Granted { id: 0, name: "web".into(), port: 20080, host: None, urls: Vec::new() }],
        };
        write_msg(&mut a, &welcome).await?;
        let header = StreamHeader { tunnel: 7, visitor: "[2001:db8::1]:5000".parse()? };
        write_msg(&mut a, &header).await?;
        assert_eq!(read_msg::<_, Hello>(&mut b, MAX_CONTROL_FRAME).await?, hello());
        assert_eq!(read_msg::<_, ServerMsg>(&mut b, MAX_CONTROL_FRAME).await?, welcome);
        assert_eq!(read_msg::<_, StreamHeader>(&mut b, MAX_HEADER_FRAME).await?, header);
        Ok(())
    }

    #[tokio::test]
    async fn read_leaves_following_bytes_in_place() -> anyhow::Result<()> {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let header = StreamHeader { tunnel: 1, visitor: "127.0.0.1:1".parse()? };
        write_msg(&mut a, &header).await?;
        a.write_all(b"GET / HTTP/1.1\r\n").await?;
        drop(a);
        let _: StreamHeader = read_msg(&mut b, MAX_HEADER_FRAME).await?;
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await?;
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        Ok(())
    }

    #[tokio::test]
    async fn oversized_length_is_rejected_before_allocating() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_msg::<_, Hello>(&mut b, MAX_CONTROL_FRAME).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len == u32::MAX as usize));
    }

    #[tokio::test]
    async fn garbage_body_is_malformed() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
        let err = read_msg::<_, Hello>(&mut b, MAX_CONTROL_FRAME).await.unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 10, 1, 2]).await.unwrap();
        drop(a);
        assert!(read_msg::<_, Hello>(&mut b, MAX_CONTROL_FRAME).await.is_err());
    }

    #[tokio::test]
    async fn empty_stream_is_eof() {
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        let err = read_msg::<_, Hello>(&mut b, MAX_CONTROL_FRAME).await.unwrap_err();
        assert!(matches!(err, FrameError::Eof));
    }
}
