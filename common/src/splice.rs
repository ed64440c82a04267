//! Carrying bytes between a TCP connection and a QUIC stream, with both ends' closes mapped.
//!
//! A TCP FIN becomes a stream finish and back (tokio's `copy_bidirectional` shuts down each
//! writer at EOF). An error on either side must not look like a clean end, so it becomes a
//! stream reset on the QUIC side and an RST (zero linger) on the TCP side.

use quinn::{RecvStream, SendStream};
use tokio::net::TcpStream;

use crate::StreamCode;

/// Per-direction copy buffer; tokio's default of 8 KiB costs throughput on fast links.
pub const COPY_BUFFER: usize = 64 * 1024;

/// Bytes moved: `tcp_to_stream` then `stream_to_tcp`.
pub type Moved = (u64, u64);

/// Splices `tcp` with the stream until both directions have ended.
pub async fn splice(mut tcp: TcpStream, send: SendStream, recv: RecvStream) -> std::io::Result<Moved> {
    let mut stream = tokio::io::join(recv, send);
    match tokio::io::copy_bidirectional_with_sizes(&mut tcp, &mut stream, COPY_BUFFER, COPY_BUFFER).await {
        Ok(moved) => Ok(moved),
        Err(e) => {
            let (mut recv, mut send) = stream.into_inner();
            abort_stream(&mut send, &mut recv, StreamCode::Aborted);
            abort_tcp(tcp);
            Err(e)
        }
    }
}

/// Ends both halves of a stream with `code`; the peer sees a reset, not a clean EOF.
pub fn abort_stream(send: &mut SendStream, recv: &mut RecvStream, code: StreamCode) {
    // Either half may already be closed by the peer; that is the outcome we want anyway.
    send.reset(code.code()).ok();
    recv.stop(code.code()).ok();
}

/// Drops a TCP connection with an RST, so the peer sees an abort instead of a clean FIN.
pub fn abort_tcp(tcp: TcpStream) {
    if let Err(e) = tcp.set_zero_linger() {
        tracing::debug!("set_zero_linger failed: {e}");
    }
}
