//! The two ways through a proxy once connected to it: HTTP CONNECT (hyper speaks the HTTP) and
//! SOCKS5 (tokio-socks). Each gives back the plain TCP stream, now carried to the relay.

use base64::Engine;
use http_body_util::Empty;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, time::Instant};
use tokio_socks::tcp::Socks5Stream;

use super::{Proxy, ProxyError, Scheme, bounded};
use crate::config::HostPort;

/// Asks the HTTP proxy behind `tcp` for a tunnel to `host:port`.
pub(super) async fn http_connect(
    proxy: &Proxy,
    tcp: TcpStream,
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<TcpStream, ProxyError> {
    let target = HostPort(host, port).to_string();
    let http = |source| ProxyError::Http { proxy: proxy.address(), target: target.clone(), source };
    let answer = async {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(http)?;
        let exchange = async {
            // Moved in, so the connection ends when the exchange does, whatever the answer.
            let mut sender = sender;
            let response = sender.send_request(connect_request(proxy, &target)).await.map_err(http)?;
            if !response.status().is_success() {
                return Err(refused(proxy, &target, response.status()));
            }
            hyper::upgrade::on(response).await.map_err(http)
        };
        // The connection moves the bytes, and hands the stream back once the proxy's 2xx
        // turns it into the tunnel.
        let (ended, upgraded) = tokio::join!(connection.with_upgrades(), exchange);
        let upgraded = upgraded?;
        ended.map_err(http)?;
        Ok(upgraded)
    };
    let upgraded = match tokio::time::timeout_at(deadline, answer).await {
        Ok(upgraded) => upgraded?,
        Err(_) => {
            return Err(ProxyError::Timeout {
                step: format!("CONNECT to {target} through the proxy at {}", proxy.address()),
            });
        }
    };
    let parts = upgraded.downcast::<TokioIo<TcpStream>>().map_err(|_| ProxyError::Io {
        step: "take the stream back from the HTTP client".into(),
        source: std::io::ErrorKind::Other.into(),
    })?;
    // The relay speaks only after the agent's TLS hello: bytes already here came from the
    // proxy, and would corrupt the TLS stream.
    if !parts.read_buf.is_empty() {
        return Err(ProxyError::EarlyBytes { proxy: proxy.address(), target, bytes: parts.read_buf.len() });
    }
    Ok(parts.io.into_inner())
}

fn connect_request(proxy: &Proxy, target: &str) -> Request<Empty<bytes::Bytes>> {
    let mut request = Request::new(Empty::new());
    *request.method_mut() = Method::CONNECT;
    // An authority-form target, `host:port`, as CONNECT requires; relay addresses always
    // parse as one, having been checked when the config loaded.
    if let Ok(uri) = target.parse() {
        *request.uri_mut() = uri;
    }
    let headers = request.headers_mut();
    if let Ok(value) = header::HeaderValue::from_str(target) {
        headers.insert(header::HOST, value);
    }
    if let Some(credentials) = &proxy.credentials {
        let pair = format!("{}:{}", credentials.user, credentials.password.expose());
        let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
        if let Ok(mut value) = header::HeaderValue::from_str(&format!("Basic {encoded}")) {
            value.set_sensitive(true);
            headers.insert(header::PROXY_AUTHORIZATION, value);
        }
    }
    request
}

/// The error for a proxy's non-2xx answer, with what usually causes it.
fn refused(proxy: &Proxy, target: &str, status: StatusCode) -> ProxyError {
    let origin = proxy.origin;
    let hint = match status {
        // tinyproxy, for one, answers wrong credentials with 401.
        StatusCode::PROXY_AUTHENTICATION_REQUIRED | StatusCode::UNAUTHORIZED if proxy.credentials.is_some() => {
            format!(" (check the user and password in {origin})")
        }
        StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
            format!(" (the proxy wants a user and password: give them in {origin} as http://USER:PASSWORD@HOST:PORT)")
        }
        StatusCode::FORBIDDEN if !target.ends_with(":443") => {
            " (many proxies allow CONNECT to port 443 only: have the relay listen on 443)".to_string()
        }
        _ => String::new(),
    };
    ProxyError::Refused { proxy: proxy.address(), target: target.to_string(), status, hint }
}

/// Asks the SOCKS5 proxy behind `tcp` for a connection to `host:port`: by name with
/// `socks5h://`, by an address resolved here with `socks5://`.
pub(super) async fn socks5(
    proxy: &Proxy,
    tcp: TcpStream,
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<TcpStream, ProxyError> {
    let target = HostPort(host, port).to_string();
    let address = match proxy.scheme {
        Scheme::Socks5 => {
            let resolve = || format!("resolve {host}");
            let mut found = bounded(deadline, resolve, tokio::net::lookup_host((host, port))).await?;
            let address = found.next().ok_or_else(|| ProxyError::Io {
                step: format!("resolve {host}"),
                source: std::io::ErrorKind::NotFound.into(),
            })?;
            tokio_socks::TargetAddr::Ip(address)
        }
        _ => tokio_socks::TargetAddr::Domain(host.into(), port),
    };
    let handshake = async {
        match &proxy.credentials {
            Some(c) => Socks5Stream::connect_with_password_and_socket(tcp, address, &c.user, c.password.expose()).await,
            None => Socks5Stream::connect_with_socket(tcp, address).await,
        }
    };
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(stream)) => Ok(stream.into_inner()),
        Ok(Err(source)) => Err(ProxyError::Socks { proxy: proxy.address(), target, source }),
        Err(_) => {
            Err(ProxyError::Timeout { step: format!("SOCKS5 to {target} through the proxy at {}", proxy.address()) })
        }
    }
}
