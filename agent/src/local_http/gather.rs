//! The stream as the agent's HTTP server writes responses onto it. Offered vectored writes,
//! hyper queues a response's body chunks as they are instead of copying each into its own
//! buffer first; the transport copies what it is given anyway, so one copy of every body byte
//! is saved. A small response's head and body still go out as one write.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes up to this size are gathered into one; a larger part is written on its own.
const GATHER_BELOW: usize = 8 * 1024;

pub(super) struct Gathered<T>(pub(super) T);

impl<T: AsyncRead + Unpin> AsyncRead for Gathered<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Gathered<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|buf| buf.len()).sum();
        if total > GATHER_BELOW || bufs.len() == 1 {
            let first = bufs.iter().find(|buf| !buf.is_empty()).map_or(&[][..], |buf| &**buf);
            return Pin::new(&mut self.0).poll_write(cx, first);
        }
        let mut gathered = Vec::with_capacity(total);
        for buf in bufs {
            gathered.extend_from_slice(buf);
        }
        Pin::new(&mut self.0).poll_write(cx, &gathered)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn small_parts_go_out_in_one_write_and_large_ones_alone() {
        let mut small = Gathered(Vec::new());
        let parts = [io::IoSlice::new(b"head\r\n\r\n"), io::IoSlice::new(b"body")];
        assert_eq!(small.write_vectored(&parts).await.unwrap(), 12);
        assert_eq!(small.0, b"head\r\n\r\nbody");

        let mut large = Gathered(Vec::new());
        let body = vec![7u8; GATHER_BELOW];
        let parts = [io::IoSlice::new(b""), io::IoSlice::new(b"head"), io::IoSlice::new(&body)];
        assert_eq!(large.write_vectored(&parts).await.unwrap(), 4, "the head alone");
        assert_eq!(large.0, b"head");
    }
}
