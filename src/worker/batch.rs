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

use super::message::{DeferredInvalidation, Message, MessageError, StorageChange};
use super::process::{self, KeyOutcome, MemoryGate, RenderFailure, RenderReport, RenderTask};
use super::refresh::{self, RefreshReport};
use super::{BucketStores, WorkerConfig};
use crate::cdn::{self, CdnError, CdnInvalidator, Coverage};
use crate::job::Job;
use crate::metrics::{self, MetricsSink, NoMetrics, Observation};
use crate::queue::{JobQueue, MAX_DELAY};
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
    /// Done: an S3 event handled (its originals refreshed) or one with nothing to do.
    /// Delete the message.
    Event(EventOutcome),
    /// Done: a deferred invalidation message, invalidated, deferred again or dropped.
    /// Delete the message.
    Invalidation(InvalidationOutcome),
    /// Not done: keep the message (it comes back, or goes to the DLQ).
    Failed {
        retryable: bool,
        kind: &'static str,
        reason: String,
    },
}

impl RecordOutcome {
    pub fn is_done(&self) -> bool {
        matches!(
            self,
            RecordOutcome::Done(_) | RecordOutcome::Event(_) | RecordOutcome::Invalidation(_)
        )
    }

    fn failed(failure: &RenderFailure) -> Self {
        RecordOutcome::Failed {
            retryable: failure.is_retryable(),
            kind: failure.kind(),
            reason: failure.to_string(),
        }
    }
}

/// What an S3 event message led to, summed over its records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventOutcome {
    /// Records naming an original (refreshed).
    pub originals: usize,
    /// Records naming a variant key: the worker's own writes coming back, dropped.
    pub variant_events: usize,
    /// Records whose event changes no content (tagging, ACL, restore...).
    pub ignored: usize,
    /// Our variants re-rendered from the new original.
    pub rerendered: usize,
    /// Our variants deleted with their original.
    pub deleted: usize,
    /// Hand-made `key@…` objects left alone.
    pub foreign: usize,
}

/// What became of a batch's invalidation (the one CreateInvalidation that covers its
/// refreshed originals and its deferred invalidation messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidationOutcome {
    /// CloudFront accepted it.
    Created,
    /// CloudFront throttled it; one delayed message on the queue carries it all (attempt + 1).
    Deferred,
    /// No distribution configured: nothing invalidated (logged as `outcome=no-cdn`).
    NoCdn,
}

/// The first deferral's delay: about how long CloudFront takes to complete an invalidation
/// ("usually within a minute or two"), so that by then some of the quota is free again.
pub const FIRST_DEFERRAL: Duration = Duration::from_secs(60);

/// How long deferral attempt `attempt` (1 for the first) waits: [`FIRST_DEFERRAL`] doubling
/// per attempt, plus up to a quarter more by `jitter` (0..=1) so the deferrals of concurrent
/// batches spread out rather than collide again, never more than SQS's 900 s.
pub fn deferral_delay(attempt: u32, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    let base = FIRST_DEFERRAL.as_secs_f64() * f64::from(1u32 << doublings);
    let secs = (base * (1.0 + jitter.clamp(0.0, 1.0) / 4.0)).min(MAX_DELAY.as_secs_f64());
    Duration::from_secs(secs as u64)
}

/// A number in 0..1 that differs from call to call (the deferral's jitter): std's hasher
/// keys are random per process and per call, which is all a jitter needs.
fn jitter() -> f64 {
    use std::hash::BuildHasher;
    let hash =
        std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// A record, read.
enum Admitted {
    Job(Job, VariantKey),
    Event(Vec<StorageChange>),
    TestEvent(String),
    Invalidation(DeferredInvalidation),
}

/// What one S3 event record asks for.
enum ChangeKind {
    Ignored,
    Variant,
    Original,
}

/// One original to refresh and the event records waiting on it (duplicates in one batch
/// refresh once).
struct OriginalGroup {
    bucket: String,
    key: String,
    records: Vec<usize>,
}

/// The worker: stores, settings and the limits shared by every batch it runs.
pub struct Worker<S> {
    stores: S,
    config: WorkerConfig,
    cpu: Arc<Semaphore>,
    memory: Arc<Semaphore>,
    metrics: Arc<dyn MetricsSink>,
    cdn: Option<Arc<dyn CdnInvalidator>>,
    deferral: Option<Arc<dyn JobQueue>>,
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
            cdn: None,
            deferral: None,
        }
    }

    /// The queue a throttled invalidation is deferred to: the render queue this worker
    /// reads, so the delayed message comes back to a worker. Without one, a throttled
    /// invalidation fails the records it covers, which then come back by their visibility
    /// timeout (and, throttled `maxReceiveCount` times, end in the DLQ).
    pub fn with_deferral_queue(mut self, queue: Arc<dyn JobQueue>) -> Self {
        self.deferral = Some(queue);
        self
    }

    /// The CDN to invalidate after refreshes (the distribution of
    /// [`WorkerConfig::distribution_id`]); without one, refreshes still happen and the
    /// log says no CDN was invalidated.
    pub fn with_cdn(mut self, cdn: Arc<dyn CdnInvalidator>) -> Self {
        self.cdn = Some(cdn);
        self
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
        let mut originals: Vec<OriginalGroup> = Vec::new();
        let mut by_original: HashMap<(String, String), usize> = HashMap::new();
        // Event records waiting on their originals' refreshes: what they said so far.
        let mut events: Vec<(usize, EventOutcome)> = Vec::new();
        // Deferred invalidation messages: merged into the batch's one invalidation.
        let mut deferred: Vec<(usize, DeferredInvalidation)> = Vec::new();
        for (index, record) in records.iter().enumerate() {
            let admitted = match self.admit(record) {
                Ok(admitted) => admitted,
                Err(failure) => {
                    log_failure(record, &failure, None);
                    self.metrics.record(&failure_observation(record, &failure));
                    outcomes[index] = Some(RecordOutcome::failed(&failure));
                    continue;
                }
            };
            let (job, variant) = match admitted {
                Admitted::Job(job, variant) => (job, variant),
                Admitted::Event(changes) => {
                    let mut said = EventOutcome::default();
                    for change in changes {
                        match self.classify(record, &change) {
                            ChangeKind::Ignored => said.ignored += 1,
                            ChangeKind::Variant => said.variant_events += 1,
                            ChangeKind::Original => {
                                let group_index = *by_original
                                    .entry((change.bucket.clone(), change.key.clone()))
                                    .or_insert_with(|| {
                                        originals.push(OriginalGroup {
                                            bucket: change.bucket.clone(),
                                            key: change.key.clone(),
                                            records: Vec::new(),
                                        });
                                        originals.len() - 1
                                    });
                                originals[group_index].records.push(index);
                                said.originals += 1;
                            }
                        }
                    }
                    events.push((index, said));
                    continue;
                }
                Admitted::Invalidation(invalidation) => {
                    deferred.push((index, invalidation));
                    continue;
                }
                Admitted::TestEvent(bucket) => {
                    info!(
                        event = "worker.storage_event",
                        job_id = record.id.as_str(),
                        outcome = "test-event",
                        bucket = bucket.as_str(),
                        "S3's test event (sent when the notification is configured): nothing to do"
                    );
                    self.metrics.record(&event_observation("test"));
                    outcomes[index] = Some(RecordOutcome::Event(EventOutcome::default()));
                    continue;
                }
            };
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
            let key_index = match group.task.keys.iter().position(|k| *k == job.variant_key) {
                Some(i) => i,
                None => {
                    group.task.keys.push(job.variant_key.clone());
                    group.task.keys.len() - 1
                }
            };
            group.records.push((index, key_index));
        }

        let longest = AtomicU64::new(0);
        let renders = futures::future::join_all(
            groups
                .iter()
                .map(|group| self.run_group(group, deadline, stop, &longest)),
        );
        let refreshes = futures::future::join_all(
            originals
                .iter()
                .map(|original| self.run_refresh(original, deadline, stop, &longest)),
        );
        let (results, mut refreshed) = futures::future::join(renders, refreshes).await;

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
                        log_failure(
                            record,
                            failure,
                            Some((&group.task.bucket, &group.task.original_key)),
                        );
                        self.metrics.record(&failure_observation(record, failure));
                        RecordOutcome::failed(failure)
                    }
                };
                outcomes[index] = Some(outcome);
            }
        }

        let invalidated = self
            .invalidate(records, &originals, &mut refreshed, &deferred)
            .await;
        for (index, _) in &deferred {
            let record = &records[*index];
            outcomes[*index] = Some(match &invalidated {
                Ok(outcome) => RecordOutcome::Invalidation(*outcome),
                Err(failure) => {
                    log_failure(record, failure, None);
                    self.metrics.record(&failure_observation(record, failure));
                    RecordOutcome::failed(failure)
                }
            });
        }
        for (index, mut said) in events {
            let record = &records[index];
            let mut failure = None;
            for (original, result) in originals.iter().zip(&refreshed) {
                if !original.records.contains(&index) {
                    continue;
                }
                match result {
                    Ok(report) => {
                        said.rerendered += report.rerendered.len();
                        said.deleted += report.deleted.len();
                        said.foreign += report.foreign.len();
                    }
                    Err(f) => failure = Some((original, f)),
                }
            }
            let outcome = match failure {
                Some((original, f)) => {
                    log_failure(record, f, Some((&original.bucket, &original.key)));
                    self.metrics.record(&failure_observation(record, f));
                    RecordOutcome::failed(f)
                }
                None => {
                    for (kind, n) in [
                        ("original", said.originals),
                        ("variant", said.variant_events),
                        ("ignored", said.ignored),
                    ] {
                        for _ in 0..n {
                            self.metrics.record(&event_observation(kind));
                        }
                    }
                    RecordOutcome::Event(said)
                }
            };
            outcomes[index] = Some(outcome);
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

    /// Parse and vet a record: a job and its parsed variant, or an S3 event.
    fn admit(&self, record: &Record) -> Result<Admitted, RenderFailure> {
        let job = match Message::parse(&record.body) {
            Ok(Message::Job(job)) => job,
            Ok(Message::Storage(changes)) => {
                if let Some(change) = changes.iter().find(|c| !self.allows(&c.bucket)) {
                    return Err(RenderFailure::BucketNotAllowed(change.bucket.clone()));
                }
                return Ok(Admitted::Event(changes));
            }
            Ok(Message::TestEvent { bucket }) => return Ok(Admitted::TestEvent(bucket)),
            Ok(Message::Invalidation(invalidation)) => {
                return Ok(Admitted::Invalidation(invalidation));
            }
            Err(MessageError::Invalidation(reason)) => {
                return Err(RenderFailure::InvalidInvalidation(reason));
            }
            Err(MessageError::Job(e)) => return Err(RenderFailure::InvalidJob(e)),
            Err(MessageError::Event(reason)) => return Err(RenderFailure::InvalidEvent(reason)),
        };
        if !self.allows(&job.bucket) {
            return Err(RenderFailure::BucketNotAllowed(job.bucket));
        }
        let variant = job.variant()?;
        Ok(Admitted::Job(job, variant))
    }

    fn allows(&self, bucket: &str) -> bool {
        self.config
            .allowed_buckets
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|b| b == bucket))
    }

    /// What one S3 event record asks of the worker, logged when it asks nothing.
    fn classify(&self, record: &Record, change: &StorageChange) -> ChangeKind {
        if !change.may_change_content() {
            info!(
                event = "worker.storage_event",
                job_id = record.id.as_str(),
                outcome = "ignored",
                event_name = change.event_name.as_str(),
                bucket = change.bucket.as_str(),
                key = change.key.as_str(),
                "the event does not change the object's content"
            );
            return ChangeKind::Ignored;
        }
        if VariantKey::parse(&change.key).is_ok() {
            // Our own write (or someone's `key@…` upload) coming back: dropping it is what
            // keeps a variant write from causing more work.
            info!(
                event = "worker.storage_event",
                job_id = record.id.as_str(),
                outcome = "variant-dropped",
                event_name = change.event_name.as_str(),
                bucket = change.bucket.as_str(),
                key = change.key.as_str(),
            );
            return ChangeKind::Variant;
        }
        ChangeKind::Original
    }

    /// Whether a render may start now; the reason it may not.
    fn may_start(
        &self,
        deadline: Option<Instant>,
        stop: &AtomicBool,
        longest: &AtomicU64,
    ) -> Result<(), RenderFailure> {
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
        Ok(())
    }

    fn gate(&self) -> SemaphoreGate {
        SemaphoreGate {
            memory: self.memory.clone(),
            budget_mib: self.config.memory_budget_mib,
        }
    }

    /// One original's refresh. Its re-renders take the batch's CPU slots one by one (see
    /// [`refresh::refresh`]); the listing and HEADs before them hold none.
    async fn run_refresh(
        &self,
        original: &OriginalGroup,
        deadline: Option<Instant>,
        stop: &AtomicBool,
        longest: &AtomicU64,
    ) -> Result<RefreshReport, RenderFailure> {
        self.may_start(deadline, stop, longest)?;
        let started = Instant::now();
        let store = self.stores.store_for(&original.bucket);
        let result =
            refresh::refresh(store, &original.key, &self.config, &self.gate(), &self.cpu).await;
        longest.fetch_max(started.elapsed().as_millis() as u64, Ordering::SeqCst);
        if let Ok(report) = &result {
            log_refresh(original, report, started.elapsed());
            if report.changed() {
                self.metrics.record(
                    &Observation::new("worker")
                        .dimension("Outcome", "refreshed")
                        .value(
                            &metrics::WORKER_VARIANTS_REFRESHED,
                            report.rerendered.len() as f64,
                        )
                        .value(
                            &metrics::WORKER_VARIANTS_DELETED,
                            report.deleted.len() as f64,
                        ),
                );
            }
        }
        result
    }

    /// One invalidation for the batch: the originals whose variants changed (and, on a
    /// redelivery, those that have variants at all: the earlier delivery may have refreshed
    /// them and then failed to invalidate), merged with the batch's deferred invalidation
    /// messages into one plan within the quotas ([`Coverage`]).
    ///
    /// Throttled (`TooManyInvalidationsInProgress`): the whole coverage goes back to the
    /// queue as one delayed message ([`deferral_delay`]) and everything it covers is done;
    /// only when that send fails (or there is no queue to defer to) does the invalidation
    /// fail. A failed invalidation fails the refreshes it covered, so their records come back
    /// and try again; the result is what the deferred messages' records become.
    async fn invalidate(
        &self,
        records: &[Record],
        originals: &[OriginalGroup],
        refreshed: &mut [Result<RefreshReport, RenderFailure>],
        deferred: &[(usize, DeferredInvalidation)],
    ) -> Result<InvalidationOutcome, RenderFailure> {
        let covered: Vec<usize> = originals
            .iter()
            .zip(refreshed.iter())
            .enumerate()
            .filter(|(_, (original, result))| {
                let redelivered = original
                    .records
                    .iter()
                    .any(|&i| records.get(i).is_some_and(|r| r.receive_count > 1));
                result
                    .as_ref()
                    .is_ok_and(|r| r.changed() || (redelivered && r.has_variants()))
            })
            .map(|(i, _)| i)
            .collect();
        if covered.is_empty() && deferred.is_empty() {
            return Ok(InvalidationOutcome::Created);
        }
        let mut coverage = Coverage::new(
            covered.iter().map(|&i| originals[i].key.clone()),
            std::iter::empty(),
        );
        for (_, message) in deferred {
            coverage.merge(&message.coverage);
        }
        // Throttles so far of what this request carries (0: none of it was deferred yet).
        let throttled_before = deferred.iter().map(|(_, m)| m.attempt).max().unwrap_or(0);
        let paths = coverage.paths();
        let Some(cdn) = &self.cdn else {
            warn!(
                event = "worker.invalidation",
                outcome = "no-cdn",
                originals = covered.len(),
                deferred_messages = deferred.len(),
                paths = paths.len(),
                "no distribution id configured (EDGETHUMB_DISTRIBUTION_ID / --distribution-id): variants were refreshed but no CDN was invalidated"
            );
            if !deferred.is_empty() {
                self.metrics.record(
                    &Observation::new("worker")
                        .dimension("Outcome", "dropped")
                        .value(
                            &metrics::WORKER_INVALIDATIONS_DEFERRED,
                            deferred.len() as f64,
                        ),
                );
            }
            return Ok(InvalidationOutcome::NoCdn);
        };
        let started = Instant::now();
        let error = match cdn.invalidate(&paths).await {
            Ok(id) => {
                info!(
                    event = "worker.invalidation",
                    outcome = "created",
                    distribution = cdn.distribution(),
                    invalidation_id = id.as_str(),
                    originals = covered.len(),
                    deferred_messages = deferred.len(),
                    throttled_before,
                    paths = paths.len(),
                    wildcards = cdn::wildcard_count(&paths),
                    first_path = paths.first().map_or("", String::as_str),
                    ms = ms(started.elapsed()),
                );
                self.metrics.record(
                    &Observation::new("worker")
                        .dimension("Outcome", "invalidated")
                        .value(&metrics::WORKER_INVALIDATION_PATHS, paths.len() as f64),
                );
                return Ok(InvalidationOutcome::Created);
            }
            Err(e) => e,
        };
        if matches!(error, CdnError::Throttled { .. }) {
            let attempt = throttled_before.saturating_add(1);
            match self.defer(&coverage, attempt).await {
                Ok((delay, message_id)) => {
                    info!(
                        event = "worker.invalidation",
                        outcome = "deferred",
                        distribution = cdn.distribution(),
                        attempt,
                        delay_s = delay.as_secs(),
                        message_id = message_id.as_str(),
                        originals = covered.len(),
                        deferred_messages = deferred.len(),
                        paths = paths.len(),
                        wildcards = cdn::wildcard_count(&paths),
                        first_path = paths.first().map_or("", String::as_str),
                        "CloudFront has too many invalidations in progress: sent back to the queue with a delay; the records it covers are done"
                    );
                    self.metrics.record(
                        &Observation::new("worker")
                            .dimension("Outcome", "deferred")
                            .count(&metrics::WORKER_INVALIDATIONS_DEFERRED, true),
                    );
                    return Ok(InvalidationOutcome::Deferred);
                }
                Err(reason) => {
                    warn!(
                        event = "worker.invalidation",
                        outcome = "undeferred",
                        distribution = cdn.distribution(),
                        attempt,
                        reason = reason.as_str(),
                        "throttled and could not be deferred: the records it covers are reported failed, so they come back"
                    );
                    self.metrics.record(
                        &Observation::new("worker")
                            .dimension("Outcome", "undeferred")
                            .count(&metrics::WORKER_INVALIDATIONS_DEFERRED, true),
                    );
                }
            }
        }
        warn!(
            event = "worker.invalidation",
            outcome = "failed",
            distribution = cdn.distribution(),
            retryable = error.is_retryable(),
            originals = covered.len(),
            deferred_messages = deferred.len(),
            paths = paths.len(),
            error = %error,
            "the refreshes it covered are reported failed, so their events come back"
        );
        for i in covered {
            refreshed[i] = Err(RenderFailure::Cdn(error.clone()));
        }
        Err(RenderFailure::Cdn(error))
    }

    /// Send `coverage` back to the deferral queue as attempt `attempt`, delayed by
    /// [`deferral_delay`]; the delay and the message id, or why it could not be sent.
    async fn defer(&self, coverage: &Coverage, attempt: u32) -> Result<(Duration, String), String> {
        let Some(queue) = &self.deferral else {
            return Err("no queue to defer to (EDGETHUMB_QUEUE_URL)".into());
        };
        let body = DeferredInvalidation {
            coverage: coverage.clone(),
            attempt,
        }
        .to_json();
        let delay = deferral_delay(attempt, jitter());
        queue
            .send_delayed(&body, delay)
            .await
            .map(|id| (delay, id))
            .map_err(|e| e.to_string())
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
        self.may_start(deadline, stop, longest)?;
        let started = Instant::now();
        let store = self.stores.store_for(&group.task.bucket);
        let result = process::render(store, &group.task, &self.config, &self.gate()).await;
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

/// An S3 event record's metrics, by what it was.
fn event_observation(kind: &'static str) -> Observation {
    Observation::new("worker")
        .dimension("Outcome", kind)
        .count(&metrics::WORKER_STORAGE_EVENTS, true)
}

fn log_refresh(original: &OriginalGroup, report: &RefreshReport, took: Duration) {
    info!(
        event = "worker.refresh",
        bucket = original.bucket.as_str(),
        original_key = original.key.as_str(),
        original = if report.original_etag.is_some() { "present" } else { "gone" },
        original_etag = report.original_etag.as_deref().unwrap_or(""),
        rerendered = report.rerendered.len(),
        deleted = report.deleted.len(),
        current = report.current,
        // Hand-made `key@…` objects: counted, named, never touched.
        foreign = report.foreign.len(),
        foreign_keys = ?report.foreign,
        ms = ms(took),
    );
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
        qindex = report.qindex,
        fetch_ms = ms(report.fetch),
        render_ms = ms(report.render),
        write_ms = ms(report.write),
    );
}

/// `at`: the bucket and original key, when the record got that far.
fn log_failure(record: &Record, failure: &RenderFailure, at: Option<(&str, &str)>) {
    let (bucket, original_key) = at.unwrap_or(("", ""));
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
