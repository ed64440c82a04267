//! The headers a request and its response carry across the relay: what belongs to one hop
//! is dropped, and who the visitor is comes from the relay alone.

use hyper::{
    HeaderMap, Request,
    body::Incoming,
    header::{self, HeaderName, HeaderValue},
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
    // Most messages carry none of them: one pass over the few headers they have costs less
    // than looking each hop-by-hop name up.
    if headers.keys().any(is_hop_by_hop) {
        strip_present(headers, upgrading);
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Hop-by-hop headers removed from every message; `Connection` and `Upgrade` are too, unless
/// the message upgrades.
const ALWAYS_HOP_BY_HOP: [&str; 5] = ["keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION || name == header::UPGRADE || ALWAYS_HOP_BY_HOP.contains(&name.as_str())
}

fn strip_present(headers: &mut HeaderMap, upgrading: bool) {
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
    for name in ALWAYS_HOP_BY_HOP {
        headers.remove(name);
    }
    if !upgrading {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

fn set_forwarded(headers: &mut HeaderMap, visitor: &Visitor, sent_host: &str) {
    let ip = visitor.addr.ip().to_canonical();
    let proto = visitor.scheme.as_str();
    let node = if ip.is_ipv6() { format!("\"[{ip}]\"") } else { ip.to_string() };
    let quoted_host = if sent_host.contains(['"', '\\']) { &sent_host.replace(['"', '\\'], "") } else { sent_host };
    let forwarded = format!("for={node};host=\"{quoted_host}\";proto={proto}");
    let for_value = if ip.is_ipv6() { HeaderValue::from_str(&ip.to_string()) } else { HeaderValue::from_str(&node) };
    for (name, value) in [
        (X_FORWARDED_FOR, for_value),
        (X_FORWARDED_PROTO, Ok(HeaderValue::from_static(proto))),
        (X_FORWARDED_HOST, HeaderValue::from_str(sent_host)),
        (header::FORWARDED, HeaderValue::from_str(&forwarded)),
    ] {
        // Inserting replaces every value the visitor sent under the name.
        if let Ok(value) = value {
            headers.insert(name, value);
        } else {
            headers.remove(name);
        }
    }
}
