//! The worker: turns render jobs into the definitive, quality-tuned variants in the store.
//!
//! - [`tuning`]: the SSIMULACRA2-guided quality search; [`ssim2`]: the metric itself.
//! - [`process`]: one render (idempotence check, fetch, render, tagged write).
//! - [`batch`]: a batch of queue records (parse, de-duplicate, bounded parallelism,
//!   deadline); the ids of the failed records for the Lambda's `batchItemFailures`.
//! - [`message`]: what a queue message is: a job, an S3 event notification, S3's test event
//!   or a deferred CDN invalidation.
//! - [`refresh`]: an original was written or deleted: re-render or delete its variants.
//! - [`runner`]: the long-poll loop behind `edgethumb work`.
//!
//! Behaviour, failure classes and configuration are documented in `docs/worker.md`.

pub mod batch;
pub mod message;
pub mod process;
pub mod refresh;
pub mod runner;
pub mod settings;
pub mod ssim2;
pub mod tuning;

#[cfg(test)]
mod metric_tests;
#[cfg(test)]
mod refresh_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tuning_tests;

use std::sync::Arc;
use std::time::Duration;

pub use batch::{EventOutcome, InvalidationOutcome, Record, RecordOutcome, Worker};
pub use process::{KeyOutcome, RenderFailure};
pub use runner::{RunSummary, Runner, RunnerOptions};
pub use settings::{ConfigError, Origin, SETTINGS, Setting};
pub use tuning::TuningConfig;

use crate::pipeline::Limits;
use crate::store::ObjectStore;

/// Gives the store for a job's bucket. The S3 implementation shares one client, so this is
/// cheap per job.
pub trait BucketStores: Send + Sync {
    fn store_for(&self, bucket: &str) -> Arc<dyn ObjectStore>;
}

impl<F> BucketStores for F
where
    F: Fn(&str) -> Arc<dyn ObjectStore> + Send + Sync,
{
    fn store_for(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        self(bucket)
    }
}

/// Cache-Control written on variants unless configured: a year, since a variant only
/// changes when its original does, and then the worker rewrites it under the same key
/// (CloudFront needs an invalidation for that either way).
pub const DEFAULT_CACHE_CONTROL: &str = "public, max-age=31536000";

/// Working memory assumed per byte of compressed original. Photos compress to about 2-4
/// bits per pixel and a tuned render holds the decode (at most full size, 3-4 bytes per
/// pixel) plus the resized image and the metric's linear-light copies of it: about 24
/// bytes of memory per source byte covers a JPEG photo with room to spare. Deliberately
/// pessimistic: overestimating only serialises big renders.
pub const MEMORY_PER_SOURCE_BYTE: u64 = 24;

/// Worker settings. [`WorkerConfig::from_env`] reads them for the Lambda; `edgethumb work`
/// reads the same variables and puts its flags over them ([`WorkerConfig::from_sources`]).
/// Each one is a row of [`SETTINGS`].
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub cache_control: String,
    pub tuning: TuningConfig,
    pub limits: Limits,
    /// Renders run at once (CPU slots). About the number of vCPUs.
    pub concurrency: usize,
    /// Working memory renders may hold at once, in MiB (see [`MEMORY_PER_SOURCE_BYTE`]).
    pub memory_budget_mib: u32,
    /// A new render starts only while at least this much invocation time remains (plus
    /// the longest render seen in the batch so far).
    pub time_reserve: Duration,
    /// When set, jobs for other buckets are refused (permanently).
    pub allowed_buckets: Option<Vec<String>>,
    /// The CloudFront distribution whose cached copies are invalidated after an original
    /// is replaced or deleted; `None`: variants are still refreshed, no CDN is told.
    pub distribution_id: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            cache_control: DEFAULT_CACHE_CONTROL.to_string(),
            tuning: TuningConfig::default(),
            limits: Limits::default(),
            concurrency: crate::host::available_cores(),
            memory_budget_mib: 1024,
            time_reserve: Duration::from_secs(5),
            allowed_buckets: None,
            distribution_id: None,
        }
    }
}
