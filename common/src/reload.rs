//! When to re-read a config file: its modification time or length changed (checked every
//! second), or the process got SIGHUP, as daemons conventionally take it.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tokio_util::sync::CancellationToken;

/// How often the file's modification time is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Watches one config file.
pub struct ConfigWatch {
    path: PathBuf,
    hangups: Hangups,
    seen: Option<(SystemTime, u64)>,
}

impl ConfigWatch {
    /// Starts listening for SIGHUP at once (needs a runtime), so a signal sent as soon as
    /// the process has said it is up is not taken for a request to terminate.
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), hangups: hangup_signals(), seen: stamp(path) }
    }

    /// Calls `reread` each time the file changes or SIGHUP arrives, until `cancel`.
    pub async fn run(mut self, cancel: &CancellationToken, mut reread: impl FnMut()) {
        let mut check = tokio::time::interval(CHECK_EVERY);
        loop {
            let signalled = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = check.tick() => false,
                _ = next_hangup(&mut self.hangups) => true,
            };
            let now = stamp(&self.path);
            if signalled || now != self.seen {
                self.seen = now;
                reread();
            }
        }
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())))
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

#[cfg(unix)]
fn hangup_signals() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .inspect_err(|e| tracing::warn!("cannot listen for SIGHUP: {e}"))
        .ok()
}

#[cfg(not(unix))]
fn hangup_signals() -> Option<()> {
    None
}

#[cfg(unix)]
async fn next_hangup(signals: &mut Option<tokio::signal::unix::Signal>) {
    match signals {
        Some(signals) => {
            signals.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Option<()>) {
    std::future::pending().await
}
