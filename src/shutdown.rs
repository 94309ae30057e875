//! Lifecycle of background work: one cancellation token and one task tracker
//! per node. Every background task is spawned here, named and traced, so a
//! shutdown can cancel all of them and wait for them with a deadline.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns a named background task. The task must watch [`Shutdown::token`]
    /// (or be short) so that shutdown can finish.
    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks
            .spawn(fut.instrument(tracing::debug_span!("task", name)));
    }

    /// Spawns a named, tracked task whose result the caller awaits.
    pub fn spawn_joinable<F>(
        &self,
        name: &'static str,
        fut: F,
    ) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks
            .spawn(fut.instrument(tracing::debug_span!("task", name)))
    }

    /// Tracks a future that someone else drives (an upgraded WebSocket).
    pub fn track<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> {
        self.tasks.track_future(fut)
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Signals every task to stop.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Waits for tracked tasks, at most `deadline`. Returns false when some
    /// were still running at the deadline.
    pub async fn wait(&self, deadline: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_ok()
    }

    /// Number of tasks still running (for tests and logs).
    pub fn running(&self) -> usize {
        self.tasks.len()
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wait_reports_tasks_that_ignore_cancellation() {
        let s = Shutdown::new();
        let token = s.token().clone();
        s.spawn("polite", async move { token.cancelled().await });
        s.spawn("stubborn", async {
            tokio::time::sleep(Duration::from_secs(3600)).await
        });
        s.trigger();
        assert!(!s.wait(Duration::from_secs(1)).await);
        assert_eq!(s.running(), 1);
    }

    #[tokio::test]
    async fn wait_returns_true_when_every_task_stops() {
        let s = Shutdown::new();
        let token = s.token().clone();
        s.spawn("polite", async move { token.cancelled().await });
        s.trigger();
        assert!(s.wait(Duration::from_secs(5)).await);
    }
}
