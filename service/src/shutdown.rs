//! Graceful stop on a signal.

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what `./setup.sh stop` sends). A signal that cannot
/// be listened for is logged and ignored: the other one still stops the program.
pub async fn shutdown_signal() {
    listen().await
}

/// Starts listening for both signals at once, before the first poll, so that a signal sent
/// right after this returns is not missed.
fn listen() -> impl Future<Output = ()> {
    let interrupt = on(SignalKind::interrupt(), "SIGINT");
    let terminate = on(SignalKind::terminate(), "SIGTERM");
    async move {
        tokio::select! {
            () = interrupt => {},
            () = terminate => {},
        }
        tracing::info!("shutting down");
    }
}

fn on(kind: SignalKind, name: &'static str) -> impl Future<Output = ()> {
    let listener = signal(kind);
    async move {
        match listener {
            Ok(mut listener) => {
                listener.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for {name}: {e}");
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    // One test only: a signal reaches every listener of the process, so two tests that listen
    // at once would see each other's signal.
    #[tokio::test]
    async fn only_a_signal_ends_the_wait() {
        let mut stopped = Box::pin(listen());
        let early = tokio::time::timeout(Duration::from_millis(50), &mut stopped).await;
        assert!(early.is_err(), "the wait ended without a signal");
        // SAFETY: sends a signal to this very process, whose SIGTERM handler `listen` installed.
        assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
        tokio::time::timeout(Duration::from_secs(5), stopped).await.expect("SIGTERM ends the wait");
    }
}
