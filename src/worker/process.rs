//! One render: fetch the original, skip if the variant is already current, render with the
//! `best` profile (quality-tuned), and write the variant with its tag and metadata.
//!
//! A "render" may serve several jobs of one batch: all jobs naming the same bucket and the
//! same canonical variant are rendered once and written under each key they requested
//! (usually that is one key; two spellings of one variant are two keys CloudFront asks for).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::tuning::{self, Choice, TuneError};
use super::{MEMORY_PER_SOURCE_BYTE, WorkerConfig};
use crate::job::JobError;
use crate::pipeline::{self, PipelineError};
use crate::store::{ObjectInfo, ObjectStore, PutRequest, StoreError};
use crate::variant::Params;

/// User-metadata keys written on every variant (S3 sends them as `x-amz-meta-*`).
pub mod meta {
    /// ETag of the original the variant was rendered from.
    pub const ORIGINAL_ETAG: &str = "original-etag";
    /// Canonical parameters.
    pub const PARAMS: &str = "params";
    /// Encoder quality used (tuned or from the URL).
    pub const QUALITY: &str = "quality";
    /// SSIMULACRA2 against the reference, when measured.
    pub const SCORE: &str = "ssimulacra2";
    /// `crate::VERSION` of the renderer.
    pub const VERSION: &str = "edgethumb-version";
}

/// The tag the bucket's lifecycle rule matches to expire worker-written variants.
pub const CREATED_TAG: (&str, &str) = ("createByLambda", "1");

/// What a successful render did for one key.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyOutcome {
    /// Written now.
    Written {
        bytes: usize,
        quality: u8,
        score: Option<f64>,
        etag: Option<String>,
    },
    /// Already current (same original ETag and edgethumb version): nothing written.
    Current,
}

/// Why a render failed. [`RenderFailure::is_retryable`] splits them into "SQS should try
/// again" and "can never succeed" (redrive moves those to the DLQ after `maxReceiveCount`).
#[derive(Debug, thiserror::Error)]
pub enum RenderFailure {
    #[error("invalid job: {0}")]
    InvalidJob(#[from] JobError),
    #[error("bucket {0:?} is not one this worker may write")]
    BucketNotAllowed(String),
    #[error("original {bucket}/{key} does not exist")]
    OriginalMissing { bucket: String, key: String },
    /// The original was replaced (or deleted) while its variant rendered: the variant of
    /// the old picture is not written. Retryable: the next try renders the new one.
    #[error(
        "original {bucket}/{key} changed during the render (rendered {rendered:?}, now {now:?})"
    )]
    OriginalChanged {
        bucket: String,
        key: String,
        rendered: Option<String>,
        now: Option<String>,
    },
    #[error("invalid S3 event: {0}")]
    InvalidEvent(String),
    #[error("invalid invalidation message: {0}")]
    InvalidInvalidation(String),
    #[error("CDN: {0}")]
    Cdn(#[from] crate::cdn::CdnError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("render: {0}")]
    Pipeline(#[from] PipelineError),
    #[error("quality metric: {0}")]
    Metric(String),
    #[error("render task died: {0}")]
    Crashed(String),
    #[error("not started: {0}")]
    NotStarted(&'static str),
}

impl RenderFailure {
    /// Whether a later delivery of the same message can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            RenderFailure::Store(e) => e.is_retryable(),
            // A newer producer: an upgraded worker will read it.
            RenderFailure::InvalidJob(JobError::UnsupportedVersion(_)) => true,
            RenderFailure::NotStarted(_) | RenderFailure::OriginalChanged { .. } => true,
            RenderFailure::Cdn(e) => e.is_retryable(),
            // A panic in a codec repeats on the same input; the DLQ keeps the evidence.
            RenderFailure::Crashed(_) => false,
            // Memory, a caught bug, a deadline or an encoder failure: not the source's
            // fault, so another try (perhaps on a fresher container) may succeed; after
            // `maxReceiveCount` tries redrive keeps it in the DLQ.
            RenderFailure::Pipeline(p) => !p.is_input_fault(),
            RenderFailure::InvalidJob(_)
            | RenderFailure::BucketNotAllowed(_)
            | RenderFailure::OriginalMissing { .. }
            | RenderFailure::InvalidEvent(_)
            | RenderFailure::InvalidInvalidation(_)
            | RenderFailure::Metric(_) => false,
        }
    }

    /// Short machine-readable class for logs and metrics filters.
    pub fn kind(&self) -> &'static str {
        match self {
            RenderFailure::InvalidJob(_) => "invalid-job",
            RenderFailure::BucketNotAllowed(_) => "bucket-not-allowed",
            RenderFailure::OriginalMissing { .. } => "original-missing",
            RenderFailure::OriginalChanged { .. } => "original-changed",
            RenderFailure::InvalidEvent(_) => "invalid-event",
            RenderFailure::InvalidInvalidation(_) => "invalid-invalidation",
            RenderFailure::Cdn(_) => "cdn",
            RenderFailure::Store(_) => "store",
            RenderFailure::Pipeline(PipelineError::TooManyBytes { .. })
            | RenderFailure::Pipeline(PipelineError::TooManyPixels { .. }) => "over-limits",
            RenderFailure::Pipeline(PipelineError::UnsupportedFormat(_))
            | RenderFailure::Pipeline(PipelineError::Corrupt { .. }) => "undecodable",
            RenderFailure::Pipeline(PipelineError::Encode { .. }) => "encode",
            RenderFailure::Pipeline(PipelineError::OutOfMemory { .. }) => "out-of-memory",
            RenderFailure::Pipeline(PipelineError::Internal(_)) => "internal",
            RenderFailure::Pipeline(PipelineError::DeadlineExceeded { .. }) => "deadline",
            RenderFailure::Metric(_) => "metric",
            RenderFailure::Crashed(_) => "crashed",
            RenderFailure::NotStarted(_) => "not-started",
        }
    }
}

impl From<TuneError> for RenderFailure {
    fn from(e: TuneError) -> Self {
        match e {
            TuneError::Pipeline(p) => RenderFailure::Pipeline(p),
            TuneError::Metric(m) => RenderFailure::Metric(m),
        }
    }
}

/// What one render needs: the bucket, the original, the canonical params and the keys to
/// write.
#[derive(Debug, Clone)]
pub struct RenderTask {
    pub bucket: String,
    pub original_key: String,
    pub params: Params,
    /// Distinct variant keys, as requested.
    pub keys: Vec<String>,
}

/// Timings and sizes of one render, for the log line.
#[derive(Debug, Clone, Default)]
pub struct RenderReport {
    pub original_etag: Option<String>,
    pub source_bytes: u64,
    pub fetch: Duration,
    pub render: Duration,
    pub write: Duration,
    pub encodes: u32,
    pub method: &'static str,
    /// AVIF: the base qindex encoded (the tuned search settles below the `q` scale).
    pub qindex: Option<u8>,
}

/// Per-key results of one render (in `task.keys` order), or the failure shared by all.
pub type RenderResult = Result<(Vec<KeyOutcome>, RenderReport), RenderFailure>;

/// Hook the batch uses to size its memory permit once the source size is known.
#[async_trait::async_trait]
pub trait MemoryGate: Send + Sync {
    /// Wait until `bytes` of working memory ([`memory_estimate`]) are available;
    /// dropping the guard releases them.
    async fn reserve(&self, bytes: u64) -> Box<dyn Send>;
}

/// A gate that never waits (single renders, tests).
pub struct NoGate;

#[async_trait::async_trait]
impl MemoryGate for NoGate {
    async fn reserve(&self, _bytes: u64) -> Box<dyn Send> {
        Box::new(())
    }
}

/// Working memory a render of a `source_bytes` original for `params` may hold at its peak:
/// the decode and resize ([`MEMORY_PER_SOURCE_BYTE`]) plus, when the URL leaves the quality
/// to the search, the metric's planes at the largest output it scores (the output size is
/// not known before the decode, so this assumes the largest).
pub fn memory_estimate(source_bytes: u64, params: &Params) -> u64 {
    let render = source_bytes.saturating_mul(MEMORY_PER_SOURCE_BYTE);
    let scoring = if params.quality.is_none() {
        tuning::MAX_SCORING_BYTES
    } else {
        0
    };
    render.saturating_add(scoring)
}

/// Whether an existing variant was rendered from this original by this version.
fn is_current(variant: &ObjectInfo, original_etag: Option<&str>) -> bool {
    let Some(original_etag) = original_etag else {
        return false;
    };
    variant.metadata.get(meta::VERSION).map(String::as_str) == Some(crate::VERSION)
        && variant
            .metadata
            .get(meta::ORIGINAL_ETAG)
            .map(String::as_str)
            == Some(original_etag)
}

/// Run one render against `store`.
pub async fn render(
    store: Arc<dyn ObjectStore>,
    task: &RenderTask,
    config: &WorkerConfig,
    gate: &dyn MemoryGate,
) -> RenderResult {
    let mut report = RenderReport::default();
    let fetch_started = Instant::now();

    // Cheap HEADs first: most redeliveries and duplicate misses end here.
    let mut existing: Vec<Option<ObjectInfo>> = Vec::with_capacity(task.keys.len());
    for key in &task.keys {
        existing.push(store.head(key).await?);
    }
    let ours = |info: &ObjectInfo| {
        info.metadata.get(meta::VERSION).map(String::as_str) == Some(crate::VERSION)
    };
    if !existing.is_empty() && existing.iter().all(|e| e.as_ref().is_some_and(ours)) {
        let original = store
            .head(&task.original_key)
            .await?
            .ok_or_else(|| missing(task))?;
        let etag = original.etag.as_deref();
        if existing
            .iter()
            .all(|e| e.as_ref().is_some_and(|v| is_current(v, etag)))
        {
            report.original_etag = original.etag.clone();
            report.fetch = fetch_started.elapsed();
            report.method = "skipped";
            return Ok((vec![KeyOutcome::Current; task.keys.len()], report));
        }
    }

    let original = store
        .get(&task.original_key, config.limits.max_bytes)
        .await
        .map_err(|e| match e {
            // Over the byte limit is a property of the original, not of the store.
            StoreError::TooLarge { size, limit, .. } => {
                RenderFailure::Pipeline(PipelineError::TooManyBytes {
                    actual: size,
                    limit,
                })
            }
            other => RenderFailure::Store(other),
        })?
        .ok_or_else(|| missing(task))?;
    report.fetch = fetch_started.elapsed();
    report.source_bytes = original.info.size;
    report.original_etag = original.info.etag.clone();
    // Now the size is known, hold the memory this render will need.
    let memory = gate
        .reserve(memory_estimate(original.body.len() as u64, &task.params))
        .await;

    let render_started = Instant::now();
    let choice = render_blocking(original.body.clone(), task.params.clone(), config).await?;
    report.render = render_started.elapsed();
    report.encodes = choice.encodes;
    report.method = choice.method;
    report.qindex = choice.qindex;

    let write_started = Instant::now();
    // A replacement of the original may have landed while this rendered, and its event may
    // already have refreshed the variants: writing now would put the old picture back. So
    // the original's ETag is checked right before the writes (the window left is the HEAD's
    // round trip).
    let now = store.head(&task.original_key).await?.and_then(|o| o.etag);
    if now != original.info.etag {
        return Err(RenderFailure::OriginalChanged {
            bucket: task.bucket.clone(),
            key: task.original_key.clone(),
            rendered: original.info.etag.clone(),
            now,
        });
    }
    let body = Bytes::from(choice.bytes.clone());
    let request = put_request(&choice, &task.params, original.info.etag.as_deref(), config);
    let mut outcomes = Vec::with_capacity(task.keys.len());
    for (key, existing) in task.keys.iter().zip(&existing) {
        // A key already current (say, written by a concurrent worker since the HEAD) is
        // still skipped, so its ETag and Last-Modified stay put.
        if existing
            .as_ref()
            .is_some_and(|v| is_current(v, original.info.etag.as_deref()))
        {
            outcomes.push(KeyOutcome::Current);
            continue;
        }
        let written = store.put(key, body.clone(), request.clone()).await?;
        outcomes.push(KeyOutcome::Written {
            bytes: choice.bytes.len(),
            quality: choice.quality,
            score: choice.score,
            etag: written.etag,
        });
    }
    report.write = write_started.elapsed();
    // Held to here: the original and the encode stay in memory until written.
    drop(memory);
    Ok((outcomes, report))
}

fn missing(task: &RenderTask) -> RenderFailure {
    RenderFailure::OriginalMissing {
        bucket: task.bucket.clone(),
        key: task.original_key.clone(),
    }
}

/// What the PutObject carries besides the body.
fn put_request(
    choice: &Choice,
    params: &Params,
    original_etag: Option<&str>,
    config: &WorkerConfig,
) -> PutRequest {
    let mut metadata = BTreeMap::new();
    if let Some(etag) = original_etag {
        metadata.insert(meta::ORIGINAL_ETAG.to_string(), etag.to_string());
    }
    metadata.insert(meta::PARAMS.to_string(), params.canonical());
    if choice.format.is_lossy() {
        metadata.insert(meta::QUALITY.to_string(), choice.quality.to_string());
    }
    if let Some(score) = choice.score {
        metadata.insert(meta::SCORE.to_string(), format!("{score:.2}"));
    }
    metadata.insert(meta::VERSION.to_string(), crate::VERSION.to_string());
    let mut tags = BTreeMap::new();
    tags.insert(CREATED_TAG.0.to_string(), CREATED_TAG.1.to_string());
    PutRequest {
        content_type: choice.format.content_type().to_string(),
        cache_control: Some(config.cache_control.clone()),
        metadata,
        tags,
    }
}

/// Decode, resize, tune and encode on the blocking pool (CPU-bound; it must not stall the
/// runtime that keeps SQS visibility and S3 calls going).
async fn render_blocking(
    source: Bytes,
    params: Params,
    config: &WorkerConfig,
) -> Result<Choice, RenderFailure> {
    let limits = config.limits;
    let tuning = config.tuning;
    let task = tokio::task::spawn_blocking(move || render_sync(&source, &params, &limits, &tuning));
    match task.await {
        Ok(result) => result,
        Err(join) => Err(RenderFailure::Crashed(join.to_string())),
    }
}

/// The synchronous render of the worker.
pub fn render_sync(
    source: &[u8],
    params: &Params,
    limits: &pipeline::Limits,
    tuning: &tuning::TuningConfig,
) -> Result<Choice, RenderFailure> {
    let prepared = pipeline::prepare_for(source, params, limits, pipeline::Profile::Best)?;
    encode_prepared(&prepared, params, tuning)
}

/// The worker's encode of `prepared` (made with [`pipeline::Profile::Best`]'s margin): the
/// quality search scores its candidates against `prepared` itself, the pixels they were
/// encoded from. Shared with `edgethumb render --tune`, which times the preparation
/// separately.
pub fn encode_prepared(
    prepared: &pipeline::Prepared,
    params: &Params,
    tuning: &tuning::TuningConfig,
) -> Result<Choice, RenderFailure> {
    Ok(tuning::encode_best(
        prepared,
        Some(prepared),
        params,
        tuning,
    )?)
}
