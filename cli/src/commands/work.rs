//! `edgethumb work`: the worker outside Lambda, long-polling SQS or the local spool.
//!
//! `--queue-url URL` uses SQS and S3 with the standard AWS environment (`AWS_REGION`,
//! credentials chain, `AWS_ENDPOINT_URL` for moto or another compatible server); each job
//! names its bucket. `--local-queue DIR --store-dir DIR` uses the embedded adapters: the
//! store directory is the one bucket, whatever bucket name the job carries. Worker settings
//! start from the same `EDGETHUMB_*` variables as the Lambda; flags override them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};

use edgethumb::queue::JobQueue;
use edgethumb::store::ObjectStore;
use edgethumb::worker::{
    BucketStores, RunSummary, Runner, RunnerOptions, SETTINGS, Worker, WorkerConfig,
};
use edgethumb_aws::worker::{S3Buckets, settings_from_env, with_cdn_from_config};

#[derive(Debug, Args)]
pub struct WorkArgs {
    /// SQS queue URL to consume (S3 and SQS settings from the standard AWS environment).
    #[arg(
        long,
        env = "EDGETHUMB_QUEUE_URL",
        required_unless_present = "local_queue"
    )]
    pub queue_url: Option<String>,
    /// Local spool directory to consume instead of SQS (needs --store-dir).
    #[arg(long, conflicts_with = "queue_url", requires = "store_dir")]
    pub local_queue: Option<PathBuf>,
    /// Directory that stands for the bucket, with --local-queue.
    #[arg(long, requires = "local_queue")]
    pub store_dir: Option<PathBuf>,
    /// Drain the queue and exit (non-zero if any job failed).
    #[arg(long)]
    pub once: bool,
    /// The worker's settings (`--target-score`, `--cache-control`, ...), one flag per row of
    /// the core's `edgethumb::worker::SETTINGS`, over the same `EDGETHUMB_*` variables.
    #[command(flatten)]
    pub settings: SettingFlags,
    /// Visibility timeout asked for on receive, in seconds (renewed while a job runs).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=43_200))]
    pub visibility_timeout: u64,
    /// Long-poll wait per receive, in seconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=20))]
    pub wait: u64,
    /// Log JSON lines (as on Lambda) instead of text.
    #[arg(long)]
    pub json_logs: bool,
}

/// The raw values of the worker-setting flags, `(flag, value)`: clap only collects them;
/// the core checks them exactly as it checks the environment's, so both are refused with the
/// same reason and the worker Lambda needs no CLI parser.
#[derive(Debug, Default, Clone)]
pub struct SettingFlags(pub Vec<(&'static str, String)>);

impl FromArgMatches for SettingFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(SettingFlags(
            SETTINGS
                .iter()
                .filter_map(|s| {
                    matches
                        .get_one::<String>(s.flag)
                        .map(|value| (s.flag, value.clone()))
                })
                .collect(),
        ))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for SettingFlags {
    fn augment_args(command: Command) -> Command {
        SETTINGS.iter().fold(command, |command, setting| {
            command.arg(
                Arg::new(setting.flag)
                    .long(setting.flag)
                    .value_name("VALUE")
                    .help(format!(
                        "{}: {} [env: {}]",
                        setting.help, setting.expects, setting.env
                    )),
            )
        })
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}

type Stores = Box<dyn Fn(&str) -> Arc<dyn ObjectStore> + Send + Sync>;

pub fn run(args: WorkArgs) -> anyhow::Result<()> {
    init_logs(args.json_logs);
    let config = WorkerConfig::from_sources(
        |name| std::env::var(name).ok(),
        args.settings
            .0
            .iter()
            .map(|(flag, value)| (*flag, value.as_str())),
    )
    .context("worker settings")?;
    let options = RunnerOptions {
        once: args.once,
        // Draining needs only a short poll to tell "empty" from "slow".
        wait: Duration::from_secs(if args.once {
            args.wait.min(2)
        } else {
            args.wait
        }),
        visibility: Duration::from_secs(args.visibility_timeout),
        ..RunnerOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = runtime.block_on(async {
        let (queue, stores) = adapters(&args).await?;
        // Throttled invalidations are deferred to the queue this loop reads.
        let worker = with_cdn_from_config(
            Worker::new(stores, config).with_deferral_queue(queue.clone()),
            &settings_from_env(),
        )
        .await;
        let runner = Runner::new(queue, worker, options);
        runner
            .run(shutdown_signal())
            .await
            .map_err(anyhow::Error::from)
    })?;
    report(&summary, args.once)
}

/// Pick the adapters the flags name.
async fn adapters(args: &WorkArgs) -> anyhow::Result<(Arc<dyn JobQueue>, Stores)> {
    if let (Some(spool), Some(dir)) = (&args.local_queue, &args.store_dir) {
        let queue = edgethumb::queue::local::LocalQueue::open(spool.clone())
            .await
            .with_context(|| format!("local queue {}", spool.display()))?;
        let store: Arc<dyn ObjectStore> = Arc::new(
            edgethumb::store::fs::FsStore::open(dir.clone())
                .await
                .with_context(|| format!("store directory {}", dir.display()))?,
        );
        let stores: Stores = Box::new(move |_bucket: &str| store.clone());
        return Ok((Arc::new(queue), stores));
    }
    let Some(url) = &args.queue_url else {
        bail!("give --queue-url URL, or --local-queue DIR with --store-dir DIR");
    };
    let settings = settings_from_env();
    let (s3, sqs) = settings.clients().await;
    let queue = edgethumb_aws::SqsQueue::new(sqs, url.clone());
    let buckets = S3Buckets::new(s3);
    let stores: Stores = Box::new(move |bucket: &str| buckets.store_for(bucket));
    Ok((Arc::new(queue), stores))
}

/// Resolves on the first SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!(
        event = "worker.signal",
        "shutdown requested: finishing renders in flight"
    );
}

fn report(summary: &RunSummary, once: bool) -> anyhow::Result<()> {
    eprintln!(
        "edgethumb work: {} received, {} done, {} failed, {} released",
        summary.received, summary.done, summary.failed, summary.released
    );
    if once && summary.failed > 0 {
        bail!(
            "{} job(s) failed and stay on the queue (see the log for each reason)",
            summary.failed
        );
    }
    Ok(())
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,aws_config=warn,aws_smithy_runtime=warn")
    });
    if json {
        edgethumb_aws::init_json_logs();
    } else {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .with_writer(std::io::stderr)
            .try_init();
    }
}
