//! A small HTTP/1.1 server loop for the pages the binaries serve on loopback (the relay's
//! admin endpoint, the agent's inspector): one task per connection, all ended by one token.
//! Both guard their pages the same way: a request must name the server itself in its Host
//! header, and beyond loopback it must carry the server's token.

use std::{convert::Infallible, net::IpAddr, time::Duration};

use base64::Engine;
use hyper::{
    Request, Response,
    body::Incoming,
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Answers each request on `listener` with `respond` until `stop`, then ends every connection
/// and returns once they are gone. `name` says whose accept failed in the log.
pub async fn serve<R, F, B>(listener: TcpListener, name: &'static str, stop: CancellationToken, respond: R)
where
    R: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!("{name} accept failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let (respond, stop) = (respond.clone(), stop.clone());
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(request);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = connection => {}
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// Whether the request names this server itself: by an IP address (on a loopback-only
/// server, a loopback one), as `localhost`, or by one of its own `names`.
///
/// A page elsewhere can make a name of its own resolve to this machine (DNS rebinding, or a
/// browser on the far end of an `ssh -L` forward) and then read our answers as same-origin;
/// such a request still carries that foreign name in its Host header.
pub fn addressed_directly<B>(request: &Request<B>, loopback_only: bool, names: &[String]) -> bool {
    let Some(host) = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let ip = name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>();
    match ip {
        Ok(ip) => !loopback_only || ip.is_loopback(),
        Err(_) => {
            let name = name.trim_end_matches('.');
            // No page elsewhere can make `localhost` resolve to anything but this machine.
            name.eq_ignore_ascii_case("localhost") || names.iter().any(|own| own.eq_ignore_ascii_case(name))
        }
    }
}

/// Whether the request carries `token`, as `Authorization: Bearer TOKEN` (scripts,
/// Prometheus) or as the password of HTTP Basic with any user name (a browser's prompt).
pub fn allows<B>(request: &Request<B>, token: &str) -> bool {
    let presented = presented(request).unwrap_or_default();
    presented.len() == token.len() && bool::from(presented.as_bytes().ct_eq(token.as_bytes()))
}

/// Adds the challenges to a 401; Basic is what makes a browser ask for the password.
pub fn challenge<B>(mut denied: Response<B>, realm: &str) -> Response<B> {
    let headers = denied.headers_mut();
    for scheme in [format!("Bearer realm=\"{realm}\""), format!("Basic realm=\"{realm}\", charset=\"UTF-8\"")] {
        if let Ok(value) = HeaderValue::from_str(&scheme) {
            headers.append(header::WWW_AUTHENTICATE, value);
        }
    }
    denied
}

fn presented<B>(request: &Request<B>) -> Option<String> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(credentials.to_string());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(credentials).ok()?;
    let (_user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: header::HeaderName, value: &str) -> Request<()> {
        Request::builder().header(name, value).body(()).unwrap()
    }

    #[test]
    fn bearer_or_basic_password_with_any_user() {
        let token = "admin-token-0123456789";
        let auth = |value: &str| with(header::AUTHORIZATION, value);
        let basic = |text: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(text));
        assert!(allows(&auth("Bearer admin-token-0123456789"), token));
        assert!(allows(&auth("bearer admin-token-0123456789"), token));
        assert!(allows(&auth(&basic("anyone:admin-token-0123456789")), token));
        assert!(allows(&auth(&basic(":admin-token-0123456789")), token));
        assert!(!allows(&auth(&basic("admin-token-0123456789:")), token), "the token is the password");
        assert!(!allows(&auth(&basic("anyone:admin-token-wrong")), token));
        assert!(!allows(&auth("Bearer admin-token-012345678"), token));
        assert!(!allows(&auth("Token admin-token-0123456789"), token));
        assert!(!allows(&Request::new(()), token));
    }

    #[test]
    fn only_requests_naming_this_server_are_addressed_directly() {
        let names = ["relay.example.com".to_string()];
        let direct =
            |host: &str, loopback_only: bool| addressed_directly(&with(header::HOST, host), loopback_only, &names);
        for host in [
            "127.0.0.1:9470",
            "[::1]:9470",
            "localhost:9470",
            "LOCALHOST",
            "relay.example.com",
            "Relay.Example.Com.:9470",
        ] {
            assert!(direct(host, true), "{host}");
        }
        assert!(direct("192.0.2.10:9470", false), "an IP names no one else's server");
        for (host, loopback_only) in
            [("192.0.2.10:9470", true), ("rebind.example", false), ("relay.example.com.evil", false), ("", false)]
        {
            assert!(!direct(host, loopback_only), "{host}");
        }
        assert!(!addressed_directly(&Request::new(()), false, &names), "no Host header");
    }
}
