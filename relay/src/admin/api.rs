//! `/api/*`: the relay's live state as JSON, for the dashboard and for scripts. Token names
//! appear; tokens and their hashes never do.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::{text, with_type};
use crate::{Shared, tokens::CONFIGURED_TOKEN_NAME};

#[derive(Serialize)]
struct TokenView {
    name: String,
    /// The ports the token may use: its own list, or the relay's whole range.
    ports: String,
    limited: bool,
    /// The subdomains the token may claim: `all`, `none` or its patterns (`app-*,docs`).
    subdomains: String,
    /// The custom hostnames the token may claim: `none` or its patterns (`*.dev.example.org`).
    hostnames: String,
    /// Unix seconds; unknown for the token from the relay's config.
    created: Option<u64>,
}

/// Where the relay listens, as bound.
#[derive(Serialize)]
struct ListenersView {
    /// UDP: agents over QUIC.
    quic: std::net::SocketAddr,
    /// TCP: agents where UDP is blocked; `null` when off.
    tcp: Option<std::net::SocketAddr>,
    http: Option<std::net::SocketAddr>,
    /// Also takes agents whose ClientHello offers burrow's ALPN.
    https: Option<std::net::SocketAddr>,
}

pub(super) async fn respond(shared: &Shared, view: &str) -> Response<Full<Bytes>> {
    let json = match view {
        "agents" => serde_json::to_vec(&shared.live.agents()),
        "tunnels" => serde_json::to_vec(&shared.metrics.traffic.tunnels(&shared.claims.held())),
        "connections" => serde_json::to_vec(&shared.metrics.traffic.visitors()),
        "limits" => serde_json::to_vec(&crate::limit_table::limits(shared)),
        "certificates" => serde_json::to_vec(&shared.acme.as_ref().map(|acme| acme.certificates()).unwrap_or_default()),
        "listeners" => serde_json::to_vec(&ListenersView {
            quic: shared.agent_addrs.0,
            tcp: shared.agent_addrs.1,
            http: shared.vhost.as_ref().and_then(|v| v.http_addr()),
            https: shared.vhost.as_ref().and_then(|v| v.https_addr()),
        }),
        "tokens" => match tokens(shared).await {
            Ok(tokens) => serde_json::to_vec(&tokens),
            Err(e) => {
                tracing::warn!("admin token list failed: {e:#}");
                return text(StatusCode::INTERNAL_SERVER_ERROR, "the token store cannot be read\n");
            }
        },
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "not found: try /api/agents, tunnels, connections, tokens, limits, listeners or certificates\n",
            );
        }
    };
    match json {
        Ok(json) => with_type(StatusCode::OK, json.into(), "application/json"),
        Err(e) => {
            tracing::warn!("admin {view} encoding failed: {e}");
            text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n")
        }
    }
}

async fn tokens(shared: &Shared) -> anyhow::Result<Vec<TokenView>> {
    let range = shared.config().ports;
    let configured = shared.config().token.as_ref().map(|_| TokenView {
        name: CONFIGURED_TOKEN_NAME.into(),
        ports: range.to_string(),
        limited: false,
        subdomains: crate::tokens::describe_patterns(None),
        hostnames: crate::tokens::describe_list::<crate::tokens::HostPattern>(&[]),
        created: None,
    });
    let stored = shared.store.list_tokens().await?.into_iter().map(|record| TokenView {
        ports: crate::tokens::describe_ports(record.ports.as_deref(), range),
        limited: record.ports.is_some(),
        subdomains: crate::tokens::describe_patterns(record.subdomains.as_deref()),
        hostnames: crate::tokens::describe_list(&record.hostnames),
        name: record.name,
        created: Some(record.created),
    });
    Ok(configured.into_iter().chain(stored).collect())
}
