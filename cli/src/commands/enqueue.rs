//! `edgethumb enqueue`: manual reprocessing (re-render after an original or the encoder
//! changed, or pre-warm variants). The logic is in `edgethumb::enqueue`; this file parses
//! flags, wires the S3/SQS (or local) adapters, and reports progress and the summary.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use edgethumb::enqueue::{self, Plan, S3Location};
use edgethumb::queue::JobQueue;
use edgethumb::store::ObjectStore;

use super::serve::{AwsArgs, LocalBackend};

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Variants to enqueue: `s3://bucket/photos/cat.jpg@200w.webp` (or bare keys with
    /// `--bucket`/`--dir`).
    pub targets: Vec<String>,
    /// Also read targets from this file, one per line (`-` reads stdin; blank lines and
    /// `#` comments are ignored).
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Work on every object under this prefix (`s3://bucket/photos/`, or `photos/` with
    /// `--bucket`/`--dir`); needs `--existing` or `--variants`.
    #[arg(long, value_name = "S3_URL")]
    pub prefix: Option<String>,
    /// With `--prefix`: re-enqueue the variants the worker wrote there (keys with `@`
    /// tagged `createByLambda=1`).
    #[arg(long, requires = "prefix", conflicts_with = "variants")]
    pub existing: bool,
    /// With `--prefix`: enqueue these variants of every original there, e.g.
    /// `200w_200h_1e.webp,800w.jpg` (pre-warming).
    #[arg(long, requires = "prefix", value_name = "PARAMS,...")]
    pub variants: Option<String>,
    /// SQS queue to send to.
    #[arg(long, env = "EDGETHUMB_QUEUE_URL", conflicts_with = "dir")]
    pub queue_url: Option<String>,
    /// A `serve` folder instead of AWS: its originals are the bucket, its spool the queue.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Bucket for bare keys and prefixes.
    #[arg(long)]
    pub bucket: Option<String>,
    /// List what would be sent, send nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// Where jobs go and where prefixes are listed.
struct Backend {
    queue: Option<Arc<dyn JobQueue>>,
    /// Store for a bucket (S3: a client per bucket; local: the one folder).
    local_store: Option<(String, Arc<dyn ObjectStore>)>,
    aws: Option<edgethumb_aws::AwsSettings>,
}

impl Backend {
    async fn store_for(&self, bucket: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
        if let Some((name, store)) = &self.local_store {
            if name != bucket {
                bail!("bucket {bucket:?} is not the --dir folder's bucket {name:?}");
            }
            return Ok(store.clone());
        }
        let Some(aws) = &self.aws else {
            bail!("no store configured");
        };
        let client = aws.s3_client().await;
        Ok(Arc::new(edgethumb_aws::S3Store::new(client, bucket)))
    }
}

pub fn run(args: EnqueueArgs) -> anyhow::Result<()> {
    super::serve::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: EnqueueArgs) -> anyhow::Result<()> {
    if args.targets.is_empty() && args.from.is_none() && args.prefix.is_none() {
        bail!(
            "nothing to enqueue: give s3://bucket/key@params arguments, --from FILE, or --prefix"
        );
    }
    if args.prefix.is_some() && !args.existing && args.variants.is_none() {
        bail!("--prefix needs --existing or --variants");
    }
    let specs = args
        .variants
        .as_deref()
        .map(enqueue::parse_variant_specs)
        .transpose()?;
    let backend = backend(&args).await?;
    let default_bucket = match &backend.local_store {
        Some((name, _)) => Some(args.bucket.clone().unwrap_or_else(|| name.clone())),
        None => args.bucket.clone(),
    };

    let mut lines = args.targets.clone();
    if let Some(path) = &args.from {
        lines.extend(read_lines(path)?);
    }
    let mut plan = enqueue::plan_keys(&lines, default_bucket.as_deref());
    if let Some(prefix) = &args.prefix {
        let location = match S3Location::parse(prefix) {
            Some(location) => location,
            None if !prefix.starts_with("s3://") => match &default_bucket {
                Some(bucket) => S3Location {
                    bucket: bucket.clone(),
                    key: prefix.trim_start_matches('/').to_string(),
                },
                None => bail!("--prefix {prefix:?} needs s3://bucket/... (or --bucket/--dir)"),
            },
            None => bail!("--prefix {prefix:?} is not an s3://bucket/prefix URL"),
        };
        let store = backend.store_for(&location.bucket).await?;
        eprintln!("enqueue: listing {} ...", location.url());
        let listed = match &specs {
            Some(specs) => enqueue::plan_variants(store.as_ref(), &location.key, specs).await?,
            None => enqueue::plan_existing(store.as_ref(), &location.key).await?,
        };
        merge(&mut plan, listed);
    }

    for refused in &plan.invalid {
        eprintln!("invalid: {}: {}", refused.input, refused.reason);
    }
    let skipped = skipped_summary(&plan);

    if args.dry_run {
        for planned in &plan.jobs {
            println!("would send {}", enqueue::describe(planned));
        }
        eprintln!(
            "enqueue (dry run): {} to send, {} invalid, {} skipped{skipped}",
            plan.jobs.len(),
            plan.invalid.len(),
            plan.skipped.len()
        );
        if !plan.invalid.is_empty() {
            bail!("{} invalid target(s)", plan.invalid.len());
        }
        return Ok(());
    }

    let Some(queue) = backend.queue.clone() else {
        bail!("no queue: give --queue-url (or EDGETHUMB_QUEUE_URL) or --dir");
    };
    let progress = Progress::new(plan.jobs.len() as u64);
    let report = enqueue::send_jobs(queue.as_ref(), &plan.jobs, |done, _| {
        progress.set(done as u64)
    })
    .await;
    progress.finish();
    for refused in &report.failed {
        eprintln!("failed: {}: {}", refused.input, refused.reason);
    }
    eprintln!(
        "enqueue: {} sent to {}, {} failed, {} invalid, {} skipped{skipped}",
        report.sent,
        queue.name(),
        report.failed.len(),
        plan.invalid.len(),
        plan.skipped.len()
    );
    let not_enqueued = report.failed.len() + plan.invalid.len();
    if not_enqueued > 0 {
        bail!("{not_enqueued} target(s) could not be enqueued");
    }
    Ok(())
}

fn merge(into: &mut Plan, other: Plan) {
    let mut seen: std::collections::BTreeSet<(String, String)> = into
        .jobs
        .iter()
        .map(|p| (p.job.bucket.clone(), p.job.variant_key.clone()))
        .collect();
    for planned in other.jobs {
        if seen.insert((planned.job.bucket.clone(), planned.job.variant_key.clone())) {
            into.jobs.push(planned);
        } else {
            into.skipped.push(enqueue::Refused {
                input: planned.url,
                reason: "duplicate".into(),
            });
        }
    }
    into.invalid.extend(other.invalid);
    into.skipped.extend(other.skipped);
}

/// ` (2 duplicate, 3 not tagged createByLambda=1)`, or nothing.
fn skipped_summary(plan: &Plan) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for refused in &plan.skipped {
        *counts.entry(refused.reason.as_str()).or_default() += 1;
    }
    if counts.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!(" ({})", parts.join(", "))
}

fn read_lines(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    if path.as_os_str() == "-" {
        let stdin = std::io::stdin();
        return stdin
            .lock()
            .lines()
            .collect::<Result<_, _>>()
            .context("cannot read targets from stdin");
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read targets from {}", path.display()))?;
    Ok(text.lines().map(str::to_string).collect())
}

async fn backend(args: &EnqueueArgs) -> anyhow::Result<Backend> {
    if let Some(dir) = &args.dir {
        let local = LocalBackend::open(dir, false).await?;
        return Ok(Backend {
            queue: Some(local.queue),
            local_store: Some((local.bucket, local.store)),
            aws: None,
        });
    }
    let aws = args.aws.settings();
    let queue: Option<Arc<dyn JobQueue>> = match &args.queue_url {
        Some(url) => Some(Arc::new(edgethumb_aws::SqsQueue::new(
            aws.sqs_client().await,
            url.clone(),
        ))),
        None => None,
    };
    Ok(Backend {
        queue,
        local_store: None,
        aws: Some(aws),
    })
}

/// A bar on a terminal; otherwise a plain count at most once a second, and at the end.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    last_line: std::sync::Mutex<Option<Instant>>,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:40} {pos}/{len} jobs processed ({per_sec}, eta {eta})",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            bar,
            total,
            last_line: std::sync::Mutex::new(None),
        }
    }

    fn set(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due || done == self.total {
            eprintln!("enqueue: {done}/{} processed", self.total);
            *last = Some(Instant::now());
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
