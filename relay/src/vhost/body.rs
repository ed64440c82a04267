//! A request body that tells when it has been sent in full, so the wait for the local
//! server's answer can start then rather than while a long upload is still crossing; and
//! that fails when the visitor keeps it waiting too long for its next bytes, so a trickled
//! upload cannot hold a connection and a stream for ever.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use burrow_common::deadline::WaitClock;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::pages::ErrorPage;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) struct NotifyOnEnd<B> {
    inner: B,
    ended: Option<oneshot::Sender<()>>,
    idle_limit: Duration,
    waiting: WaitClock,
}

/// Resolves once the body has ended, or has been dropped unfinished: either way nothing
/// more of it will cross.
pub(crate) struct EndSignal(oneshot::Receiver<()>);

/// The visitor sent nothing more of a request body for this long.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled for {0:?}")]
pub(crate) struct BodyStalled(pub(crate) Duration);

impl BodyStalled {
    /// A 408: the visitor is the one that stopped, and the connection closes after it.
    pub(crate) fn page(&self) -> ErrorPage {
        let limit = burrow_common::config::duration::format(self.0);
        let detail = format!("The request body stopped arriving for {limit}.");
        ErrorPage::new(hyper::StatusCode::REQUEST_TIMEOUT, "Request body too slow", detail)
    }
}

/// The stall that ended a request, if a stalled body is what failed it.
pub(crate) fn stalled(e: &hyper::Error) -> Option<&BodyStalled> {
    let mut cause = std::error::Error::source(e);
    while let Some(error) = cause {
        if let Some(stalled) = error.downcast_ref::<BodyStalled>() {
            return Some(stalled);
        }
        cause = error.source();
    }
    None
}

impl<B: Body + Unpin> NotifyOnEnd<B> {
    /// Wraps `inner`, which fails once the visitor has kept it waiting `idle_limit`.
    pub(crate) fn new(inner: B, idle_limit: Duration) -> (Self, EndSignal) {
        let (tx, rx) = oneshot::channel();
        let mut body = Self { inner, ended: Some(tx), idle_limit, waiting: WaitClock::default() };
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

impl<B> Body for NotifyOnEnd<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_pending() {
            let idle_limit = self.idle_limit;
            if self.waiting.waited_too_long(idle_limit, cx) {
                self.signal();
                return Poll::Ready(Some(Err(BodyStalled(self.idle_limit).into())));
            }
            return Poll::Pending;
        }
        self.waiting.progressed();
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) || self.inner.is_end_stream() {
            self.signal();
        }
        polled.map(|frame| frame.map(|frame| frame.map_err(Into::into)))
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
    use tokio::time::Instant;

    const LIMIT: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn signals_at_the_end_and_not_before() {
        let (mut tx, rx) = Channel::<Bytes, std::convert::Infallible>::new(1);
        let (mut body, mut ended) = NotifyOnEnd::new(rx, LIMIT);
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
        let (_body, ended) = NotifyOnEnd::new(Full::new(Bytes::new()), LIMIT);
        ended.await;
    }

    #[tokio::test]
    async fn dropping_an_unfinished_body_ends_the_wait() {
        let (body, ended) = NotifyOnEnd::new(Full::new(Bytes::from_static(b"never read")), LIMIT);
        drop(body);
        ended.await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_past_its_limit_fails_and_ends_the_wait() {
        let (mut tx, rx) = Channel::<Bytes, std::convert::Infallible>::new(1);
        let (mut body, ended) = NotifyOnEnd::new(rx, LIMIT);
        let started = Instant::now();
        tx.send_data(Bytes::from_static(b"part")).await.unwrap();
        assert!(body.frame().await.is_some_and(|frame| frame.is_ok()));
        tokio::time::sleep(LIMIT * 2).await;
        let failed = body.frame().await.expect("an error frame").unwrap_err();
        assert!(failed.downcast_ref::<BodyStalled>().is_some(), "{failed}");
        assert_eq!(started.elapsed(), LIMIT * 3, "only the time the body was asked for counts");
        ended.await;
        drop(tx);
    }
}
