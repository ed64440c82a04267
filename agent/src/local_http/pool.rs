//! The agent's keep-alive connections to one HTTP tunnel's local server. A visitor stream
//! takes a connection for its first request and keeps it for the next ones, as a TCP tunnel
//! keeps its one local connection, so a request costs no pool lookup and no task of its own;
//! the connection goes back to the pool when the stream ends, for the next visitor.

use std::{
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use hyper::{Request, Response, body::Incoming, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Body;
use crate::{config::LocalTarget, stats::lock};

/// Idle connections to the local server are kept this long for the next visitor.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Why a request did not reach the local server, or got no answer from it.
#[derive(Debug)]
pub(super) enum LocalError {
    Connect(std::io::Error),
    Http(hyper::Error),
}

pub(super) type Sender = SendRequest<Body>;

pub(super) struct Pool {
    local: LocalTarget,
    idle: Arc<Mutex<Vec<(Sender, Instant)>>>,
}

impl Pool {
    pub(super) fn new(local: LocalTarget) -> Self {
        Self { local, idle: Arc::default() }
    }

    /// Sends `request` on `held`, the stream's connection, or on a pooled or new one when it
    /// has none or it closed; returns the response and the connection that carried it. A
    /// request refused by a kept connection that closed before it was sent goes on another.
    pub(super) async fn send(
        &self,
        held: Option<Sender>,
        mut request: Request<Body>,
    ) -> Result<(Response<Incoming>, Sender), LocalError> {
        let mut held = held;
        loop {
            let (mut sender, reused) = match held.take().filter(|s| !s.is_closed()).or_else(|| self.checkout()) {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            if let Err(e) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(LocalError::Http(e));
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(LocalError::Http(failed.into_error())),
                },
            }
        }
    }

    /// Keeps `sender` for the next visitor, if its connection is idle and open.
    pub(super) fn put_back(&self, sender: Sender) {
        if !sender.is_ready() {
            return;
        }
        let mut idle = lock(&self.idle);
        let first = idle.is_empty();
        idle.push((sender, Instant::now()));
        drop(idle);
        if first {
            tokio::spawn(expire(Arc::downgrade(&self.idle)));
        }
    }

    fn checkout(&self) -> Option<Sender> {
        let mut idle = lock(&self.idle);
        while let Some((sender, since)) = idle.pop() {
            if since.elapsed() < POOL_IDLE && sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Sender, LocalError> {
        let tcp = TcpStream::connect((self.local.host.as_str(), self.local.port)).await.map_err(LocalError::Connect)?;
        tcp.set_nodelay(true).map_err(LocalError::Connect)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(LocalError::Http)?;
        // The connection ends once its last sender is dropped, or the local server closes it.
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!("connection to the local server ended: {e}");
            }
        });
        Ok(sender)
    }
}

/// Closes the pool's connections that stayed idle for [`POOL_IDLE`]; ends when the pool is
/// empty or gone.
async fn expire(idle: Weak<Mutex<Vec<(Sender, Instant)>>>) {
    loop {
        tokio::time::sleep(POOL_IDLE / 2).await;
        let Some(idle) = idle.upgrade() else { return };
        let mut idle = lock(&idle);
        idle.retain(|(sender, since)| since.elapsed() < POOL_IDLE && !sender.is_closed());
        if idle.is_empty() {
            return;
        }
    }
}
