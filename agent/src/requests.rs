//! The HTTP requests the agent has passed to local servers, for the inspector and the
//! console: each one's heads, the first part of each body, timing and outcome. Bodies are
//! copied as they stream, up to [`CAPTURE`] bytes each, so a large upload costs no more.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use hyper::{
    HeaderMap,
    body::{Body, Frame, SizeHint},
};
use serde::Serialize;

use crate::stats::lock;

/// Requests kept, newest first; older ones are forgotten.
pub const KEPT: usize = 100;
/// Bytes of each body kept for display.
pub const CAPTURE: usize = 64 * 1024;

#[derive(Default)]
pub(crate) struct RequestLog {
    entries: Mutex<VecDeque<Arc<Exchange>>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// One request and its response, filled in as they stream.
pub(crate) struct Exchange {
    pub(crate) id: u64,
    pub(crate) tunnel: String,
    /// None for a replay from the inspector.
    pub(crate) visitor: Option<SocketAddr>,
    pub(crate) replay_of: Option<u64>,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) request_headers: Vec<(String, String)>,
    started_at: SystemTime,
    started: Instant,
    state: Mutex<Progress>,
}

#[derive(Default)]
struct Progress {
    request_body: Captured,
    response: Option<(u16, Vec<(String, String)>)>,
    response_body: Captured,
    ended: Option<(Duration, Option<String>)>,
}

#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    size: u64,
    complete: bool,
}

impl Captured {
    fn add(&mut self, data: &[u8]) {
        let room = CAPTURE.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&data[..data.len().min(room)]);
        self.size += data.len() as u64;
    }
}

/// A request as listed: enough for one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RequestSummary {
    pub id: u64,
    pub tunnel: String,
    pub visitor: Option<SocketAddr>,
    pub replay_of: Option<u64>,
    /// Unix milliseconds.
    pub started_at: u64,
    pub method: String,
    pub path: String,
    pub status: Option<u16>,
    /// Until the response has been sent in full, or the request failed.
    pub duration_ms: Option<u64>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub error: Option<String>,
}

/// A request in full, as the inspector's detail view shows it.
#[derive(Debug, Serialize)]
pub struct RequestDetail {
    #[serde(flatten)]
    pub summary: RequestSummary,
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    pub request_body: BodyView,
    pub response_body: BodyView,
}

/// The kept start of a body: as text when it is UTF-8, else as hex.
#[derive(Debug, Serialize)]
pub struct BodyView {
    pub size: u64,
    /// Fewer bytes were kept than the body had.
    pub truncated: bool,
    pub text: Option<String>,
    pub hex: Option<String>,
}

/// Bytes of a binary body shown as hex; more would not help a person reading it.
const HEX_SHOWN: usize = 1024;

impl Captured {
    fn view(&self) -> BodyView {
        let truncated = self.size > self.kept.len() as u64;
        match std::str::from_utf8(&self.kept) {
            Ok(text) => BodyView { size: self.size, truncated, text: Some(text.to_string()), hex: None },
            // A multi-byte character cut at the capture limit is still text.
            Err(e) if truncated && e.error_len().is_none() => {
                let text = String::from_utf8_lossy(&self.kept[..e.valid_up_to()]).into_owned();
                BodyView { size: self.size, truncated, text: Some(text), hex: None }
            }
            Err(_) => {
                let shown = &self.kept[..self.kept.len().min(HEX_SHOWN)];
                BodyView {
                    size: self.size,
                    truncated: truncated || shown.len() < self.kept.len(),
                    text: None,
                    hex: Some(hex::encode(shown)),
                }
            }
        }
    }
}

pub(crate) fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            // Nearly every value is visible ASCII, which `to_str` checks faster than a UTF-8 decode.
            let value =
                value.to_str().map_or_else(|_| String::from_utf8_lossy(value.as_bytes()).into_owned(), str::to_string);
            (name.to_string(), value)
        })
        .collect()
}

impl RequestLog {
    /// Records a request whose head has just arrived.
    pub(crate) fn start(
        &self,
        tunnel: &str,
        visitor: Option<SocketAddr>,
        replay_of: Option<u64>,
        request: &hyper::http::request::Parts,
    ) -> Arc<Exchange> {
        let exchange = Arc::new(Exchange {
            id: self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
            tunnel: tunnel.to_string(),
            visitor,
            replay_of,
            method: request.method.to_string(),
            path: request.uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
            request_headers: header_pairs(&request.headers),
            started_at: SystemTime::now(),
            started: Instant::now(),
            state: Mutex::default(),
        });
        let mut entries = lock(&self.entries);
        entries.push_front(exchange.clone());
        entries.truncate(KEPT);
        exchange
    }

    /// The newest `count` requests, newest first.
    pub(crate) fn recent(&self, count: usize) -> Vec<RequestSummary> {
        lock(&self.entries).iter().take(count).map(|e| e.summary()).collect()
    }

    pub(crate) fn get(&self, id: u64) -> Option<Arc<Exchange>> {
        lock(&self.entries).iter().find(|e| e.id == id).cloned()
    }
}

impl Exchange {
    pub(crate) fn responded(&self, status: u16, headers: &HeaderMap) {
        lock(&self.state).response = Some((status, header_pairs(headers)));
    }

    /// Ends the exchange, once: with `error` if it failed.
    pub(crate) fn ended(&self, error: Option<String>) {
        let mut state = lock(&self.state);
        if state.ended.is_none() {
            state.ended = Some((self.started.elapsed(), error));
        }
    }

    pub(crate) fn summary(&self) -> RequestSummary {
        let state = lock(&self.state);
        let started_at = self.started_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        RequestSummary {
            id: self.id,
            tunnel: self.tunnel.clone(),
            visitor: self.visitor,
            replay_of: self.replay_of,
            started_at,
            method: self.method.clone(),
            path: self.path.clone(),
            status: state.response.as_ref().map(|(status, _)| *status),
            duration_ms: state.ended.as_ref().map(|(took, _)| took.as_millis() as u64),
            request_bytes: state.request_body.size,
            response_bytes: state.response_body.size,
            error: state.ended.as_ref().and_then(|(_, error)| error.clone()),
        }
    }

    pub(crate) fn detail(&self) -> RequestDetail {
        let summary = self.summary();
        let state = lock(&self.state);
        RequestDetail {
            summary,
            request_headers: self.request_headers.clone(),
            response_headers: state.response.as_ref().map(|(_, headers)| headers.clone()).unwrap_or_default(),
            request_body: state.request_body.view(),
            response_body: state.response_body.view(),
        }
    }

    /// The kept request body, for a replay.
    pub(crate) fn request_body(&self) -> (Bytes, bool) {
        let state = lock(&self.state);
        let body = &state.request_body;
        (Bytes::from(body.kept.clone()), body.size > body.kept.len() as u64)
    }
}

/// Which body of the exchange a [`Tap`] copies.
#[derive(Clone, Copy)]
pub(crate) enum Side {
    Request,
    Response,
}

/// A body passed on unchanged while its start is copied into the exchange; `done` runs when
/// the response body has ended, so the exchange's duration covers the whole answer.
pub(crate) struct Tap<B> {
    inner: B,
    exchange: Arc<Exchange>,
    side: Side,
    done: Option<Box<dyn FnOnce() + Send>>,
}

impl<B: Body> Tap<B> {
    pub(crate) fn new(inner: B, exchange: Arc<Exchange>, side: Side, done: Box<dyn FnOnce() + Send>) -> Self {
        let mut tap = Self { inner, exchange, side, done: Some(done) };
        // An empty body may never be polled; it has ended already.
        if tap.inner.is_end_stream() {
            tap.finish(None);
        }
        tap
    }
}

impl<B> Tap<B> {
    fn finish(&mut self, error: Option<String>) {
        let mut state = lock(&self.exchange.state);
        match self.side {
            Side::Request => state.request_body.complete = true,
            Side::Response => state.response_body.complete = true,
        }
        drop(state);
        if matches!(self.side, Side::Response) || error.is_some() {
            self.exchange.ended(error);
        }
        if let Some(done) = self.done.take() {
            done();
        }
    }
}

impl<B> Body for Tap<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let mut state = lock(&self.exchange.state);
                    match self.side {
                        Side::Request => state.request_body.add(data),
                        Side::Response => state.response_body.add(data),
                    }
                }
                if self.inner.is_end_stream() {
                    self.finish(None);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let error = format!("body failed: {e}");
                self.finish(Some(error));
            }
            Poll::Ready(None) => self.finish(None),
            Poll::Pending => {}
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

impl<B> Drop for Tap<B> {
    /// A response body dropped before its end was cut off (the visitor left).
    fn drop(&mut self) {
        if self.done.is_some() {
            let cut = matches!(self.side, Side::Response) && !self.inner_ended();
            self.finish(cut.then(|| "the visitor went away before the response ended".to_string()));
        }
    }
}

impl<B> Tap<B> {
    fn inner_ended(&self) -> bool {
        let state = lock(&self.exchange.state);
        match self.side {
            Side::Request => state.request_body.complete,
            Side::Response => state.response_body.complete,
        }
    }
}
