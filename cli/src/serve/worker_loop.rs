//! The in-process worker: the `edgethumb work` runner over the queue the handler enqueues
//! on, writing into the one store `serve` serves.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use edgethumb::metrics::Registry;
use edgethumb::queue::JobQueue;
use edgethumb::store::ObjectStore;
use edgethumb::worker::{Runner, RunnerOptions, Worker, WorkerConfig};

/// Run until `stop` turns true (or its sender is dropped).
pub async fn run(
    store: Arc<dyn ObjectStore>,
    queue: Arc<dyn JobQueue>,
    config: WorkerConfig,
    metrics: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
) {
    // `serve` has one bucket, so every job's bucket is this store.
    let stores = move |_bucket: &str| -> Arc<dyn ObjectStore> { store.clone() };
    let worker = Worker::new(stores, config).with_metrics(metrics);
    let options = RunnerOptions {
        once: false,
        // Short polls keep a local spool responsive; shutdown interrupts a poll anyway.
        wait: Duration::from_secs(5),
        ..RunnerOptions::default()
    };
    let runner = Runner::new(queue, worker, options);
    let shutdown = async move {
        // An error means the sender is gone, which also means "stop".
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    match runner.run(shutdown).await {
        Ok(summary) => info!(
            event = "serve.worker_summary",
            received = summary.received,
            done = summary.done,
            failed = summary.failed,
            released = summary.released,
        ),
        Err(error) => warn!(event = "serve.worker_error", error = %error),
    }
}
