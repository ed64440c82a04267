//! Both ends of an HTTP `Upgrade` (WebSocket and the like): once each side has switched
//! protocols, the two connections are joined byte for byte.

use hyper::{HeaderMap, header, upgrade::OnUpgrade};
use hyper_util::rt::TokioIo;

/// Whether a request asks to switch protocols: `Connection: upgrade` with an `Upgrade` header.
pub fn requested(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && headers.contains_key(header::UPGRADE)
}

/// The protocols an `Upgrade` header offers, by name without version, lowercased:
/// `websocket`, `h2c`.
pub fn offered(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .map(|value| value.to_str().unwrap_or("\u{fffd}"))
        .flat_map(|value| value.split(','))
        .map(|protocol| protocol.trim().split('/').next().unwrap_or_default().to_ascii_lowercase())
        .filter(|protocol| !protocol.is_empty())
        .collect()
}

/// Whether a request may switch protocols: it asks to (see [`requested`]), and every protocol
/// it offers is WebSocket or one of `allowed`, so the server cannot pick another. Anything
/// else (h2c smuggling past the relay's routing and checks, for one) crosses as a plain request.
pub fn permitted(headers: &HeaderMap, allowed: &[String]) -> bool {
    let offered = offered(headers);
    requested(headers)
        && !offered.is_empty()
        && offered.iter().all(|protocol| {
            protocol == WEBSOCKET || allowed.iter().any(|allowed| allowed.eq_ignore_ascii_case(protocol))
        })
}

/// Drops a request's ask to switch protocols, so it crosses as a plain request.
pub fn strip(headers: &mut HeaderMap) {
    headers.remove(header::UPGRADE);
    let kept: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty() && !token.eq_ignore_ascii_case("upgrade"))
        .map(str::to_string)
        .collect();
    headers.remove(header::CONNECTION);
    if let Ok(value) = kept.join(", ").parse()
        && !kept.is_empty()
    {
        headers.insert(header::CONNECTION, value);
    }
}

/// The one protocol every tunnel may switch to.
pub const WEBSOCKET: &str = "websocket";

/// Whether `name` can be a protocol in an `Upgrade` header: an HTTP token.
pub fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Waits for both sides to finish switching, then copies between them until both are done.
/// Returns the bytes carried from `client` and from `server`.
pub async fn join(client: OnUpgrade, server: OnUpgrade) -> anyhow::Result<(u64, u64)> {
    let (client, server) = tokio::try_join!(client, server)?;
    let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
    Ok(tokio::io::copy_bidirectional(&mut client, &mut server).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_needs_both_headers() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, value.parse().unwrap());
            }
            map
        };
        assert!(requested(&headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")])));
        assert!(!requested(&headers(&[("upgrade", "websocket")])));
        assert!(!requested(&headers(&[("connection", "keep-alive")])));
    }

    #[test]
    fn only_websocket_and_allowed_protocols_may_switch() {
        let asking = |protocol: &'static str| {
            let mut map = HeaderMap::new();
            map.insert(header::CONNECTION, "Upgrade".parse().unwrap());
            map.insert(header::UPGRADE, protocol.parse().unwrap());
            map
        };
        let h2c = vec!["h2c".to_string()];
        assert!(permitted(&asking("WebSocket"), &[]));
        assert!(!permitted(&asking("h2c"), &[]));
        assert!(permitted(&asking("h2c"), &h2c));
        assert!(!permitted(&asking("websocket, h2c"), &[]), "the server could pick h2c");
        assert!(!permitted(&asking("HTTP/2.0"), &h2c));
        assert!(!permitted(&HeaderMap::new(), &h2c));
        assert_eq!(offered(&asking("websocket/13, h2c")), ["websocket", "h2c"]);
        assert!(is_token("h2c") && !is_token("h2 c") && !is_token(""));
        let mut stripped = asking("h2c");
        stripped.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        strip(&mut stripped);
        assert!(!requested(&stripped) && !stripped.contains_key(header::UPGRADE));
        assert_eq!(stripped[header::CONNECTION], "keep-alive");
    }
}
