//! The relay's sockets: its one UDP socket and QUIC endpoint, and its TCP listeners.

use std::{net::SocketAddr, sync::Arc};

use socket2::{Domain, Protocol, Socket, Type};

use crate::{BindError, cid::SignedConnectionIds, identity::QuicKeys};

/// New connections quinn queues before the accept loop sees them, and the Initial bytes it
/// buffers for them. The loop refuses or admits each at once, so a queue this long means a
/// flood; quinn's defaults (65,536 and 100 MiB) would let one cost 100 MiB before the
/// relay's own caps look at it. Past these quinn drops Initials, and their clients resend.
const MAX_QUEUED_INCOMING: usize = 4096;
const QUEUED_INCOMING_BYTES: u64 = 8 * 1024 * 1024;

pub(crate) fn bind(
    listen: SocketAddr,
    mut server: quinn::ServerConfig,
    keys: &QuicKeys,
) -> Result<quinn::Endpoint, BindError> {
    server.max_incoming(MAX_QUEUED_INCOMING).incoming_buffer_size_total(QUEUED_INCOMING_BYTES);
    let socket = udp_socket(listen).map_err(|source| BindError::Listen { addr: listen, source })?;
    let mut endpoint_config = quinn::EndpointConfig::new(keys.reset.clone());
    let cid_key = keys.connection_id;
    endpoint_config.cid_generator(move || Box::new(SignedConnectionIds::new(cid_key)));
    quinn::Endpoint::new(endpoint_config, Some(server), socket, Arc::new(quinn::TokioRuntime))
        .map_err(BindError::Endpoint)
}

/// Binds a TCP listener for the admin, HTTP or HTTPS port; `failed` names the setting in the
/// error. Synchronous like the UDP socket, so `Relay::bind` needs no `.await`.
pub(crate) fn bind_tcp(
    addr: SocketAddr,
    failed: impl FnOnce(std::io::Error) -> BindError,
) -> Result<tokio::net::TcpListener, BindError> {
    std::net::TcpListener::bind(addr)
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(failed)
}

fn udp_socket(listen: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(listen), Type::DGRAM, Some(Protocol::UDP))?;
    if listen.is_ipv6() {
        // Serve IPv4 agents on `[::]` too where the system allows it.
        socket.set_only_v6(false).ok();
    }
    socket.bind(&listen.into())?;
    let socket = socket.into();
    burrow_common::transport::size_udp_buffers(&socket)?;
    Ok(socket)
}
