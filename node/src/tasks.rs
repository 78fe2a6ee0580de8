//! One way to stop. Every task a running node starts goes through [`Tasks`]: a cancellation
//! token that asks each service to stop, and a tracker that waits until all of them have, the
//! commands still running included.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

/// The node's tasks and the one signal that stops them. Cheap to clone; clones share both.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    /// A fresh set: nothing running, not stopping.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `work`, which runs to its own end; [`Tasks::stop`] waits for it. For work that
    /// must not be cut halfway (a command and its audit record, a lease step).
    pub fn spawn<F>(&self, work: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(work)
    }

    /// Spawns a service that runs until the node stops: `work` is dropped at its next await
    /// once [`Tasks::stop`] is called.
    pub fn spawn_service<F>(&self, work: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = work => {}
            }
        })
    }

    /// Completes when the node is asked to stop; for services that stop gracefully themselves
    /// (an HTTP server finishing its requests).
    pub fn stopping(&self) -> WaitForCancellationFutureOwned {
        self.stop.clone().cancelled_owned()
    }

    /// The token itself, for parts that take one (the gateway client).
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Whether [`Tasks::stop`] has been called.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// How many tasks are still running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }

    /// Asks every task to stop and waits up to `grace` for all of them to end. Returns how many
    /// were still running when the grace ran out (0 when all ended); those are dropped with the
    /// runtime, which loses nothing, since the store is written before any answer.
    pub async fn stop(&self, grace: Duration) -> usize {
        self.stop.cancel();
        self.tracker.close();
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_ends_services_and_waits_for_work() {
        let tasks = Tasks::new();
        tasks.spawn_service(std::future::pending());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = done_tx.send(());
        });
        assert_eq!(tasks.running(), 2);
        assert_eq!(tasks.stop(Duration::from_secs(5)).await, 0);
        assert!(
            done_rx.await.is_ok(),
            "work spawned before the stop ran to its end"
        );
        assert!(tasks.is_stopping());
    }

    #[tokio::test]
    async fn stop_reports_work_that_outlives_the_grace() {
        let tasks = Tasks::new();
        tasks.spawn(std::future::pending::<()>());
        assert_eq!(tasks.stop(Duration::from_millis(20)).await, 1);
    }
}
