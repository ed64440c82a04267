//! A static HTTP/1.1 server for benchmarks: `GET /1k` and `GET /1m` answer with bodies of
//! 1 KiB and 1 MiB from memory, with keep-alive, so the server is never the bottleneck.
//!
//! `bench-http 127.0.0.1:0` prints `listening on ADDR` and serves until killed.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".into()).parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let small = Bytes::from(vec![b'k'; 1024]);
    let large = Bytes::from(vec![b'm'; 1024 * 1024]);
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true).ok();
        let (small, large) = (small.clone(), large.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let body = match request.uri().path() {
                    "/1k" => Some(small.clone()),
                    "/1m" => Some(large.clone()),
                    _ => None,
                };
                async move {
                    Ok::<_, Infallible>(match body {
                        Some(body) => Response::new(Full::new(body)),
                        None => {
                            let mut missing = Response::new(Full::new(Bytes::from_static(b"try /1k or /1m\n")));
                            *missing.status_mut() = StatusCode::NOT_FOUND;
                            missing
                        }
                    })
                }
            });
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await.ok();
        });
    }
}
