//! A batch of queue records: parse, de-duplicate, render with bounded parallelism, and
//! report each record's outcome.
//!
//! Shared by the Lambda handler ([`Worker::failed_ids`]; `edgethumb_aws` maps SQS events to it)
//! and the `edgethumb work` runner. Rules:
//! - every record gets an outcome; failures (retryable or permanent) are reported so the
//!   queue redelivers them, and redrive moves the permanent ones to the dead-letter queue
//!   after `maxReceiveCount` (they are also logged at `error` with the reason);
//! - records naming the same bucket and canonical variant render once, and each follows
//!   that render's outcome;
//! - at most `concurrency` renders run at once, and together they hold at most the memory
//!   budget (a permit weighted by the original's size);
//! - a render starts only while the invocation has time left for it; the others are
//!   reported as failures so they are retried, not lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::process::{self, KeyOutcome, MemoryGate, RenderFailure, RenderReport, RenderTask};
use super::{BucketStores, WorkerConfig};
use crate::job::Job;
use crate::metrics::{self, MetricsSink, NoMetrics, Observation};
use crate::variant::VariantKey;

/// One queue message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// SQS message id (what `batchItemFailures` names).
    pub id: String,
    pub body: String,
    /// Deliveries so far, this one included (for logs).
    pub receive_count: u32,
}

/// A record's result.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    /// Done: the variant is written or already current. Delete the message.
    Done(KeyOutcome),
    /// Not done: keep the message (it comes back, or goes to the DLQ).
    Failed {
        retryable: bool,
        kind: &'static str,
        reason: String,
    },
}

impl RecordOutcome {
    pub fn is_done(&self) -> bool {
        matches!(self, RecordOutcome::Done(_))
    }

    fn failed(failure: &RenderFailure) -> Self {
        RecordOutcome::Failed {
            retryable: failure.is_retryable(),
            kind: failure.kind(),
            reason: failure.to_string(),
        }
    }
}

/// The worker: stores, settings and the limits shared by every batch it runs.
pub struct Worker<S> {
    stores: S,
    config: WorkerConfig,
    cpu: Arc<Semaphore>,
    memory: Arc<Semaphore>,
    metrics: Arc<dyn MetricsSink>,
}

/// Memory permits are MiB of the budget.
struct SemaphoreGate {
    memory: Arc<Semaphore>,
    budget_mib: u32,
}

#[async_trait::async_trait]
impl MemoryGate for SemaphoreGate {
    async fn reserve(&self, bytes: u64) -> Box<dyn Send> {
        let mib = memory_weight_mib(bytes, self.budget_mib);
        match self.memory.clone().acquire_many_owned(mib).await {
            Ok(permit) => Box::new(permit),
            // Never closed; if it were, running without the gate beats failing the job.
            Err(_) => Box::new(()),
        }
    }
}

/// Permits (MiB) a render needing `bytes` ([`process::memory_estimate`]) holds: at least 1,
/// at most the whole budget, so the biggest render still runs (alone).
pub fn memory_weight_mib(bytes: u64, budget_mib: u32) -> u32 {
    let mib = bytes.div_ceil(1024 * 1024);
    mib.clamp(1, u64::from(budget_mib.max(1))) as u32
}

/// One render and the records waiting on it.
struct Group {
    task: RenderTask,
    /// (record index, index into `task.keys`).
    records: Vec<(usize, usize)>,
}

impl<S: BucketStores> Worker<S> {
    pub fn new(stores: S, config: WorkerConfig) -> Self {
        let concurrency = config.concurrency.max(1);
        let budget = config.memory_budget_mib.max(1);
        Worker {
            stores,
            cpu: Arc::new(Semaphore::new(concurrency)),
            memory: Arc::new(Semaphore::new(budget as usize)),
            config,
            metrics: Arc::new(NoMetrics),
        }
    }

    /// Where each record's observation goes (EMF on Lambda, a registry in `serve`).
    pub fn with_metrics(mut self, metrics: Arc<dyn MetricsSink>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// A Lambda batch: process `records` and return the ids of those not done (retryable
    /// and permanent failures alike), which the Lambda answers as `batchItemFailures` so
    /// SQS redelivers them and redrive moves the permanent ones to the dead-letter queue.
    ///
    /// `deadline` is the invocation's deadline (from the Lambda context).
    pub async fn failed_ids(&self, records: &[Record], deadline: Instant) -> Vec<String> {
        let outcomes = self
            .run(records, Some(deadline), &AtomicBool::new(false))
            .await;
        records
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| !outcome.is_done())
            .map(|(record, _)| record.id.clone())
            .collect()
    }

    /// Process `records`; one outcome per record, in order.
    ///
    /// No render starts once `stop` is set or `deadline` is too close; those records are
    /// reported as retryable `not-started` failures.
    pub async fn run(
        &self,
        records: &[Record],
        deadline: Option<Instant>,
        stop: &AtomicBool,
    ) -> Vec<RecordOutcome> {
        let mut outcomes: Vec<Option<RecordOutcome>> = vec![None; records.len()];
        let mut groups: Vec<Group> = Vec::new();
        let mut by_variant: HashMap<(String, String), usize> = HashMap::new();
        for (index, record) in records.iter().enumerate() {
            match self.admit(record) {
                Err(failure) => {
                    log_failure(record, &failure, None);
                    self.metrics.record(&failure_observation(record, &failure));
                    outcomes[index] = Some(RecordOutcome::failed(&failure));
                }
                Ok((job, variant)) => {
                    let group_index = *by_variant
                        .entry((job.bucket.clone(), variant.canonical_key()))
                        .or_insert_with(|| {
                            groups.push(Group {
                                task: RenderTask {
                                    bucket: job.bucket.clone(),
                                    original_key: job.original_key.clone(),
                                    params: variant.params.clone(),
                                    keys: Vec::new(),
                                },
                                records: Vec::new(),
                            });
                            groups.len() - 1
                        });
                    let group = &mut groups[group_index];
                    let key_index = match group.task.keys.iter().position(|k| *k == job.variant_key)
                    {
                        Some(i) => i,
                        None => {
                            group.task.keys.push(job.variant_key.clone());
                            group.task.keys.len() - 1
                        }
                    };
                    group.records.push((index, key_index));
                }
            }
        }

        let longest = AtomicU64::new(0);
        let results = futures::future::join_all(
            groups
                .iter()
                .map(|group| self.run_group(group, deadline, stop, &longest)),
        )
        .await;

        for (group, result) in groups.iter().zip(results) {
            for &(index, key_index) in &group.records {
                let record = &records[index];
                let outcome = match &result {
                    Ok((keys, report)) => {
                        let key_outcome =
                            keys.get(key_index).cloned().unwrap_or(KeyOutcome::Current);
                        log_done(record, &group.task, key_index, &key_outcome, report);
                        self.metrics.record(&done_observation(
                            record,
                            &group.task,
                            &key_outcome,
                            report,
                        ));
                        RecordOutcome::Done(key_outcome)
                    }
                    Err(failure) => {
                        log_failure(record, failure, Some(&group.task));
                        self.metrics.record(&failure_observation(record, failure));
                        RecordOutcome::failed(failure)
                    }
                };
                outcomes[index] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or(RecordOutcome::Failed {
                    retryable: true,
                    kind: "internal",
                    reason: "no outcome recorded".into(),
                })
            })
            .collect()
    }

    /// Parse and vet a record: the job and its parsed variant.
    fn admit(&self, record: &Record) -> Result<(Job, VariantKey), RenderFailure> {
        let job = Job::parse(&record.body)?;
        if let Some(allowed) = &self.config.allowed_buckets
            && !allowed.contains(&job.bucket)
        {
            return Err(RenderFailure::BucketNotAllowed(job.bucket));
        }
        let variant = job.variant()?;
        Ok((job, variant))
    }

    async fn run_group(
        &self,
        group: &Group,
        deadline: Option<Instant>,
        stop: &AtomicBool,
        longest: &AtomicU64,
    ) -> process::RenderResult {
        let Ok(_slot) = self.cpu.acquire().await else {
            return Err(RenderFailure::NotStarted("worker shutting down"));
        };
        if stop.load(Ordering::SeqCst) {
            return Err(RenderFailure::NotStarted("shutting down"));
        }
        if let Some(deadline) = deadline {
            let needed =
                self.config.time_reserve + Duration::from_millis(longest.load(Ordering::SeqCst));
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining < needed {
                return Err(RenderFailure::NotStarted(
                    "too little invocation time left for another render",
                ));
            }
        }
        let started = Instant::now();
        let store = self.stores.store_for(&group.task.bucket);
        let gate = SemaphoreGate {
            memory: self.memory.clone(),
            budget_mib: self.config.memory_budget_mib,
        };
        let result = process::render(store, &group.task, &self.config, &gate).await;
        longest.fetch_max(started.elapsed().as_millis() as u64, Ordering::SeqCst);
        result
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// A finished record's metrics: written or already current.
fn done_observation(
    record: &Record,
    task: &RenderTask,
    outcome: &KeyOutcome,
    report: &RenderReport,
) -> Observation {
    let format = task.params.format.map_or("source", |f| f.extension());
    let base = Observation::new("worker")
        .dimension("Format", format)
        .count(&metrics::WORKER_JOBS, true)
        .count(&metrics::WORKER_RETRIES, record.receive_count > 1)
        .value(&metrics::WORKER_SOURCE_BYTES, report.source_bytes as f64);
    match outcome {
        KeyOutcome::Written {
            bytes,
            quality,
            score,
            ..
        } => {
            let mut o = base
                .dimension("Outcome", "written")
                .duration(&metrics::WORKER_RENDER_TIME, report.render)
                .value(&metrics::WORKER_QUALITY, f64::from(*quality))
                .value(&metrics::WORKER_OUTPUT_BYTES, *bytes as f64);
            if let Some(score) = score {
                o = o.value(&metrics::WORKER_SCORE, *score);
            }
            o
        }
        KeyOutcome::Current => base.dimension("Outcome", "current"),
    }
}

/// A failed record's metrics, by outcome (retryable or permanent) and reason (its kind).
fn failure_observation(record: &Record, failure: &RenderFailure) -> Observation {
    let permanent = !failure.is_retryable();
    Observation::new("worker")
        .dimension(
            "Outcome",
            if permanent {
                "permanent-failure"
            } else {
                "retryable-failure"
            },
        )
        .dimension("Reason", failure.kind())
        .count(&metrics::WORKER_JOBS, true)
        .count(&metrics::WORKER_RETRIES, record.receive_count > 1)
        .count(&metrics::WORKER_DEAD_LETTER, permanent)
}

fn log_done(
    record: &Record,
    task: &RenderTask,
    key_index: usize,
    outcome: &KeyOutcome,
    report: &RenderReport,
) {
    let key = task.keys.get(key_index).map_or("", String::as_str);
    let (outcome_name, bytes, quality, score) = match outcome {
        KeyOutcome::Written {
            bytes,
            quality,
            score,
            ..
        } => ("written", *bytes as u64, Some(*quality), *score),
        KeyOutcome::Current => ("current", 0, None, None),
    };
    info!(
        event = "worker.job",
        job_id = record.id.as_str(),
        receive_count = record.receive_count,
        outcome = outcome_name,
        bucket = task.bucket.as_str(),
        key,
        original_key = task.original_key.as_str(),
        original_etag = report.original_etag.as_deref().unwrap_or(""),
        params = task.params.canonical().as_str(),
        source_bytes = report.source_bytes,
        bytes,
        quality,
        score,
        encodes = report.encodes,
        method = report.method,
        fetch_ms = ms(report.fetch),
        render_ms = ms(report.render),
        write_ms = ms(report.write),
    );
}

fn log_failure(record: &Record, failure: &RenderFailure, task: Option<&RenderTask>) {
    let bucket = task.map_or("", |t| t.bucket.as_str());
    let original_key = task.map_or("", |t| t.original_key.as_str());
    let reason = failure.to_string();
    if failure.is_retryable() {
        warn!(
            event = "worker.job",
            job_id = record.id.as_str(),
            receive_count = record.receive_count,
            outcome = "retry",
            kind = failure.kind(),
            bucket,
            original_key,
            reason = reason.as_str(),
        );
    } else {
        // Loud on purpose: this message will fail every delivery and end in the DLQ.
        error!(
            event = "worker.job",
            job_id = record.id.as_str(),
            receive_count = record.receive_count,
            outcome = "permanent-failure",
            kind = failure.kind(),
            bucket,
            original_key,
            reason = reason.as_str(),
            "job can never succeed; reported as failed so redrive moves it to the dead-letter queue"
        );
    }
}
