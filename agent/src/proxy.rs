//! Reaching the relay over TCP through the proxy a network requires: HTTP CONNECT or SOCKS5,
//! named by `--proxy` (config key `proxy`) or, without it, by the usual environment variables.
//!
//! The password of a proxy URL stays inside [`Proxy`]: Display, Debug and every error show
//! the user at most.

mod choice;
mod handshake;
mod setting;

use std::{fmt, io, time::Duration};

use burrow_common::Secret;
use hyper::StatusCode;
use tokio::{net::TcpStream, time::Instant};

pub use choice::from_settings;
pub use setting::ProxySetting;

use crate::config::HostPort;

/// Bounds every connection through a proxy (or straight to the relay), from the first SYN to
/// the proxy's answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A proxy to reach the relay through, as parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    scheme: Scheme,
    host: String,
    port: u16,
    credentials: Option<Credentials>,
    /// Where the URL came from (`--proxy`, `HTTPS_PROXY`, ...), for the hints of errors.
    origin: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// HTTP CONNECT.
    Http,
    /// SOCKS5 with the relay's name resolved here.
    Socks5,
    /// SOCKS5 with the relay's name resolved by the proxy.
    Socks5h,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Socks5 => "socks5",
            Scheme::Socks5h => "socks5h",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Credentials {
    user: String,
    password: Secret,
}

/// Why the relay could not be reached through (or without) a proxy, or a proxy URL is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The value is shown with its password masked.
    #[error("invalid proxy URL {value:?}: {reason}")]
    Invalid { value: String, reason: String },
    #[error("environment variable {variable}")]
    Environment {
        variable: &'static str,
        #[source]
        source: Box<ProxyError>,
    },
    #[error("{step}: no answer within {}s", CONNECT_TIMEOUT.as_secs())]
    Timeout { step: String },
    #[error("{step}")]
    Io {
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("the proxy at {proxy} refused CONNECT to {target}: {status}{hint}")]
    Refused { proxy: String, target: String, status: StatusCode, hint: String },
    #[error("the proxy at {proxy} did not answer CONNECT to {target} in HTTP")]
    Http {
        proxy: String,
        target: String,
        #[source]
        source: hyper::Error,
    },
    #[error("the proxy at {proxy} sent {bytes} bytes of its own after accepting CONNECT to {target}")]
    EarlyBytes { proxy: String, target: String, bytes: usize },
    #[error("the SOCKS5 proxy at {proxy} could not open a connection to {target}")]
    Socks {
        proxy: String,
        target: String,
        #[source]
        source: tokio_socks::Error,
    },
}

impl Proxy {
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The proxy's `host:port`, as errors name it.
    pub fn address(&self) -> String {
        HostPort(&self.host, self.port).to_string()
    }

    /// A TCP connection to `host:port` through this proxy, ready for the relay's TLS.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, ProxyError> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let step = || format!("connect to the proxy at {}", self.address());
        let tcp = bounded(deadline, step, TcpStream::connect((self.host.as_str(), self.port))).await?;
        tcp.set_nodelay(true).ok();
        match self.scheme {
            Scheme::Http => handshake::http_connect(self, tcp, host, port, deadline).await,
            Scheme::Socks5 | Scheme::Socks5h => handshake::socks5(self, tcp, host, port, deadline).await,
        }
    }
}

/// A TCP connection to `host:port`: through `proxy`, or straight when there is none.
pub async fn connect_tcp(proxy: Option<&Proxy>, host: &str, port: u16) -> Result<TcpStream, ProxyError> {
    match proxy {
        Some(proxy) => proxy.connect(host, port).await,
        None => {
            let deadline = Instant::now() + CONNECT_TIMEOUT;
            let step = || format!("connect to {}", HostPort(host, port));
            let tcp = bounded(deadline, step, TcpStream::connect((host, port))).await?;
            tcp.set_nodelay(true).ok();
            Ok(tcp)
        }
    }
}

/// Runs one step of a connection by `deadline`; `step` says what it was, for the error.
async fn bounded<T>(
    deadline: Instant,
    step: impl Fn() -> String,
    work: impl Future<Output = io::Result<T>>,
) -> Result<T, ProxyError> {
    match tokio::time::timeout_at(deadline, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(ProxyError::Io { step: step(), source }),
        Err(_) => Err(ProxyError::Timeout { step: step() }),
    }
}

/// `http://user@host:port`: the URL without its password, for the console and logs.
impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.name())?;
        if let Some(credentials) = &self.credentials {
            let user = percent_encoding::utf8_percent_encode(&credentials.user, setting::USERINFO);
            write!(f, "{user}@")?;
        }
        write!(f, "{}", HostPort(&self.host, self.port))
    }
}
