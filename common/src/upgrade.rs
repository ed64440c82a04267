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
}
