//! The worker: turns render jobs into the definitive, quality-tuned variants in the store.
//!
//! - [`tuning`]: the SSIMULACRA2-guided quality search.
//! - [`process`]: one render (idempotence check, fetch, render, tagged write).
//! - [`batch`]: a batch of queue records (parse, de-duplicate, bounded parallelism,
//!   deadline); the ids of the failed records for the Lambda's `batchItemFailures`.
//! - [`runner`]: the long-poll loop behind `edgethumb work`.
//!
//! Behaviour, failure classes and configuration are documented in `docs/worker.md`.

pub mod batch;
pub mod process;
pub mod runner;
pub mod tuning;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tuning_tests;

use std::sync::Arc;
use std::time::Duration;

pub use batch::{Record, RecordOutcome, Worker};
pub use process::{KeyOutcome, RenderFailure};
pub use runner::{RunSummary, Runner, RunnerOptions};
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
/// bits per pixel and a tuned render holds the full decode (3-4 bytes per pixel) plus the
/// resized image, its reference and their linear-light copies for the metric: about 24
/// bytes of memory per source byte covers a JPEG photo with room to spare. Deliberately
/// pessimistic: overestimating only serialises big renders.
pub const MEMORY_PER_SOURCE_BYTE: u64 = 24;

/// Worker settings. [`WorkerConfig::from_env`] reads them for the Lambda; the CLI builds
/// them from flags.
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
        }
    }
}

/// A setting the environment got wrong. Refused at start-up, so a misconfigured worker
/// fails its first invocation loudly instead of writing wrong variants.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl WorkerConfig {
    /// Read `EDGETHUMB_*` variables (documented in `docs/worker.md`); unset ones keep their
    /// defaults. `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` sizes the memory budget on Lambda.
    pub fn from_env() -> Result<WorkerConfig, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`WorkerConfig::from_env`] over any lookup (tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<WorkerConfig, ConfigError> {
        let mut config = WorkerConfig::default();
        if let Some(mib) =
            get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").and_then(|v| v.parse::<u32>().ok())
        {
            // Leave room for the runtime, the AWS SDK and the allocator's slack.
            config.memory_budget_mib = (mib / 10 * 6).max(64);
        }
        fn parse<T: std::str::FromStr>(
            get: &impl Fn(&str) -> Option<String>,
            name: &'static str,
            reason: &'static str,
            valid: impl Fn(&T) -> bool,
        ) -> Result<Option<T>, ConfigError> {
            let Some(value) = get(name) else {
                return Ok(None);
            };
            match value.trim().parse::<T>() {
                Ok(v) if valid(&v) => Ok(Some(v)),
                _ => Err(ConfigError::Invalid {
                    name,
                    value,
                    reason,
                }),
            }
        }
        if let Some(value) = get("EDGETHUMB_CACHE_CONTROL") {
            if value.trim().is_empty() || !value.is_ascii() || value.contains(['\r', '\n']) {
                return Err(ConfigError::Invalid {
                    name: "EDGETHUMB_CACHE_CONTROL",
                    value,
                    reason: "must be a non-empty single-line ASCII header value",
                });
            }
            config.cache_control = value.trim().to_string();
        }
        if let Some(v) = parse(
            &get,
            "EDGETHUMB_TARGET_SCORE",
            "a number in 0..=100",
            |v: &f64| (0.0..=100.0).contains(v),
        )? {
            config.tuning.target_score = v;
        }
        if let Some(v) = parse(
            &get,
            "EDGETHUMB_MAX_ENCODES",
            "an integer in 1..=20",
            |v: &u32| (1..=20).contains(v),
        )? {
            config.tuning.max_encodes = v;
        }
        if let Some(v) = parse(
            &get,
            "EDGETHUMB_CONCURRENCY",
            "an integer in 1..=64",
            |v: &usize| (1..=64).contains(v),
        )? {
            config.concurrency = v;
        }
        if let Some(v) = parse(
            &get,
            "EDGETHUMB_MEMORY_BUDGET_MB",
            "an integer >= 64",
            |v: &u32| *v >= 64,
        )? {
            config.memory_budget_mib = v;
        }
        if let Some(v) = parse(
            &get,
            "EDGETHUMB_MAX_SOURCE_PIXELS",
            "a positive integer",
            |v: &u64| *v > 0,
        )? {
            config.limits.max_pixels = v;
        }
        if let Some(v) = parse(
            &get,
            "EDGETHUMB_MAX_SOURCE_BYTES",
            "a positive integer",
            |v: &u64| *v > 0,
        )? {
            config.limits.max_bytes = v;
        }
        if let Some(v) = parse(
            &get,
            "EDGETHUMB_TIME_RESERVE_MS",
            "an integer number of milliseconds",
            |_: &u64| true,
        )? {
            config.time_reserve = Duration::from_millis(v);
        }
        if let Some(list) = get("EDGETHUMB_BUCKET") {
            let buckets: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .map(String::from)
                .collect();
            if !buckets.is_empty() {
                config.allowed_buckets = Some(buckets);
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let c = WorkerConfig::from_lookup(lookup(&[])).unwrap();
        assert_eq!(c.cache_control, DEFAULT_CACHE_CONTROL);
        assert_eq!(c.tuning.target_score, tuning::DEFAULT_TARGET_SCORE);
        assert!(c.concurrency >= 1);
        assert!(c.allowed_buckets.is_none());
    }

    #[test]
    fn reads_every_variable() {
        let c = WorkerConfig::from_lookup(lookup(&[
            ("EDGETHUMB_CACHE_CONTROL", "public, max-age=60"),
            ("EDGETHUMB_TARGET_SCORE", "72.5"),
            ("EDGETHUMB_MAX_ENCODES", "4"),
            ("EDGETHUMB_CONCURRENCY", "3"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048"),
            ("EDGETHUMB_MAX_SOURCE_PIXELS", "1000"),
            ("EDGETHUMB_MAX_SOURCE_BYTES", "2000"),
            ("EDGETHUMB_TIME_RESERVE_MS", "1500"),
            ("EDGETHUMB_BUCKET", "a, b"),
        ]))
        .unwrap();
        assert_eq!(c.cache_control, "public, max-age=60");
        assert_eq!(c.tuning.target_score, 72.5);
        assert_eq!(c.tuning.max_encodes, 4);
        assert_eq!(c.concurrency, 3);
        assert_eq!(c.memory_budget_mib, 1224);
        assert_eq!(c.limits.max_pixels, 1000);
        assert_eq!(c.limits.max_bytes, 2000);
        assert_eq!(c.time_reserve, Duration::from_millis(1500));
        assert_eq!(c.allowed_buckets, Some(vec!["a".into(), "b".into()]));
        let c = WorkerConfig::from_lookup(lookup(&[
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048"),
            ("EDGETHUMB_MEMORY_BUDGET_MB", "512"),
        ]))
        .unwrap();
        assert_eq!(c.memory_budget_mib, 512);
    }

    #[test]
    fn refuses_bad_values_naming_the_variable() {
        for (name, value) in [
            ("EDGETHUMB_TARGET_SCORE", "high"),
            ("EDGETHUMB_TARGET_SCORE", "101"),
            ("EDGETHUMB_CONCURRENCY", "0"),
            ("EDGETHUMB_MAX_ENCODES", "0"),
            ("EDGETHUMB_MEMORY_BUDGET_MB", "10"),
            ("EDGETHUMB_CACHE_CONTROL", "a\nb"),
            ("EDGETHUMB_CACHE_CONTROL", " "),
        ] {
            let err = WorkerConfig::from_lookup(lookup(&[(name, value)])).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
