//! The relay's admin endpoint as tests read it: status pages, metrics samples, the JSON API.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{STEP, in_process::TestRelay};

/// Status code and body of `GET path` on the admin endpoint.
pub async fn get(admin: SocketAddr, path: &str, bearer: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut tcp = TcpStream::connect(admin).await?;
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\n{auth}Connection: close\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    tokio::time::timeout(STEP, tcp.read_to_string(&mut response)).await??;
    let status = response.split_whitespace().nth(1).unwrap_or_default().parse()?;
    Ok((status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// The value of the sample named `series` (with its labels, if any) in a metrics page.
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

pub async fn metrics(relay: &TestRelay) -> anyhow::Result<String> {
    let (status, body) = get(relay.admin.expect("tests enable the admin endpoint"), "/metrics", None).await?;
    anyhow::ensure!(status == 200, "metrics answered {status}");
    Ok(body)
}

/// The metrics page once `series` reads `value`.
pub async fn settled(relay: &TestRelay, series: &str, value: f64) -> anyhow::Result<String> {
    tokio::time::timeout(STEP, async {
        loop {
            let page = metrics(relay).await?;
            if sample(&page, series) == Some(value) {
                return anyhow::Ok(page);
            }
            tokio::task::yield_now().await;
        }
    })
    .await?
}

/// Status, head and body of `GET path` on the admin endpoint, with `authorization` as the
/// whole value of the `Authorization` header when given (`Basic …`, `Bearer …`).
pub async fn get_authorized(
    admin: SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> anyhow::Result<(u16, String, String)> {
    let mut tcp = TcpStream::connect(admin).await?;
    let auth = authorization.map(|value| format!("Authorization: {value}\r\n")).unwrap_or_default();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\n{auth}Connection: close\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    tokio::time::timeout(STEP, tcp.read_to_string(&mut response)).await??;
    let (head, body) = response.split_once("\r\n\r\n").context("a response head")?;
    let status = head.split_whitespace().nth(1).unwrap_or_default().parse()?;
    Ok((status, head.to_string(), body.to_string()))
}

/// The JSON answer of the admin endpoint's `/api/{view}`.
pub async fn api(relay: &TestRelay, view: &str) -> anyhow::Result<serde_json::Value> {
    let admin = relay.admin.expect("tests enable the admin endpoint");
    let (status, body) = get(admin, &format!("/api/{view}"), None).await?;
    anyhow::ensure!(status == 200, "/api/{view} answered {status}: {body}");
    serde_json::from_str(&body).with_context(|| format!("/api/{view} is not JSON: {body}"))
}
