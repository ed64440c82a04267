//! A request body that tells when it has been sent in full, so the wait for the local
//! server's answer can start then rather than while a long upload is still crossing.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

pub(crate) struct NotifyOnEnd<B> {
    inner: B,
    ended: Option<oneshot::Sender<()>>,
}

/// Resolves once the body has ended, or has been dropped unfinished: either way nothing
/// more of it will cross.
pub(crate) struct EndSignal(oneshot::Receiver<()>);

impl<B: Body + Unpin> NotifyOnEnd<B> {
    pub(crate) fn new(inner: B) -> (Self, EndSignal) {
        let (tx, rx) = oneshot::channel();
        let mut body = Self { inner, ended: Some(tx) };
        if body.inner.is_end_stream() {
            body.signal();
        }
        (body, EndSignal(rx))
    }

    fn signal(&mut self) {
        if let Some(ended) = self.ended.take() {
            ended.send(()).ok();
        }
    }
}

impl<B: Body + Unpin> Body for NotifyOnEnd<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) || self.inner.is_end_stream() {
            self.signal();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl std::future::Future for EndSignal {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, channel::Channel};

    #[tokio::test]
    async fn signals_at_the_end_and_not_before() {
        let (mut tx, rx) = Channel::<Bytes, std::convert::Infallible>::new(1);
        let (mut body, mut ended) = NotifyOnEnd::new(rx);
        tx.send_data(Bytes::from_static(b"part")).await.unwrap();
        assert!(body.frame().await.is_some());
        let early = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut ended).poll(cx).is_ready())).await;
        assert!(!early, "not ended while more may come");
        drop(tx);
        assert!(body.frame().await.is_none());
        ended.await;
    }

    #[tokio::test]
    async fn an_empty_body_has_ended_already() {
        let (_body, ended) = NotifyOnEnd::new(Full::new(Bytes::new()));
        ended.await;
    }

    #[tokio::test]
    async fn dropping_an_unfinished_body_ends_the_wait() {
        let (body, ended) = NotifyOnEnd::new(Full::new(Bytes::from_static(b"never read")));
        drop(body);
        ended.await;
    }
}
