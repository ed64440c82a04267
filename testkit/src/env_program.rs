//! What the test kit's programs for tests outside Rust (`pebble-env`, `etcd-env`) share: the
//! ready file they write once their daemon answers, and the signal that stops them.

use std::path::Path;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

/// Writes `ready` as JSON to `file`, renamed into place so a reader never sees half a file.
pub fn publish_ready(file: &Path, ready: &serde_json::Value) -> anyhow::Result<()> {
    let partial = file.with_extension("partial");
    std::fs::write(&partial, serde_json::to_vec(ready)?).with_context(|| format!("write {}", partial.display()))?;
    std::fs::rename(&partial, file).with_context(|| format!("rename {} to {}", partial.display(), file.display()))
}

/// Waits for SIGTERM or SIGINT, after which the program drops (and so stops) its daemon.
pub async fn until_stopped() -> anyhow::Result<()> {
    let (mut terminate, mut interrupt) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}
