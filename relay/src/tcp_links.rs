//! Agents that reach the relay over TCP, where UDP is blocked: on the TCP agent port
//! (`tcp_listen`, beside QUIC's UDP port by default) and on the shared HTTPS port, where a
//! ClientHello that offers the burrow ALPN is an agent rather than a visitor. Past the TLS
//! handshake a TCP link is served exactly as a QUIC one.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use burrow_common::link::{TcpLink, TcpSettings};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};
use tokio_util::sync::CancellationToken;

use crate::{BindError, Shared, config::RelayConfig, endpoint::bind_tcp, session};

/// Binds the TCP agent port; `quic` is where the QUIC endpoint is bound, whose port the TCP
/// one takes by default (also when `listen` asked for any free port).
pub(crate) fn bind(config: &RelayConfig, quic: SocketAddr) -> Result<Option<TcpListener>, BindError> {
    let Some(addr) = config.tcp_listen.resolve(quic) else {
        return Ok(None);
    };
    bind_tcp(addr, |source| BindError::TcpListen { addr, source }).map(Some)
}

/// Accepts agents on the TCP agent port until `cancel`.
pub(crate) async fn accept(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, usually: pause rather than spin.
                    tracing::warn!("accept an agent over TCP: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Interactive visitors' small writes must leave at once, not wait for an ACK.
        tcp.set_nodelay(true).ok();
        arrived(tcp, peer, &shared, &cancel);
    }
}

/// Serves an agent's TCP connection, whose TLS has not begun (its ClientHello may have been
/// read and put back), under the same admission as a QUIC client.
pub(crate) fn arrived<T>(io: T, peer: SocketAddr, shared: &Arc<Shared>, cancel: &CancellationToken)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let pending = match shared.place_for(peer.ip()) {
        Ok(pending) => pending,
        Err(reason) => {
            shared.metrics.handshakes_refused.get_or_create(&reason).inc();
            return;
        }
    };
    shared.sessions.spawn(session::serve_tcp(io, peer, pending, shared.clone(), cancel.clone()));
}

/// The TLS handshake, then the link's own.
pub(crate) async fn handshake<T>(
    io: T,
    peer: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    idle_timeout: Duration,
) -> anyhow::Result<TcpLink>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The config offers only the burrow ALPN, so rustls refuses a client that offers none of it.
    let tls = tokio_rustls::TlsAcceptor::from(tls).accept(io).await.context("TLS handshake over TCP failed")?;
    TcpLink::relay_side(tls, peer, TcpSettings::relay(idle_timeout)).await.context("start the TCP link")
}
