//! `edgethumb serve`: CloudFront + S3 + the edge handler + the queue + the worker, in one
//! process, so the whole flow can be tried (and tested end to end) on one machine.
//!
//! - [`app`]: the HTTP routes (hits as S3 via CloudFront would serve them, misses through
//!   the very [`edgethumb::edge::EdgeHandler`] Lambda@Edge runs, the `/` page and its JSON).
//! - [`keys`]: request path → object key, refusing hostile paths before any store sees them.
//!   Before the key is derived, the viewer-request rules ([`edgethumb::viewer`], the Rust
//!   twin of the CloudFront Function) rewrite the path to its canonical spelling, resolve
//!   `.auto` and apply the guard of `--viewer-settings`.
//! - [`demo`]: `--demo`, generated originals for newcomers without photos.
//!
//! The in-process worker is the `edgethumb work` runner over the same queue the handler
//! enqueues on. Shutdown (Ctrl-C, SIGTERM) stops accepting requests, lets requests in
//! flight finish (their jobs are enqueued before they answer), then tells the worker to stop
//! starting jobs and waits for the ones it started. A job not finished by then stays in the
//! durable queue and is picked up by the next start. See `docs/serve.md`.

pub mod app;
pub mod demo;
pub mod keys;
pub mod watch;

use std::future::{Future, IntoFuture};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

pub use app::{App, router};

use edgethumb::edge::EdgeConfig;
use edgethumb::queue::JobQueue;
use edgethumb::store::ObjectStore;
use edgethumb::viewer::ViewerGuard;
use edgethumb::worker::WorkerConfig;

/// Folder inside the originals folder that holds `serve`'s own state (the local queue's
/// spool). Hidden, so it is never listed as an original nor served over HTTP.
pub const STATE_DIR: &str = ".edgethumb";

/// The local queue's spool directory for an originals folder.
pub fn spool_dir(originals: &Path) -> PathBuf {
    originals.join(STATE_DIR).join("queue")
}

/// How long shutdown waits for open requests, then for the worker's jobs in flight before
/// leaving them in the queue (they come back after the visibility timeout on the next start).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    #[error("invalid settings: {0}")]
    Settings(String),
}

/// The adapters and settings one `serve` runs with.
pub struct ServeSetup {
    pub store: Arc<dyn ObjectStore>,
    pub queue: Arc<dyn JobQueue>,
    /// The bucket name jobs carry (the S3 bucket, or the folder's name locally).
    pub bucket: String,
    pub edge: EdgeConfig,
    pub worker: WorkerConfig,
    /// Run the in-process worker (off when a separate `edgethumb work` consumes the queue).
    pub run_worker: bool,
    /// The viewer-request rules (`--viewer-settings`; [`ViewerGuard::Open`] by default).
    pub viewer: ViewerGuard,
    /// Poll the store for replaced or deleted originals this often ([`watch`]): a folder
    /// has no event notifications. `None` for S3, whose notifications reach the queue.
    pub watch: Option<Duration>,
}

/// The edge settings `serve` runs the handler with: the defaults of `edgethumb.json`, so
/// the budget, TTLs and source limits are the ones the deployed edge uses.
pub fn edge_config(queue_name: &str, region: &str) -> Result<EdgeConfig, ServeError> {
    let json = serde_json::json!({
        "queue_url": queue_name,
        "queue_region": region,
    });
    EdgeConfig::from_json(&json.to_string(), "serve settings")
        .map_err(|e| ServeError::Settings(e.to_string()))
}

/// A bucket name usable as a path-style origin (one path segment).
pub fn origin_bucket_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| if c == '/' || c.is_control() { '-' } else { c })
        .collect();
    let cleaned = cleaned.trim_matches('-').to_string();
    if cleaned.is_empty() {
        "local".to_string()
    } else {
        cleaned
    }
}

/// Bind `addr` (e.g. `127.0.0.1:8080`; port 0 picks a free one).
pub async fn bind(addr: &str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            warn!(event = "serve.signal_unavailable", signal = "SIGINT", error = %error);
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                warn!(event = "serve.signal_unavailable", signal = "SIGTERM", error = %error);
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Serve until `shutdown` completes, then stop gracefully (see the module docs).
pub async fn run(
    setup: ServeSetup,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let ServeSetup {
        store,
        queue,
        bucket,
        edge,
        worker,
        run_worker,
        viewer,
        watch,
    } = setup;
    let bucket = origin_bucket_name(&bucket);
    let app = Arc::new(App::new(
        store.clone(),
        queue.clone(),
        edge,
        &bucket,
        viewer,
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker_task = run_worker.then(|| {
        tokio::spawn(worker_loop::run(
            store.clone(),
            queue.clone(),
            worker,
            app.metrics(),
            stop_rx,
        ))
    });
    let watch_task = watch.map(|interval| {
        tokio::spawn(watch::run(
            store.clone(),
            queue.clone(),
            bucket.clone(),
            interval,
            stop_tx.subscribe(),
        ))
    });
    if let Ok(addr) = listener.local_addr() {
        info!(event = "serve.listening", addr = %addr, bucket = bucket.as_str(), queue = queue.name());
    }
    // Graceful, but bounded: a client that keeps a request open cannot hold shutdown up.
    let (signalled_tx, mut signalled_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = signalled_tx.send(true);
    };
    let server = axum::serve(listener, router(app)).with_graceful_shutdown(shutdown);
    let served = tokio::select! {
        served = server.into_future() => served.map_err(ServeError::Http),
        () = async {
            // Only an `Err` (sender dropped, i.e. the server is gone) ends this early, and
            // then the other branch has already completed.
            let _ = signalled_rx.wait_for(|signalled| *signalled).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            warn!(event = "serve.http_timeout", "requests still open after the grace period were dropped");
            Ok(())
        }
    };
    info!(
        event = "serve.stopping",
        "HTTP stopped; stopping the worker"
    );
    // The receiver may be gone if the worker ended on its own; nothing to tell then.
    let _ = stop_tx.send(true);
    if let Some(task) = watch_task
        && let Err(error) = task.await
    {
        warn!(event = "serve.watch_failed", error = %error);
    }
    if let Some(task) = worker_task {
        match tokio::time::timeout(SHUTDOWN_GRACE, task).await {
            Ok(Ok(())) => info!(event = "serve.worker_stopped"),
            Ok(Err(error)) => warn!(event = "serve.worker_failed", error = %error),
            Err(_) => warn!(
                event = "serve.worker_timeout",
                "jobs still running after the grace period stay in the queue for the next start"
            ),
        }
    }
    served
}

mod worker_loop;
