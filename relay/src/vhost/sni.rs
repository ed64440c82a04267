//! The host name a TLS visitor asks for, read from its ClientHello without consuming it, so
//! one HTTPS port can serve both tunnels where the relay terminates TLS and tunnels that pass
//! the visitor's TLS through to the agent untouched.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use burrow_common::protocol::ALPN;

use crate::acme::ACME_TLS_ALPN;
use rustls::server::{Accepted, Acceptor};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Most ClientHellos fit here; larger ones (post-quantum key shares) take one doubling.
const FIRST_READ: usize = 2048;

/// The start of a TLS connection, up to and including the ClientHello.
#[derive(Debug)]
pub(crate) struct ClientHello {
    /// Everything read from the visitor, to replay to whoever handles the connection.
    pub(crate) bytes: Vec<u8>,
    /// The requested host name, lowercased; `None` when the visitor sent none (it dialled an IP).
    pub(crate) server_name: Option<String>,
    /// The client offers the burrow ALPN: an agent whose network lets only HTTPS out.
    pub(crate) is_agent: bool,
    /// The client offers only ACME's ALPN: the CA checking a TLS-ALPN-01 challenge.
    pub(crate) is_acme_check: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SniError {
    #[error("not a TLS ClientHello")]
    NotTls(#[source] rustls::Error),
    #[error("no complete ClientHello in the first {0} bytes")]
    TooLarge(usize),
    #[error("connection closed before the ClientHello was complete")]
    Closed,
    #[error("read the ClientHello")]
    Io(#[from] io::Error),
}

/// Reads from `io` until a whole ClientHello has arrived, holding at most `max_bytes`.
pub(crate) async fn read_client_hello<R: AsyncRead + Unpin>(
    io: &mut R,
    max_bytes: usize,
) -> Result<ClientHello, SniError> {
    let mut acceptor = Acceptor::default();
    let mut bytes = Vec::new();
    loop {
        make_room(&mut bytes, max_bytes)?;
        let start = bytes.len();
        if io.read_buf(&mut bytes).await? == 0 {
            return Err(SniError::Closed);
        }
        if let Some(accepted) = parse(&mut acceptor, &bytes[start..])? {
            let hello = accepted.client_hello();
            let server_name = hello.server_name().map(str::to_ascii_lowercase);
            let offers = |wanted: &[u8]| hello.alpn().is_some_and(|mut offered| offered.any(|alpn| alpn == wanted));
            let (is_agent, is_acme_check) = (offers(ALPN), offers(ACME_TLS_ALPN));
            return Ok(ClientHello { bytes, server_name, is_agent, is_acme_check });
        }
    }
}

/// Grows the buffer by doubling, never past `max_bytes`: `read_buf` fills only spare capacity,
/// so this is what bounds the memory a visitor can make the relay hold.
fn make_room(bytes: &mut Vec<u8>, max_bytes: usize) -> Result<(), SniError> {
    if bytes.len() < bytes.capacity() {
        return Ok(());
    }
    let room = bytes.capacity().max(FIRST_READ).min(max_bytes.saturating_sub(bytes.len()));
    if room == 0 {
        return Err(SniError::TooLarge(max_bytes));
    }
    bytes.reserve_exact(room);
    Ok(())
}

/// Hands `fresh` bytes to rustls, which keeps what it needs until the ClientHello is whole.
fn parse(acceptor: &mut Acceptor, mut fresh: &[u8]) -> Result<Option<Accepted>, SniError> {
    while !fresh.is_empty() {
        // rustls takes at most 4 KiB per call, and always at least one byte: it fails rather
        // than take nothing once its buffer is full.
        acceptor.read_tls(&mut fresh)?;
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok(Some(accepted)),
            Ok(None) => {}
            // No alert goes back: the bytes may not even be TLS, and the caller closes anyway.
            Err((error, _alert)) => return Err(SniError::NotTls(error)),
        }
    }
    Ok(None)
}

/// A stream that first yields `prefix`, then reads from `inner`; writes go to `inner`.
#[derive(Debug)]
pub(crate) struct Rewind<S> {
    prefix: Vec<u8>,
    replayed: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self { prefix, replayed: 0, inner }
    }

    /// The part of the prefix not read yet, and the inner stream.
    #[cfg(test)]
    pub(crate) fn into_parts(mut self) -> (Vec<u8>, S) {
        self.prefix.drain(..self.replayed);
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let unread = &this.prefix[this.replayed..];
        if unread.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = unread.len().min(buf.remaining());
        buf.put_slice(&unread[..n]);
        this.replayed += n;
        if this.replayed == this.prefix.len() {
            // The connection may live for hours; its ClientHello need not.
            (this.prefix, this.replayed) = (Vec::new(), 0);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, sync::Arc};

    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncWriteExt, DuplexStream, duplex};
    use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};

    use super::*;
    use crate::vhost::certs::HttpsCert;

    const MAX: usize = 16 * 1024;

    fn client(trusted: CertificateDer<'static>) -> anyhow::Result<TlsConnector> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trusted)?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConnector::from(Arc::new(config)))
    }

    /// Starts a client handshake for `name` on `io`; it finishes only if a server answers.
    fn connect(
        cert: &HttpsCert,
        name: ServerName<'static>,
        io: DuplexStream,
    ) -> anyhow::Result<tokio::task::JoinHandle<io::Result<TlsStream<DuplexStream>>>> {
        let connector = client(cert.leaf_der())?;
        Ok(tokio::spawn(async move { connector.connect(name, io).await }))
    }

    #[tokio::test]
    async fn the_server_name_is_read_and_the_handshake_replayed() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let cert = HttpsCert::load("example.com", dir.path(), None, None)?;
        let (client_io, mut server_io) = duplex(64 * 1024);
        let client = connect(&cert, ServerName::try_from("MyApp.example.com")?, client_io)?;

        let hello = read_client_hello(&mut server_io, MAX).await?;
        assert_eq!(hello.server_name.as_deref(), Some("myapp.example.com"));
        assert!(hello.bytes.capacity() <= MAX);

        let acceptor = TlsAcceptor::from(cert.server_config());
        let mut server = acceptor.accept(Rewind::new(hello.bytes, server_io)).await?;
        let mut client = client.await??;
        client.write_all(b"ping").await?;
        let mut ping = [0; 4];
        server.read_exact(&mut ping).await?;
        assert_eq!(&ping, b"ping");
        let (prefix, _) = server.into_inner().0.into_parts();
        assert!(prefix.is_empty(), "the handshake must have read the whole ClientHello");
        Ok(())
    }

    #[tokio::test]
    async fn a_client_hello_arriving_in_small_pieces_is_put_together() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let cert = HttpsCert::load("example.com", dir.path(), None, None)?;
        // The pipe holds 7 bytes, so every read returns at most that.
        let (client_io, mut server_io) = duplex(7);
        let _client = connect(&cert, ServerName::try_from("app.example.com")?, client_io)?;
        let hello = read_client_hello(&mut server_io, MAX).await?;
        assert_eq!(hello.server_name.as_deref(), Some("app.example.com"));
        Ok(())
    }

    #[tokio::test]
    async fn a_client_dialling_an_ip_sends_no_server_name() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let cert = HttpsCert::load("example.com", dir.path(), None, None)?;
        let (client_io, mut server_io) = duplex(64 * 1024);
        let _client = connect(&cert, ServerName::from(Ipv4Addr::LOCALHOST), client_io)?;
        let hello = read_client_hello(&mut server_io, MAX).await?;
        assert_eq!(hello.server_name, None);
        assert!(!hello.bytes.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn plain_http_is_not_tls() -> anyhow::Result<()> {
        let (mut visitor, mut server_io) = duplex(1024);
        visitor.write_all(b"GET / HTTP/1.1\r\n\r\n").await?;
        let result = read_client_hello(&mut server_io, MAX).await;
        assert!(matches!(result, Err(SniError::NotTls(_))), "{result:?}");
        Ok(())
    }

    #[tokio::test]
    async fn a_huge_client_hello_is_too_large() -> anyhow::Result<()> {
        let (mut visitor, mut server_io) = duplex(64 * 1024);
        // A handshake record of the largest plaintext size, holding a ClientHello that fills it.
        let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc];
        record.resize(5 + 0x4000, 0);
        visitor.write_all(&record).await?;
        let result = read_client_hello(&mut server_io, 4096).await;
        assert!(matches!(result, Err(SniError::TooLarge(4096))), "{result:?}");
        Ok(())
    }

    #[tokio::test]
    async fn a_visitor_leaving_mid_hello_is_closed() -> anyhow::Result<()> {
        let (mut visitor, mut server_io) = duplex(1024);
        visitor.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]).await?;
        drop(visitor);
        let result = read_client_hello(&mut server_io, MAX).await;
        assert!(matches!(result, Err(SniError::Closed)), "{result:?}");

        let (visitor, mut server_io) = duplex(1024);
        drop(visitor);
        let result = read_client_hello(&mut server_io, MAX).await;
        assert!(matches!(result, Err(SniError::Closed)), "{result:?}");
        Ok(())
    }

    #[tokio::test]
    async fn rewind_replays_then_reads_on_and_writes_through() -> anyhow::Result<()> {
        let (mut peer, io) = duplex(1024);
        peer.write_all(b" world").await?;
        let mut rewind = Rewind::new(b"hello".to_vec(), io);
        let mut first = [0; 3];
        rewind.read_exact(&mut first).await?;
        assert_eq!(&first, b"hel");
        rewind.write_all(b"reply").await?;

        let (unread, mut io) = rewind.into_parts();
        assert_eq!(unread, b"lo");
        let mut rewind = Rewind::new(unread, &mut io);
        let mut rest = [0; 8];
        rewind.read_exact(&mut rest).await?;
        assert_eq!(&rest, b"lo world");
        let mut reply = [0; 5];
        peer.read_exact(&mut reply).await?;
        assert_eq!(&reply, b"reply");
        Ok(())
    }
}
