//! Local servers behind HTTP and TLS tunnels for the end-to-end tests: a web app with the
//! routes the tests need (upload, download, never-answering, server-sent events, echo as
//! JSON), deterministic bodies and their hashes, and WebSocket and TLS echo servers.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io::{Read, Write},
    net::SocketAddr,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use burrow_common::tls::Identity;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Frame, Incoming},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::Notify,
};
use tokio_tungstenite::tungstenite::Message;

use crate::{STEP, http::loopback, local_server};

type AppBody = BoxBody<Bytes, Infallible>;

/// A local web app behind a tunnel. It answers
/// - `/upload`: the SHA-256 and length of the request body, hashed as it streams in;
/// - `/download?bytes=N`: the first N bytes of [`pattern`], streamed;
/// - `/slow`: never;
/// - `/events`: one server-sent event at once, and a second and last one only after
///   [`LocalApp::finish_events`];
/// - anything else: the request as JSON: `{"app", "method", "path", "headers": {name: [values]}}`.
pub struct LocalApp {
    pub addr: SocketAddr,
    state: Arc<AppState>,
}

struct AppState {
    name: String,
    connections: AtomicUsize,
    events_gate: Arc<Notify>,
}

impl LocalApp {
    pub async fn start(name: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(loopback()).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(AppState {
            name: name.to_string(),
            connections: AtomicUsize::new(0),
            events_gate: Arc::default(),
        });
        let serving = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                serving.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_app(tcp, serving.clone()));
            }
        });
        Ok(Self { addr, state })
    }

    /// Connections the app has accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Lets the open `/events` response send its last event and end.
    pub fn finish_events(&self) {
        self.state.events_gate.notify_one();
    }
}

async fn serve_app(tcp: TcpStream, state: Arc<AppState>) {
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(state.answer(request).await) }
    });
    let served = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
    if let Err(e) = served {
        eprintln!("local app connection ended: {e}");
    }
}

impl AppState {
    async fn answer(&self, request: Request<Incoming>) -> Response<AppBody> {
        match request.uri().path() {
            "/upload" => upload(request.into_body()).await,
            "/download" => {
                let bytes = request.uri().query().and_then(|q| q.strip_prefix("bytes=")?.parse().ok());
                download(bytes.unwrap_or(0))
            }
            "/slow" => std::future::pending().await,
            "/events" => self.events(),
            _ => self.echo(&request),
        }
    }

    fn echo(&self, request: &Request<Incoming>) -> Response<AppBody> {
        let mut headers = BTreeMap::<String, Vec<String>>::new();
        for (name, value) in request.headers() {
            headers.entry(name.to_string()).or_default().push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let echoed = serde_json::json!({
            "app": self.name,
            "method": request.method().as_str(),
            "path": path,
            "headers": headers,
        });
        json_response(&echoed)
    }

    fn events(&self) -> Response<AppBody> {
        let (mut sender, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(1);
        let gate = self.events_gate.clone();
        tokio::spawn(async move {
            if sender.send_data(Bytes::from_static(b"data: first\n\n")).await.is_ok() {
                // A `finish_events` that came first left a permit, so it is not missed.
                gate.notified().await;
                sender.send_data(Bytes::from_static(b"data: last\n\n")).await.ok();
            }
        });
        let mut response = Response::new(body.boxed());
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, "text/event-stream".parse().expect("static value"));
        response
    }
}

fn json_response(value: &serde_json::Value) -> Response<AppBody> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, "application/json".parse().expect("static value"));
    response
}

async fn upload(mut body: Incoming) -> Response<AppBody> {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    digest.update(&data);
                    bytes += data.len() as u64;
                }
            }
            Err(e) => {
                let mut response = json_response(&serde_json::json!({ "error": e.to_string() }));
                *response.status_mut() = StatusCode::BAD_REQUEST;
                return response;
            }
        }
    }
    json_response(&serde_json::json!({ "sha256": hex(digest.finish().as_ref()), "bytes": bytes }))
}

fn download(bytes: u64) -> Response<AppBody> {
    let frames = futures_util::stream::iter(pattern(bytes).map(|chunk| Ok::<_, Infallible>(Frame::data(chunk))));
    Response::new(BodyExt::boxed(StreamBody::new(frames)))
}

/// Size of each chunk of [`pattern`].
pub const CHUNK: usize = 64 * 1024;

/// 64 KiB of pseudo-random bytes, the same in every run.
static BLOCK: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    (0..CHUNK)
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
});

/// `len` deterministic bytes in chunks of [`CHUNK`], made as they are pulled; each chunk
/// starts with its index, so a lost, repeated or reordered chunk changes the hash.
pub fn pattern(len: u64) -> impl Iterator<Item = Bytes> + Send + 'static {
    (0..len.div_ceil(CHUNK as u64)).map(move |index| {
        let start = index * CHUNK as u64;
        let size = usize::try_from((len - start).min(CHUNK as u64)).expect("a chunk is at most 64 KiB");
        let mut chunk = BLOCK[..size].to_vec();
        let stamp = index.to_be_bytes();
        let stamped = size.min(stamp.len());
        chunk[..stamped].copy_from_slice(&stamp[..stamped]);
        Bytes::from(chunk)
    })
}

/// The SHA-256 of `chunks`, in lowercase hex.
pub fn sha256_hex(chunks: impl IntoIterator<Item = Bytes>) -> String {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    for chunk in chunks {
        digest.update(&chunk);
    }
    hex(digest.finish().as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A local WebSocket server: greets each client with a text message, then echoes every text
/// and binary message back.
pub async fn websocket_echo() -> anyhow::Result<SocketAddr> {
    local_server(|tcp| async move {
        let mut ws = tokio_tungstenite::accept_async(tcp).await.map_err(std::io::Error::other)?;
        ws.send(Message::text("hello from the local server")).await.map_err(std::io::Error::other)?;
        while let Some(message) = ws.next().await {
            // tungstenite answers a Close itself, and ends the stream, on the next poll.
            if let echoed @ (Message::Text(_) | Message::Binary(_)) = message.map_err(std::io::Error::other)? {
                ws.send(echoed).await.map_err(std::io::Error::other)?;
            }
        }
        Ok(())
    })
    .await
}

/// A local server that switches to whatever protocol a request's `Upgrade` header names (and
/// on `/switch-anyway`, even when none is named), then echoes bytes. A request it does not
/// switch is answered 200 with its own head as the body, so a test can see what arrived.
pub async fn switching_app() -> anyhow::Result<SocketAddr> {
    local_server(|mut tcp| async move {
        let head = crate::read_head(&mut tcp).await.map_err(std::io::Error::other)?;
        let asked = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("upgrade").then(|| value.trim().to_string())
        });
        let anyway = head.starts_with("GET /switch-anyway ");
        match asked.or_else(|| anyway.then(|| "h2c".to_string())) {
            Some(protocol) => {
                let switch =
                    format!("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n");
                tcp.write_all(switch.as_bytes()).await?;
                let (mut reader, mut writer) = tcp.split();
                tokio::io::copy(&mut reader, &mut writer).await?;
            }
            None => {
                let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{head}", head.len());
                tcp.write_all(answer.as_bytes()).await?;
            }
        }
        Ok(())
    })
    .await
}

fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A local TLS server with a certificate of its own for one name, echoing what it reads.
pub struct TlsEcho {
    pub addr: SocketAddr,
    pub cert: CertificateDer<'static>,
}

/// Starts a [`TlsEcho`] for `name`. Each connection is served by blocking rustls on a thread
/// of its own, with socket timeouts so none can hang.
pub async fn tls_echo_server(name: &str) -> anyhow::Result<TlsEcho> {
    let generated = burrow_common::tls::self_signed(&[name.to_string()])?;
    let identity = Identity::from_pem(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes())?;
    let cert = identity.chain[0].clone();
    let config = rustls::ServerConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    let config = Arc::new(config);
    let listener = TcpListener::bind(loopback()).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let config = config.clone();
            match blocking(tcp) {
                Ok(tcp) => drop(tokio::task::spawn_blocking(move || tls_echo(tcp, config))),
                Err(e) => eprintln!("TLS echo: {e}"),
            }
        }
    });
    Ok(TlsEcho { addr, cert })
}

fn blocking(tcp: TcpStream) -> std::io::Result<std::net::TcpStream> {
    let tcp = tcp.into_std()?;
    tcp.set_nonblocking(false)?;
    tcp.set_read_timeout(Some(STEP))?;
    tcp.set_write_timeout(Some(STEP))?;
    Ok(tcp)
}

fn tls_echo(tcp: std::net::TcpStream, config: Arc<rustls::ServerConfig>) -> anyhow::Result<()> {
    let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(config)?, tcp);
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match tls.read(&mut buf) {
            Ok(n) => n,
            // The client may leave without a close_notify.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(());
        }
        tls.write_all(&buf[..n])?;
        tls.flush()?;
    }
}

/// Connects to `addr` with TLS for `server_name`, trusting only `trusted`; sends `data` and
/// reads as many bytes back.
pub async fn tls_round_trip(
    addr: SocketAddr,
    server_name: &str,
    trusted: CertificateDer<'static>,
    data: Vec<u8>,
) -> anyhow::Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted)?;
    let config = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string())?;
    tokio::task::spawn_blocking(move || {
        let tcp = std::net::TcpStream::connect_timeout(&addr, STEP)?;
        tcp.set_read_timeout(Some(STEP))?;
        tcp.set_write_timeout(Some(STEP))?;
        let mut tls = rustls::StreamOwned::new(rustls::ClientConnection::new(Arc::new(config), name)?, tcp);
        tls.write_all(&data)?;
        tls.flush()?;
        let mut back = vec![0; data.len()];
        tls.read_exact(&mut back)?;
        tls.conn.send_close_notify();
        tls.flush().ok();
        anyhow::Ok(back)
    })
    .await?
}
