//! The headers a request and its response carry across the relay: what belongs to one hop
//! is dropped, and who the visitor is comes from the relay alone.

use hyper::{
    HeaderMap, Request,
    body::Incoming,
    header::{self, HeaderValue},
};

use super::Visitor;

/// The Host header, or the authority of an absolute-form request line.
pub(super) fn host_header(request: &Request<Incoming>) -> Option<String> {
    match request.headers().get(header::HOST) {
        Some(host) => host.to_str().ok().map(str::to_string),
        None => request.uri().authority().map(|a| a.to_string()),
    }
}

/// Rewrites what the agent's local server must not see as the visitor sent it: who the
/// visitor is comes from the relay alone, since client-sent forwarding headers can be forged.
pub(super) fn prepare_for_agent(
    request: &mut Request<Incoming>,
    visitor: &Visitor,
    sent_host: &str,
    drop_authorization: bool,
    upgrading: bool,
) {
    if let Some(path) = request.uri().path_and_query().cloned() {
        *request.uri_mut() = path.into();
    }
    let headers = request.headers_mut();
    strip_hop_by_hop(headers, upgrading);
    set_forwarded(headers, visitor, sent_host);
    // The relay answered any `Expect: 100-continue` itself when it started reading the body.
    headers.remove(header::EXPECT);
    if drop_authorization {
        // The credentials were the relay's to check; the local server never asked for them.
        headers.remove(header::AUTHORIZATION);
    }
}

/// Headers about one connection rather than the message (RFC 9110, section 7.6.1): they
/// belong to the hop they came on, and one named in `Connection` could otherwise strip the
/// relay's forwarding headers at a proxy in front of the local server.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    let named: Vec<header::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| header::HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(upgrading && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in ["keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"] {
        headers.remove(name);
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

fn set_forwarded(headers: &mut HeaderMap, visitor: &Visitor, sent_host: &str) {
    let ip = visitor.addr.ip().to_canonical();
    let proto = visitor.scheme.as_str();
    let node = if ip.is_ipv6() { format!("\"[{ip}]\"") } else { ip.to_string() };
    let forwarded = format!("for={node};host=\"{}\";proto={proto}", sent_host.replace(['"', '\\'], ""));
    for (name, value) in [
        ("x-forwarded-for", ip.to_string()),
        ("x-forwarded-proto", proto.to_string()),
        ("x-forwarded-host", sent_host.to_string()),
        ("forwarded", forwarded),
    ] {
        headers.remove(name);
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}
