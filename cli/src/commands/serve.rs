//! `edgethumb serve [DIR]`: the whole flow on one machine (see `docs/serve.md`).
//!
//! Embedded defaults: DIR is the bucket (filesystem store) and `DIR/.edgethumb/queue` the
//! durable local queue. `--bucket/--queue-url` swap in S3 and SQS (real AWS or moto via
//! `--endpoint-url`) and nothing else changes: same handler, same worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;

use crate::serve::{self, ServeSetup};
use edgethumb::queue::JobQueue;
use edgethumb::store::ObjectStore;
use edgethumb::viewer::ViewerGuard;
use edgethumb::worker::WorkerConfig;
use edgethumb_aws::AwsSettings;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Folder of originals, the embedded "bucket" (created if missing). Default: `.`.
    #[arg(conflicts_with_all = ["bucket", "queue_url"])]
    pub dir: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free one; the URL is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Add a few generated sample images (existing files are never overwritten).
    #[arg(long)]
    pub demo: bool,
    /// S3 bucket instead of a folder (with --queue-url).
    #[arg(long, requires = "queue_url")]
    pub bucket: Option<String>,
    /// SQS queue instead of the local spool (with --bucket).
    #[arg(long, requires = "bucket")]
    pub queue_url: Option<String>,
    /// Do not run the in-process worker (another `edgethumb work` consumes the queue).
    #[arg(long)]
    pub no_worker: bool,
    /// Renders the in-process worker runs at once (default: half the cores, so misses
    /// rendered on the request path keep a core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_concurrency: Option<u16>,
    /// Viewer-request settings: a JSON object of strings with the KeyValueStore's keys
    /// (`guard`, `key:<id>`, `preset:<name>`, `allow:<params>`; docs/edge.md). Without it,
    /// no guard: every valid variant passes (still canonicalised, `.auto` resolved).
    #[arg(long, value_name = "FILE")]
    pub viewer_settings: Option<PathBuf>,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// Where S3 and SQS are (shared with `enqueue`).
#[derive(Debug, Args)]
pub struct AwsArgs {
    /// S3/SQS endpoint (moto, an S3-compatible server); forces path-style addressing.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// AWS region (default: `AWS_REGION`, `AWS_DEFAULT_REGION`, else us-east-1).
    #[arg(long)]
    pub region: Option<String>,
}

impl AwsArgs {
    pub fn settings(&self) -> AwsSettings {
        let region = self
            .region
            .clone()
            .unwrap_or_else(edgethumb_aws::worker::region_from_env);
        let settings = AwsSettings::new(region);
        match &self.endpoint_url {
            Some(endpoint) if !endpoint.trim().is_empty() => settings.with_endpoint(endpoint),
            _ => settings,
        }
    }
}

/// A `serve` folder: its store, its spool queue, and the bucket name jobs carry.
pub struct LocalBackend {
    pub store: Arc<dyn ObjectStore>,
    pub queue: Arc<dyn JobQueue>,
    pub bucket: String,
    /// Jobs already in the spool (left by an earlier run), for the start-up message.
    pub pending: usize,
}

impl LocalBackend {
    /// Open (creating with `create`) the folder and its queue.
    pub async fn open(dir: &Path, create: bool) -> anyhow::Result<LocalBackend> {
        if create {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        } else if !dir.is_dir() {
            bail!("{} is not a folder", dir.display());
        }
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let store = edgethumb::store::fs::FsStore::open(&dir)
            .await
            .with_context(|| format!("store folder {}", dir.display()))?;
        let spool = serve::spool_dir(&dir);
        let queue = edgethumb::queue::local::LocalQueue::open(&spool)
            .await
            .with_context(|| format!("local queue {}", spool.display()))?;
        let (ready, in_flight) = queue
            .counts()
            .await
            .with_context(|| format!("local queue {}", spool.display()))?;
        Ok(LocalBackend {
            bucket: serve::origin_bucket_name(store.bucket()),
            store: Arc::new(store),
            queue: Arc::new(queue),
            pending: ready + in_flight,
        })
    }
}

/// Text logs on stderr (`RUST_LOG` overrides the `info` default); stdout stays for output
/// a script reads (the URL, `--dry-run` listings).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Already installed (e.g. by a test harness) is fine.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_async(args))
}

/// The guard of `--viewer-settings FILE` (refused at start-up if anything in it is wrong),
/// else none.
pub fn viewer_guard(path: Option<&Path>) -> anyhow::Result<ViewerGuard> {
    let Some(path) = path else {
        return Ok(ViewerGuard::Open);
    };
    let json = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read viewer settings {}", path.display()))?;
    ViewerGuard::from_json(&json).with_context(|| format!("viewer settings {}", path.display()))
}

fn describe_guard(guard: &ViewerGuard) -> String {
    match guard {
        ViewerGuard::Open => "no viewer guard: every valid variant passes".to_string(),
        ViewerGuard::Signed { keys } => format!(
            "viewer guard signed: variants need ?k=&s= (key ids: {})",
            keys.keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        ViewerGuard::List { presets, allow } => format!(
            "viewer guard list: {} preset(s), {} allowed parameter set(s)",
            presets.len(),
            allow.len()
        ),
    }
}

async fn run_async(args: ServeArgs) -> anyhow::Result<()> {
    let viewer = viewer_guard(args.viewer_settings.as_deref())?;
    let mut worker = WorkerConfig::from_env().context("worker settings")?;
    worker.concurrency = match args.worker_concurrency {
        Some(n) => usize::from(n),
        None => (edgethumb::available_cores() / 2).max(1),
    };
    // S3 sends its own event notifications (when the bucket is configured to); a folder
    // is polled.
    let watch = (args.bucket.is_none()).then_some(serve::watch::INTERVAL);
    let (store, queue, bucket, edge, where_) = match (&args.bucket, &args.queue_url) {
        (Some(bucket), Some(queue_url)) => {
            let settings = args.aws.settings();
            let (s3, sqs) = settings.clients().await;
            let store: Arc<dyn ObjectStore> =
                Arc::new(edgethumb_aws::S3Store::new(s3, bucket.clone()));
            let queue: Arc<dyn JobQueue> =
                Arc::new(edgethumb_aws::SqsQueue::new(sqs, queue_url.clone()));
            let edge = serve::edge_config(queue_url, &settings.region)?;
            let endpoint = settings
                .resolved_endpoint()
                .unwrap_or_else(|| "AWS".to_string());
            (
                store,
                queue,
                bucket.clone(),
                edge,
                format!("originals in s3://{bucket} and jobs on {queue_url} ({endpoint})"),
            )
        }
        _ => {
            let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
            let local = LocalBackend::open(&dir, true).await?;
            let shown = dir.canonicalize().unwrap_or(dir);
            let edge = serve::edge_config(local.queue.name(), "local")?;
            if local.pending > 0 {
                eprintln!(
                    "edgethumb serve: {} job(s) left in the queue by an earlier run; the worker will do them",
                    local.pending
                );
            }
            (
                local.store,
                local.queue,
                local.bucket,
                edge,
                format!(
                    "originals in {} and jobs in {}",
                    shown.display(),
                    serve::spool_dir(&shown).display()
                ),
            )
        }
    };
    if args.demo {
        let written = serve::demo::seed(store.as_ref())
            .await
            .context("writing demo images")?;
        eprintln!("edgethumb serve: {} demo image(s) added", written.len());
    }
    let listener = serve::bind(&args.addr).await?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    // The one line on stdout: scripts and tests read the URL from it.
    println!("edgethumb serve: listening on http://{addr}/");
    eprintln!("edgethumb serve: {where_}; Ctrl-C to stop");
    eprintln!("edgethumb serve: {}", describe_guard(&viewer));
    serve::run(
        ServeSetup {
            store,
            queue,
            bucket,
            edge,
            worker,
            run_worker: !args.no_worker,
            viewer,
            watch,
        },
        listener,
        serve::shutdown_signal(),
    )
    .await?;
    eprintln!("edgethumb serve: stopped");
    Ok(())
}
