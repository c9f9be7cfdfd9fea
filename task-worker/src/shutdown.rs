//! Signals: the first SIGTERM or Ctrl-C asks for a graceful shutdown; a
//! second one exits at once (the broker requeues every unacknowledged message).

use tokio_util::sync::CancellationToken;

/// Waits for SIGINT/SIGTERM: cancels `shutdown` on the first, exits the
/// process on the second.
pub async fn on_signal(shutdown: CancellationToken) {
    if signal().await.is_err() {
        return;
    }
    tracing::warn!("shutdown requested: finishing running tasks (signal again to exit at once)");
    shutdown.cancel();
    if signal().await.is_ok() {
        tracing::warn!("second signal: exiting now; unfinished tasks return to their queues");
        std::process::exit(130);
    }
}

#[cfg(unix)]
async fn signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}

#[cfg(not(unix))]
async fn signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}
