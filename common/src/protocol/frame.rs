//! The one framing of every message: a 4-byte big-endian length, then a postcard body,
//! capped per use. Reads take exactly one frame and nothing more, so the visitor bytes that
//! follow a [`super::StreamHeader`] stay in the stream for the splice.

use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("stream ended before a frame")]
    Eof,
}

/// Writes one length-prefixed message.
pub async fn write_msg<W, T>(writer: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    writer.write_all(&encode(msg)?).await?;
    Ok(())
}

/// One message as it goes on the wire, length included: for a writer that must decide
/// whether it has room before it writes.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_stdvec(msg)?;
    let len =
        u32::try_from(body.len()).map_err(|_| FrameError::TooLarge { len: body.len(), max: u32::MAX as usize })?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Reads exactly one length-prefixed message of at most `max` bytes.
pub async fn read_msg<R, T>(reader: &mut R, max: usize) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let len = match reader.read_u32().await {
        Ok(len) => len as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Eof),
        Err(e) => return Err(e.into()),
    };
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    // Grown as the bytes arrive: a peer that claims a large frame and sends little makes the
    // reader hold only what it sent.
    let mut body = Vec::new();
    reader.take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("frame ended after {} of its {len} bytes", body.len()),
        )
        .into());
    }
    Ok(postcard::from_bytes(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        FleetMember, Granted, Hello, JoinTicket, MAX_CONTROL_FRAME, MAX_HEADER_FRAME, PROTOCOL_VERSION, ServerMsg,
        StreamHeader, TunnelKind, TunnelSpec, Welcome,
    };

    fn hello() -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            token: crate::Secret::new("t0ken"),
            tunnels: vec![TunnelSpec {
                name: "web".into(),
                local: "127.0.0.1:8080".into(),
                kind: TunnelKind::Tcp { port: Some(20080) },
            }],
        }
    }

    #[tokio::test]
    async fn messages_round_trip() -> anyhow::Result<()> {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_msg(&mut a, &hello()).await?;
        let welcome = ServerMsg::Welcome(Welcome {
            tunnels: vec![Granted { id: 0, name: "web".into(), port: 20080, host: None, urls: Vec::new() }],
            ticket: JoinTicket([3; 32]),
            links: 4,
            fleet: vec![FleetMember {
                addr: "r2.example.com:4443".into(),
                fingerprint: "sha256:00".into(),
                zone: Some("fra1".into()),
            }],
        });
        write_msg(&mut a, &welcome).await?;
        let header = StreamHeader { tunnel: 7, visitor: "[2001:db8::1]:5000".parse()?, flow: Some(1 << 40) };
        write_msg(&mut a, &header).await?;
        assert_eq!(read_msg::<_, Hello>(&mut b, MAX_CONTROL_FRAME).await?, hello());
        assert_eq!(read_msg::<_, ServerMsg>(&mut b, MAX_CONTROL_FRAME).await?, welcome);
        assert_eq!(read_msg::<_, StreamHeader>(&mut b, MAX_HEADER_FRAME).await?, header);
        Ok(())
    }

    #[tokio::test]
    async fn read_leaves_following_bytes_in_place() -> anyhow::Result<()> {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let header = StreamHeader::visitor(1, "127.0.0.1:1".parse()?);
        write_msg(&mut a, &header).await?;
        a.write_all(b"GET / HTTP/1.1\r\n").await?;
        drop(a);
        let _: StreamHeader = read_msg(&mut b, MAX_HEADER_FRAME).await?;
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await?;
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        Ok(())
    }

    #[tokio::test]
    async fn oversized_length_is_rejected_before_allocating() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_msg::<_, Hello>(&mut b, MAX_CONTROL_FRAME).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len == u32::MAX as usize));
    }

    #[tokio::test]
    async fn garbage_body_is_malformed() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
        let err = read_msg::<_, Hello>(&mut b, MAX_CONTROL_FRAME).await.unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 10, 1, 2]).await.unwrap();
        drop(a);
        assert!(read_msg::<_, Hello>(&mut b, MAX_CONTROL_FRAME).await.is_err());
    }

    #[tokio::test]
    async fn empty_stream_is_eof() {
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        let err = read_msg::<_, Hello>(&mut b, MAX_CONTROL_FRAME).await.unwrap_err();
        assert!(matches!(err, FrameError::Eof));
    }
}
