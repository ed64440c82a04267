//! Errors the relay answers itself on an HTTP tunnel's behalf: a small page for a browser,
//! one line of text for curl and scripts.

use std::net::IpAddr;

pub(crate) use burrow_common::error_page::{ErrorPage, wants_html};
use hyper::StatusCode;

/// The request named a host under the relay's domain that no agent holds.
pub(crate) fn not_found(host: &str) -> ErrorPage {
    ErrorPage::new(StatusCode::NOT_FOUND, "Tunnel not found", format!("No tunnel is registered for {host}."))
}

/// The host is held, but its agent is away (reconnecting, or stopped).
pub(crate) fn tunnel_offline(host: &str) -> ErrorPage {
    let detail = format!("The agent serving {host} is not connected right now.");
    ErrorPage::new(StatusCode::BAD_GATEWAY, "Tunnel offline", detail)
}

/// `why` is one sentence, shown as it is.
pub(crate) fn bad_request(why: &str) -> ErrorPage {
    ErrorPage::new(StatusCode::BAD_REQUEST, "Bad request", why.into())
}

/// A reused HTTPS connection asked for a host other than the one its TLS handshake named;
/// browsers retry on a new connection when they see 421.
pub(crate) fn misdirected(host: &str) -> ErrorPage {
    let detail = format!("This connection was opened for another hostname and cannot be used for {host}.");
    ErrorPage::new(StatusCode::MISDIRECTED_REQUEST, "Misdirected request", detail)
}

/// The caller adds the WWW-Authenticate header that makes a browser ask for credentials.
pub(crate) fn unauthorized() -> ErrorPage {
    let detail = "This tunnel is protected; sign in with the credentials its owner gave you.".into();
    ErrorPage::new(StatusCode::UNAUTHORIZED, "Sign-in required", detail)
}

pub(crate) fn forbidden_ip(ip: IpAddr) -> ErrorPage {
    let detail = format!("Your address {ip} is not allowed to reach this tunnel.");
    ErrorPage::new(StatusCode::FORBIDDEN, "Access denied", detail)
}

/// The agent took the request, but the service behind it did not start answering in time.
pub(crate) fn gateway_timeout(limit: std::time::Duration) -> ErrorPage {
    let limit = burrow_common::config::duration::format(limit);
    let detail = format!("The local server did not answer within {limit}.");
    ErrorPage::new(StatusCode::GATEWAY_TIMEOUT, "Local server too slow", detail)
}

/// The tunnel's cap on open connections is reached; the cap per address resets the
/// connection before any request is read.
pub(crate) fn too_many(host: &str) -> ErrorPage {
    let detail = format!("{host} is serving as many connections as it allows; try again in a moment.");
    ErrorPage::new(StatusCode::SERVICE_UNAVAILABLE, "Too many connections", detail)
}

/// The visitor's address has guessed (passwords, hostnames) faster than the relay allows.
pub(crate) fn too_many_guesses() -> ErrorPage {
    let detail = "Too many wrong passwords or unknown names from your address; try again in a moment.".into();
    ErrorPage::new(StatusCode::TOO_MANY_REQUESTS, "Slow down", detail)
}

/// The agent answered 101 to a request that was not allowed to switch protocols.
pub(crate) fn unasked_switch() -> ErrorPage {
    let detail = "The local server switched protocols without being asked to.".into();
    ErrorPage::new(StatusCode::BAD_GATEWAY, "Unexpected protocol switch", detail)
}

/// The request asks for the relay's own name rather than a tunnel's.
pub(crate) fn no_http_tunnels() -> ErrorPage {
    let detail = "This relay answers only at tunnel hostnames; use the address your agent printed.".into();
    ErrorPage::new(StatusCode::NOT_FOUND, "No tunnel here", detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_carry_their_status() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for (page, status) in [
            (not_found("a.example.com"), StatusCode::NOT_FOUND),
            (tunnel_offline("a.example.com"), StatusCode::BAD_GATEWAY),
            (bad_request("No Host header."), StatusCode::BAD_REQUEST),
            (misdirected("a.example.com"), StatusCode::MISDIRECTED_REQUEST),
            (unauthorized(), StatusCode::UNAUTHORIZED),
            (forbidden_ip(ip), StatusCode::FORBIDDEN),
            (gateway_timeout(std::time::Duration::from_secs(30)), StatusCode::GATEWAY_TIMEOUT),
            (too_many("a.example.com"), StatusCode::SERVICE_UNAVAILABLE),
            (no_http_tunnels(), StatusCode::NOT_FOUND),
            (too_many_guesses(), StatusCode::TOO_MANY_REQUESTS),
            (unasked_switch(), StatusCode::BAD_GATEWAY),
        ] {
            assert_eq!(page.status, status, "{page:?}");
            assert_eq!(page.render(false).status(), status);
            assert_eq!(page.render(true).status(), status);
            assert!(page.detail.ends_with('.'), "detail is one full sentence: {page:?}");
        }
    }

    #[test]
    fn plain_text_is_one_line() {
        let page = not_found("myapp.relay.example.com");
        assert_eq!(page.plain_text(), "404 Tunnel not found: No tunnel is registered for myapp.relay.example.com.\n");
        let page = gateway_timeout(std::time::Duration::from_secs(30));
        assert_eq!(page.plain_text(), "504 Local server too slow: The local server did not answer within 30s.\n");
        let page = forbidden_ip("2001:db8::7".parse().unwrap());
        assert_eq!(
            page.plain_text(),
            "403 Access denied: Your address 2001:db8::7 is not allowed to reach this tunnel.\n"
        );
    }
}
