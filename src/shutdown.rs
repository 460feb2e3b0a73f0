//! SIGTERM/SIGINT handling with signal-hook: the first signal starts a graceful shutdown,
//! a second one exits at once (leases cover whatever was in flight).

use futures_util::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

/// A future that resolves at the first SIGTERM or SIGINT. Must be called inside a runtime.
pub fn on_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        while let Some(signal) = signals.next().await {
            match tx.take() {
                Some(tx) => {
                    tracing::info!(
                        signal,
                        "shutdown requested; send the signal again to exit at once"
                    );
                    let _ = tx.send(());
                }
                None => {
                    tracing::warn!(signal, "second signal: exiting now");
                    std::process::exit(130);
                }
            }
        }
    });
    Ok(async move {
        let _ = rx.await;
    })
}
