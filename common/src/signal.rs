//! Process signals that end a run.

/// Cancels `token` on the first SIGINT (Ctrl-C) or SIGTERM. Returns once `token` is
/// cancelled, by a signal or by anything else, so it runs on the caller's task tracker and
/// ends with the run instead of outliving it.
pub async fn cancel_on_signal(token: tokio_util::sync::CancellationToken) {
    tokio::select! {
        () = token.cancelled() => {}
        signalled = shutdown_signal() => {
            if let Err(e) = signalled {
                tracing::error!("cannot listen for shutdown signals: {e}");
            }
            token.cancel();
        }
    }
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
