//! `/api/events`: a server-sent event stream with a fresh snapshot after every change
//! (a burst of changes is sent once) and once a second, for durations and the path's RTT.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Response, StatusCode, body::Frame};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::Body;
use crate::stats::Stats;

const EVERY: Duration = Duration::from_secs(1);
/// Changes closer together than this share one event.
const SETTLE: Duration = Duration::from_millis(50);

pub(super) fn response(stats: Stats, tasks: &TaskTracker, cancel: CancellationToken) -> Response<Body> {
    let (events, receiver) = mpsc::channel(2);
    tasks.spawn(feed(stats, events, cancel));
    let mut response = Response::new(Events(receiver).boxed());
    *response.status_mut() = StatusCode::OK;
    super::headers(&mut response, "text/event-stream");
    response
}

/// Sends snapshots until the client goes away (its body, and so the receiver, is dropped).
async fn feed(stats: Stats, events: mpsc::Sender<Bytes>, cancel: CancellationToken) {
    let mut changes = stats.subscribe();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An interval's first tick is immediate; the first snapshot goes out below anyway.
    tick.tick().await;
    // Reconnect soon after an agent restart instead of the browser's default 3 s.
    if events.send(Bytes::from_static(b"retry: 1000\n\n")).await.is_err() {
        return;
    }
    loop {
        changes.mark_unchanged();
        let event = match serde_json::to_string(&stats.snapshot()) {
            Ok(json) => format!("data: {json}\n\n"),
            Err(e) => format!("event: failure\ndata: {e}\n\n"),
        };
        if events.send(Bytes::from(event)).await.is_err() {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                tokio::time::sleep(SETTLE).await;
            }
        }
    }
}

struct Events(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().0.poll_recv(cx).map(|event| event.map(|bytes| Ok(Frame::data(bytes))))
    }
}
