//! What the UDP tunnel tests share: a local UDP service that echoes, or answers with as many
//! bytes as it is asked for.

use std::net::SocketAddr;

use tokio::net::UdpSocket;

/// A packet that asks the service for a reply of `len` bytes instead of its echo.
pub(crate) fn ask_for(len: u32) -> Vec<u8> {
    let mut packet = b"size".to_vec();
    packet.extend_from_slice(&len.to_be_bytes());
    packet
}

/// A local UDP service on loopback that answers each packet to its sender: with the packet
/// itself, or, for [`ask_for`], with that many bytes.
pub(crate) async fn udp_service() -> anyhow::Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    serve_udp(socket);
    Ok(addr)
}

/// Serves [`udp_service`]'s answers on a socket bound by the caller.
pub(crate) fn serve_udp(socket: UdpSocket) {
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
            let packet = &buffer[..len];
            let asked = packet.strip_prefix(b"size").and_then(|n| <[u8; 4]>::try_from(n).ok());
            let answer = match asked {
                Some(n) => vec![b'x'; u32::from_be_bytes(n) as usize],
                None => packet.to_vec(),
            };
            if socket.send_to(&answer, from).await.is_err() {
                return;
            }
        }
    });
}
