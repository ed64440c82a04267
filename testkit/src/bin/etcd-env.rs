//! etcd for tests outside Rust (the browser tests): starts `testkit::etcd` on loopback, writes
//! the relay's `store.url` for it to a ready file as JSON, and stops etcd at SIGTERM or SIGINT.
//!
//! `etcd-env --ready-file FILE`

use std::path::PathBuf;

use anyhow::Context;
use testkit::etcd::Etcd;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ready_file: PathBuf = match args.as_slice() {
        [flag, file] if flag == "--ready-file" => file.into(),
        _ => anyhow::bail!("usage: etcd-env --ready-file FILE"),
    };
    if !Etcd::available()? {
        anyhow::bail!("etcd is not installed (scripts/test installs it)");
    }
    let etcd = Etcd::start().await?;
    let ready = serde_json::json!({ "url": etcd.url() });
    // Renamed into place, so a reader never sees half a file.
    let partial = ready_file.with_extension("partial");
    std::fs::write(&partial, serde_json::to_vec(&ready)?).with_context(|| format!("write {}", partial.display()))?;
    std::fs::rename(&partial, &ready_file)?;
    let (mut terminate, mut interrupt) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    drop(etcd);
    Ok(())
}
