//! The TCP link, for networks that block UDP: TLS 1.3 over TCP, its streams multiplexed as
//! HTTP/2 streams by the `h2` crate (per-stream flow control, reset codes, PING), so a
//! session above it sees the same [`Link`] as over QUIC.
//!
//! HTTP/2 lets only its client open streams, and the relay opens every visitor's stream, so
//! the relay is the HTTP/2 client although the agent dialed the connection. At the start the
//! relay also opens the two streams the agent needs: the one the agent "opens" (its control
//! stream, handed out once by the agent's [`Link::open`] and the relay's [`Link::accept`]),
//! and the link stream, which carries in framed messages what QUIC has frames for: datagrams
//! and the close code. Liveness is HTTP/2 PING every keep-alive interval, which also measures
//! the round trip; a peer silent for the idle timeout ends the link.

mod counted;
mod stream;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2::{Ping, PingPong};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{mpsc, oneshot, watch},
};

use self::counted::{Counted, Counters};
pub use self::stream::{TcpReader, TcpWriter};
use super::{DatagramError, Link, LinkError, LinkStatus, PathStats};
use crate::{
    CloseCode,
    protocol::frame,
    sync,
    transport::{AGENT_MAX_STREAMS, CONNECTION_RECEIVE_WINDOW, STREAM_RECEIVE_WINDOW},
};

/// The largest datagram a TCP link carries: the most QUIC carries on the smallest path it
/// allows, so a payload that fits one transport fits the other.
pub const TCP_MAX_DATAGRAM: usize = 1200;

/// HTTP/2 frames of up to this many bytes: fewer frame headers and wake-ups per bulk
/// transfer than HTTP/2's default 16 KiB.
const MAX_FRAME: u32 = 64 * 1024;

/// Our requests carry a path and nothing else.
const MAX_HEADERS: u32 = 1024;

/// Bytes the multiplexer queues per stream before the writer waits: a little over a
/// stream's receive window, so one stream can fill its window in one round trip.
const MAX_SEND_BUFFER: usize = STREAM_RECEIVE_WINDOW as usize + 64 * 1024;

/// How long a closed link keeps its connection for what was sent before the close (the
/// close code, a refusal) to reach the peer, unless the peer closes first.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// A link frame holds one datagram or a close code.
const MAX_LINK_FRAME: usize = TCP_MAX_DATAGRAM + 16;

const AGENT_PATH: &str = "/agent";
const LINK_PATH: &str = "/link";
const VISITOR_PATH: &str = "/visitor";

/// What the link stream carries.
#[derive(Debug, Serialize, Deserialize)]
enum LinkFrame {
    Datagram(Vec<u8>),
    Close(u64),
}

/// How one end runs its TCP links.
#[derive(Debug, Clone, Copy)]
pub struct TcpSettings {
    /// How often a PING goes out, which keeps NAT and proxy mappings alive and measures the
    /// round trip.
    pub keep_alive: Duration,
    /// A peer silent this long has gone.
    pub idle_timeout: Duration,
    /// Bytes the peer may have in flight across all streams at first; see [`Link::allow_receive`].
    pub receive_window: u32,
    /// Datagrams held unread; more are dropped. Zero takes none.
    pub datagram_queue: usize,
}

impl TcpSettings {
    /// The agent's end: it keeps the path alive and takes the relay's streams.
    pub fn agent(keep_alive: Duration, idle_timeout: Duration) -> Self {
        Self { keep_alive, idle_timeout, receive_window: CONNECTION_RECEIVE_WINDOW, datagram_queue: 1024 }
    }

    /// The relay's end: a peer may send little until it is welcomed.
    pub fn relay(idle_timeout: Duration) -> Self {
        Self {
            keep_alive: idle_timeout / 3,
            idle_timeout,
            receive_window: crate::transport::PRE_AUTH_RECEIVE_WINDOW,
            // The QUIC relay's datagram buffer in the largest TCP link datagrams.
            datagram_queue: 256 * 1024 / TCP_MAX_DATAGRAM,
        }
    }
}

/// A TLS connection over TCP as a [`Link`]. Cheap to clone; the connection ends when the
/// last clone is dropped, as a QUIC connection does.
#[derive(Clone)]
pub struct TcpLink(Arc<Handle>);

/// Dropped with the last clone of the link.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        if self.0.close_reason().is_none() {
            self.0.end(LinkError::LocallyClosed);
            self.0.commands.send(Command::Stop).ok();
        }
    }
}

type Halves = (TcpWriter, TcpReader);

/// What the link's handles, its connection task and its helper tasks share.
struct Shared {
    peer: SocketAddr,
    /// The relay's handle for opening visitor streams; `None` on the agent.
    opener: Option<h2::client::SendRequest<Bytes>>,
    /// The stream the agent opens, given out once.
    agent_stream: tokio::sync::Mutex<Option<oneshot::Receiver<Halves>>>,
    /// Streams the relay opened, on the agent.
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<Halves>>,
    link_stream: Mutex<Option<TcpWriter>>,
    datagrams: tokio::sync::Mutex<mpsc::Receiver<Bytes>>,
    end: watch::Sender<Option<LinkError>>,
    commands: mpsc::UnboundedSender<Command>,
    counters: Arc<Counters>,
    rtt_us: AtomicU64,
    probe: tokio::sync::Notify,
    /// Datagrams dropped: sent while the link was backed up, or arrived with the queue full.
    dropped_datagrams: AtomicU64,
    /// Set once the connection is gone, what was queued before a close sent or given up.
    gone: watch::Sender<bool>,
}

/// What the connection task is asked to do.
enum Command {
    ReceiveWindow(u32),
    /// The link was closed: keep the connection for [`CLOSE_LINGER`] at most.
    Linger,
    Stop,
}

/// What the constructors set up before the connection task starts.
struct Parts {
    peer: SocketAddr,
    counters: Arc<Counters>,
    settings: TcpSettings,
    handshake_rtt: Duration,
}

impl Shared {
    fn new(parts: &Parts, opener: Option<h2::client::SendRequest<Bytes>>) -> (Self, Channels) {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming) = mpsc::unbounded_channel();
        let (datagram_tx, datagrams) = mpsc::channel(parts.settings.datagram_queue.max(1));
        let (agent_stream_tx, agent_stream) = oneshot::channel();
        let shared = Self {
            peer: parts.peer,
            opener,
            agent_stream: tokio::sync::Mutex::new(Some(agent_stream)),
            incoming: tokio::sync::Mutex::new(incoming),
            link_stream: Mutex::new(None),
            datagrams: tokio::sync::Mutex::new(datagrams),
            end: watch::Sender::new(None),
            commands,
            counters: parts.counters.clone(),
            rtt_us: AtomicU64::new(parts.handshake_rtt.as_micros() as u64),
            probe: tokio::sync::Notify::new(),
            dropped_datagrams: AtomicU64::new(0),
            gone: watch::Sender::new(false),
        };
        let channels = Channels {
            commands: commands_rx,
            incoming: incoming_tx,
            datagrams: datagram_tx,
            agent_stream: Some(agent_stream_tx),
            takes_datagrams: parts.settings.datagram_queue > 0,
        };
        (shared, channels)
    }

    /// Records why the link ended, unless it had ended already; says whether this did it.
    fn end(&self, why: LinkError) -> bool {
        self.end.send_if_modified(|end| {
            if end.is_some() {
                return false;
            }
            *end = Some(why);
            true
        })
    }

    fn close_reason(&self) -> Option<LinkError> {
        self.end.borrow().clone()
    }

    async fn closed(&self) -> LinkError {
        let mut end = self.end.subscribe();
        match end.wait_for(Option::is_some).await {
            Ok(end) => end.clone().unwrap_or(LinkError::LocallyClosed),
            Err(_) => LinkError::LocallyClosed,
        }
    }

    /// The error an operation meets: the link's end if it has ended, else `e`.
    fn lost(&self, e: h2::Error) -> LinkError {
        self.close_reason().unwrap_or_else(|| LinkError::Transport(Arc::new(e)))
    }
}

/// The connection task's ends of the link's channels.
struct Channels {
    commands: mpsc::UnboundedReceiver<Command>,
    incoming: mpsc::UnboundedSender<Halves>,
    datagrams: mpsc::Sender<Bytes>,
    agent_stream: Option<oneshot::Sender<Halves>>,
    takes_datagrams: bool,
}

fn request(path: &str) -> http::Request<()> {
    let mut request = http::Request::new(());
    *request.uri_mut() = http::Uri::from_static(match path {
        AGENT_PATH => "https://burrow/agent",
        LINK_PATH => "https://burrow/link",
        _ => "https://burrow/visitor",
    });
    request
}

fn transport_error(e: impl std::error::Error + Send + Sync + 'static) -> LinkError {
    LinkError::Transport(Arc::new(e))
}

impl TcpLink {
    /// The relay's end of a link, over the TLS stream an agent dialed.
    pub async fn relay_side<T>(io: T, peer: SocketAddr, settings: TcpSettings) -> Result<Self, LinkError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let started = Instant::now();
        let counters = Arc::new(Counters::new());
        let io = Counted { inner: io, counters: counters.clone() };
        let (opener, mut conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_RECEIVE_WINDOW)
            .initial_connection_window_size(settings.receive_window)
            .max_frame_size(MAX_FRAME)
            .max_header_list_size(MAX_HEADERS)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(transport_error)?;
        let pings = conn.ping_pong();
        let parts = Parts { peer, counters, settings, handshake_rtt: started.elapsed() };
        let (shared, mut channels) = Shared::new(&parts, Some(opener.clone()));
        let shared = Arc::new(shared);
        let mut ready = opener.ready().await.map_err(|e| shared.lost(e))?;
        let (link_response, link_send) = ready.send_request(request(LINK_PATH), false).map_err(|e| shared.lost(e))?;
        let (agent_response, agent_send) =
            ready.send_request(request(AGENT_PATH), false).map_err(|e| shared.lost(e))?;
        let (mut link_writer, link_reader) = stream::opened(link_send, link_response);
        link_writer.expect_datagrams();
        *sync::lock(&shared.link_stream) = Some(link_writer);
        if let Some(tx) = channels.agent_stream.take() {
            tx.send(stream::opened(agent_send, agent_response)).ok();
        }
        spawn_helpers(&shared, &mut channels, link_reader, pings, &parts);
        tokio::spawn(drive(conn, channels, shared.clone()));
        Ok(Self(Arc::new(Handle(shared))))
    }

    /// The agent's end of a link, over the TLS stream it dialed to the relay.
    pub async fn agent_side<T>(io: T, peer: SocketAddr, settings: TcpSettings) -> Result<Self, LinkError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let started = Instant::now();
        let counters = Arc::new(Counters::new());
        let io = Counted { inner: io, counters: counters.clone() };
        let mut conn = h2::server::Builder::new()
            .initial_window_size(STREAM_RECEIVE_WINDOW)
            .initial_connection_window_size(settings.receive_window)
            .max_frame_size(MAX_FRAME)
            .max_header_list_size(MAX_HEADERS)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_concurrent_streams(AGENT_MAX_STREAMS)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(transport_error)?;
        let pings = conn.ping_pong();
        let parts = Parts { peer, counters, settings, handshake_rtt: started.elapsed() };
        let (shared, channels) = Shared::new(&parts, None);
        let shared = Arc::new(shared);
        tokio::spawn(drive(conn, channels, shared.clone()));
        tokio::spawn(keep_alive(pings, shared.clone(), settings));
        Ok(Self(Arc::new(Handle(shared))))
    }

    fn shared(&self) -> &Shared {
        &self.0.0
    }

    /// Waits until the connection is gone: after [`Link::close`], until the close code has
    /// gone out and the peer hung up, or the linger ran out.
    pub async fn gone(&self) {
        self.shared().gone.subscribe().wait_for(|gone| *gone).await.ok();
    }

    /// Datagrams dropped so far, either way.
    pub fn dropped_datagrams(&self) -> u64 {
        self.shared().dropped_datagrams.load(Relaxed)
    }
}

/// The link stream's reader and, on the relay, the keep-alive: started once the link stream
/// exists.
fn spawn_helpers(
    shared: &Arc<Shared>,
    channels: &mut Channels,
    link_reader: TcpReader,
    pings: Option<PingPong>,
    parts: &Parts,
) {
    let datagrams = channels.takes_datagrams.then(|| channels.datagrams.clone());
    tokio::spawn(read_link_stream(link_reader, datagrams, shared.clone()));
    tokio::spawn(keep_alive(pings, shared.clone(), parts.settings));
}

/// One end's HTTP/2 connection, as the connection task drives it.
trait Connection {
    fn set_receive_window(&mut self, size: u32);
    /// Drives the connection; ready once it has ended.
    fn poll_run(
        &mut self,
        cx: &mut Context<'_>,
        channels: &mut Channels,
        shared: &Arc<Shared>,
    ) -> Poll<Result<(), h2::Error>>;
}

/// The relay's end: polling the connection is all it needs.
impl<T: AsyncRead + AsyncWrite + Unpin> Connection for h2::client::Connection<Counted<T>, Bytes> {
    fn set_receive_window(&mut self, size: u32) {
        self.set_target_window_size(size);
    }

    fn poll_run(&mut self, cx: &mut Context<'_>, _: &mut Channels, _: &Arc<Shared>) -> Poll<Result<(), h2::Error>> {
        Pin::new(self).poll(cx)
    }
}

/// The agent's end: it hands out the streams the relay opens.
impl<T: AsyncRead + AsyncWrite + Unpin> Connection for h2::server::Connection<Counted<T>, Bytes> {
    fn set_receive_window(&mut self, size: u32) {
        self.set_target_window_size(size);
    }

    fn poll_run(
        &mut self,
        cx: &mut Context<'_>,
        channels: &mut Channels,
        shared: &Arc<Shared>,
    ) -> Poll<Result<(), h2::Error>> {
        loop {
            let (request, mut respond) = match self.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Some(Ok(accepted))) => accepted,
            };
            // A stream reset before it was answered needs nothing more.
            let Ok(send) = respond.send_response(http::Response::new(()), false) else { continue };
            let path = request.uri().path().to_string();
            let halves = stream::accepted(send, request.into_body());
            match path.as_str() {
                LINK_PATH => {
                    let (mut writer, reader) = halves;
                    writer.expect_datagrams();
                    *sync::lock(&shared.link_stream) = Some(writer);
                    let datagrams = channels.takes_datagrams.then(|| channels.datagrams.clone());
                    tokio::spawn(read_link_stream(reader, datagrams, shared.clone()));
                }
                AGENT_PATH => {
                    if let Some(tx) = channels.agent_stream.take() {
                        tx.send(halves).ok();
                    }
                }
                _ => {
                    channels.incoming.send(halves).ok();
                }
            }
        }
    }
}

/// Runs one end's HTTP/2 connection until it ends or the link is closed.
async fn drive(mut conn: impl Connection, mut channels: Channels, shared: Arc<Shared>) {
    let mut linger = None;
    let ended = std::future::poll_fn(|cx| {
        if let Poll::Ready(done) =
            poll_commands(&mut channels.commands, &mut linger, cx, |size| conn.set_receive_window(size))
        {
            return Poll::Ready(done);
        }
        conn.poll_run(cx, &mut channels, &shared)
    })
    .await;
    finished(&shared, ended);
}

/// Applies what the link's handles asked; ready when the connection is to be dropped.
fn poll_commands(
    commands: &mut mpsc::UnboundedReceiver<Command>,
    linger: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    cx: &mut Context<'_>,
    mut set_window: impl FnMut(u32),
) -> Poll<Result<(), h2::Error>> {
    while let Poll::Ready(Some(command)) = commands.poll_recv(cx) {
        match command {
            Command::ReceiveWindow(size) => set_window(size),
            Command::Linger => {
                linger.get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_LINGER)));
            }
            Command::Stop => return Poll::Ready(Ok(())),
        }
    }
    match linger.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
        Some(Poll::Ready(())) => Poll::Ready(Ok(())),
        _ => Poll::Pending,
    }
}

/// The connection is gone: the link has ended, for this reason unless an earlier one.
fn finished(shared: &Shared, ended: Result<(), h2::Error>) {
    let why = match ended {
        Ok(()) => io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the TCP connection"),
        Err(e) => match e.into_io() {
            Some(io) => io,
            None => io::Error::other("HTTP/2 protocol error on the link"),
        },
    };
    shared.end(match why.kind() {
        io::ErrorKind::TimedOut => LinkError::TimedOut,
        _ => LinkError::Transport(Arc::new(why)),
    });
    shared.gone.send_replace(true);
}

/// Reads datagrams and the close code from the link stream.
async fn read_link_stream(mut reader: TcpReader, datagrams: Option<mpsc::Sender<Bytes>>, shared: Arc<Shared>) {
    loop {
        match frame::read_msg::<_, LinkFrame>(&mut reader, MAX_LINK_FRAME).await {
            Ok(LinkFrame::Datagram(datagram)) => {
                let queued = datagrams.as_ref().is_some_and(|tx| tx.try_send(Bytes::from(datagram)).is_ok());
                if !queued {
                    shared.dropped_datagrams.fetch_add(1, Relaxed);
                }
            }
            Ok(LinkFrame::Close(code)) => {
                let why = match quinn::VarInt::from_u64(code).ok().and_then(CloseCode::from_code) {
                    Some(code) => LinkError::Closed(code),
                    None => LinkError::UnknownCode(code),
                };
                shared.end(why);
                shared.commands.send(Command::Linger).ok();
                return;
            }
            Err(_) => return,
        }
    }
}

/// Pings the peer every keep-alive interval and when asked; ends the link once the peer has
/// been silent for the idle timeout.
async fn keep_alive(pings: Option<PingPong>, shared: Arc<Shared>, settings: TcpSettings) {
    let Some(mut pings) = pings else { return };
    let mut tick = tokio::time::interval(settings.keep_alive.min(settings.idle_timeout / 2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.probe.notified() => {}
            _ = shared.closed() => return,
        }
        if shared.counters.silent_for() >= settings.idle_timeout {
            if shared.end(LinkError::TimedOut) {
                shared.commands.send(Command::Stop).ok();
            }
            return;
        }
        let sent = Instant::now();
        // One PING is in flight at a time; an unanswered one is given up at the next tick.
        if let Ok(Ok(_)) = tokio::time::timeout(settings.keep_alive, pings.ping(Ping::opaque())).await {
            shared.rtt_us.store(sent.elapsed().as_micros() as u64, Relaxed);
        }
    }
}

impl Link for TcpLink {
    type Writer = TcpWriter;
    type Reader = TcpReader;

    async fn open(&self) -> Result<Halves, LinkError> {
        let shared = self.shared();
        if let Some(end) = shared.close_reason() {
            return Err(end);
        }
        let Some(opener) = shared.opener.clone() else {
            return self.take_agent_stream().await;
        };
        let mut ready = opener.ready().await.map_err(|e| shared.lost(e))?;
        let (response, send) = ready.send_request(request(VISITOR_PATH), false).map_err(|e| shared.lost(e))?;
        Ok(stream::opened(send, response))
    }

    async fn accept(&self) -> Result<Halves, LinkError> {
        let shared = self.shared();
        if shared.opener.is_some() {
            // The relay accepts one stream: the one it opened for the agent.
            return match self.take_agent_stream().await {
                Ok(halves) => Ok(halves),
                Err(_) => Err(shared.closed().await),
            };
        }
        let mut incoming = shared.incoming.lock().await;
        tokio::select! {
            biased;
            next = incoming.recv() => match next {
                Some(halves) => Ok(halves),
                None => Err(shared.closed().await),
            },
            end = shared.closed() => Err(end),
        }
    }

    fn allow_streams(&self, _: u32) {
        // Fixed when the link starts: HTTP/2 streams cost a map entry, not a buffer slot.
    }

    fn allow_receive(&self, bytes: u64) {
        let size = u32::try_from(bytes).unwrap_or(u32::MAX >> 1).min(i32::MAX as u32);
        self.shared().commands.send(Command::ReceiveWindow(size)).ok();
    }

    fn send_datagram(&self, datagram: Bytes) -> Result<(), DatagramError> {
        let shared = self.shared();
        if let Some(end) = shared.close_reason() {
            return Err(DatagramError::Lost(end));
        }
        if datagram.len() > TCP_MAX_DATAGRAM {
            return Err(DatagramError::TooLarge);
        }
        let frame = frame::encode(&LinkFrame::Datagram(datagram.to_vec()))
            .map_err(|e| DatagramError::Lost(transport_error(e)))?;
        // Dropped rather than queued behind a backed-up link, as QUIC drops it.
        let sent = sync::lock(&shared.link_stream).as_mut().is_some_and(|link| link.offer(Bytes::from(frame)));
        if !sent {
            shared.dropped_datagrams.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    async fn read_datagram(&self) -> Result<Bytes, LinkError> {
        let shared = self.shared();
        let mut datagrams = shared.datagrams.lock().await;
        tokio::select! {
            biased;
            next = datagrams.recv() => match next {
                Some(datagram) => Ok(datagram),
                None => Err(shared.closed().await),
            },
            end = shared.closed() => Err(end),
        }
    }

    fn max_datagram_size(&self) -> Option<usize> {
        Some(TCP_MAX_DATAGRAM)
    }

    fn elicit_answer(&self) -> Result<(), DatagramError> {
        let shared = self.shared();
        if let Some(end) = shared.close_reason() {
            return Err(DatagramError::Lost(end));
        }
        shared.probe.notify_one();
        Ok(())
    }

    fn close(&self, code: CloseCode) {
        let shared = self.shared();
        if !shared.end(LinkError::LocallyClosed) {
            return;
        }
        if let Ok(frame) = frame::encode(&LinkFrame::Close(code.code().into_inner()))
            && let Some(link) = sync::lock(&shared.link_stream).as_mut()
        {
            link.send_last(Bytes::from(frame));
        }
        shared.commands.send(Command::Linger).ok();
    }

    async fn closed(&self) -> LinkError {
        self.shared().closed().await
    }
}

impl TcpLink {
    /// The agent's one stream, handed out once.
    async fn take_agent_stream(&self) -> Result<Halves, LinkError> {
        let shared = self.shared();
        let pending = shared.agent_stream.lock().await.take();
        let Some(pending) = pending else {
            return Err(transport_error(io::Error::other("the agent opens one stream per TCP link")));
        };
        tokio::select! {
            opened = pending => opened.map_err(|_| shared.close_reason().unwrap_or(LinkError::LocallyClosed)),
            end = shared.closed() => Err(end),
        }
    }
}

impl LinkStatus for TcpLink {
    fn stable_id(&self) -> usize {
        Arc::as_ptr(&self.0.0) as usize
    }

    fn peer(&self) -> SocketAddr {
        self.shared().peer
    }

    fn path(&self) -> PathStats {
        let counters = &self.shared().counters;
        PathStats {
            rtt: Duration::from_micros(self.shared().rtt_us.load(Relaxed)),
            lost_packets: 0,
            sent_packets: counters.writes.load(Relaxed),
            received_packets: counters.reads.load(Relaxed),
            congestion_window: 0,
            mtu: 0,
            sent_bytes: counters.sent_bytes.load(Relaxed),
            received_bytes: counters.received_bytes.load(Relaxed),
        }
    }

    fn close_reason(&self) -> Option<LinkError> {
        self.shared().close_reason()
    }
}

#[cfg(test)]
mod tests;
