//! The long-poll loop behind `edgethumb work`: the worker outside Lambda.
//!
//! Receive a batch, run it through the same [`Worker`] as the Lambda, delete the messages
//! that are done, leave the failed ones to come back (and, under a redrive policy, go to
//! the dead-letter queue). While a batch runs, its messages' visibility is extended so a
//! long render is not handed to another worker. On shutdown (SIGTERM, Ctrl-C) no new render
//! starts; renders in flight finish and are acked; messages not started are released
//! (visibility 0) for another worker; nothing unfinished is deleted.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{info, warn};

use super::BucketStores;
use super::batch::{Record, RecordOutcome, Worker};
use crate::queue::{JobQueue, MAX_BATCH, QueueError, ReceivedMessage};

/// How the loop polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerOptions {
    /// Exit once a receive comes back empty (drain the queue, for scripts and tests).
    pub once: bool,
    /// Long-poll wait per receive (SQS allows up to 20 s).
    pub wait: Duration,
    /// Visibility timeout asked for on receive, renewed every third of it while working.
    pub visibility: Duration,
    /// Messages per receive (1..=10).
    pub max_messages: u32,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            once: false,
            wait: Duration::from_secs(20),
            visibility: Duration::from_secs(60),
            max_messages: MAX_BATCH as u32,
        }
    }
}

/// Counts for the final log line and `--once`'s exit status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub received: u64,
    pub done: u64,
    pub failed: u64,
    /// Released unstarted at shutdown.
    pub released: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
}

/// The loop. The queue is shared (`Arc`) so a caller can keep using it, e.g. `serve`'s
/// handler enqueues on the queue its in-process runner drains.
pub struct Runner<Q: ?Sized, S> {
    queue: Arc<Q>,
    worker: Worker<S>,
    options: RunnerOptions,
}

impl<Q: JobQueue + ?Sized, S: BucketStores> Runner<Q, S> {
    pub fn new(queue: Arc<Q>, worker: Worker<S>, options: RunnerOptions) -> Self {
        Runner {
            queue,
            worker,
            options,
        }
    }

    /// Run until `shutdown` resolves (or, with `once`, until the queue is empty).
    ///
    /// A queue error that retrying can fix is logged and retried with back-off; any other
    /// ends the loop with the error.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<RunSummary, RunnerError> {
        let stop = AtomicBool::new(false);
        let mut summary = RunSummary::default();
        let mut backoff = Duration::from_millis(200);
        tokio::pin!(shutdown);
        loop {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let received = tokio::select! {
                r = self.queue.receive(self.options.max_messages, self.options.wait, self.options.visibility) => r,
                () = &mut shutdown => {
                    stop.store(true, Ordering::SeqCst);
                    break;
                }
            };
            let messages = match received {
                Ok(m) => {
                    backoff = Duration::from_millis(200);
                    m
                }
                Err(e) if e.is_retryable() => {
                    warn!(event = "worker.receive_failed", queue = self.queue.name(), error = %e, retry_in_ms = backoff.as_millis() as u64);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut shutdown => { stop.store(true, Ordering::SeqCst); }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(20));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if messages.is_empty() {
                if self.options.once {
                    break;
                }
                continue;
            }
            summary.received += messages.len() as u64;
            let outcomes = self.run_batch(&messages, &stop, &mut shutdown).await;
            for (message, outcome) in messages.iter().zip(&outcomes) {
                match outcome {
                    RecordOutcome::Done(_)
                    | RecordOutcome::Event(_)
                    | RecordOutcome::Invalidation(_) => {
                        summary.done += 1;
                        if let Err(e) = self.queue.ack(&message.receipt).await {
                            // The job is done; a redelivery will find it current and skip.
                            warn!(event = "worker.ack_failed", job_id = message.id.as_str(), error = %e);
                        }
                    }
                    RecordOutcome::Failed {
                        kind: "not-started",
                        ..
                    } => {
                        summary.released += 1;
                        // Hand it to another worker now rather than after the timeout.
                        if let Err(e) = self.queue.extend(&message.receipt, Duration::ZERO).await {
                            warn!(event = "worker.release_failed", job_id = message.id.as_str(), error = %e);
                        }
                    }
                    RecordOutcome::Failed { .. } => summary.failed += 1,
                }
            }
        }
        info!(
            event = "worker.stopped",
            queue = self.queue.name(),
            received = summary.received,
            done = summary.done,
            failed = summary.failed,
            released = summary.released,
        );
        Ok(summary)
    }

    /// Run one received batch, renewing visibility until it is done and turning a shutdown
    /// signal into "start nothing new".
    async fn run_batch<F: Future<Output = ()>>(
        &self,
        messages: &[ReceivedMessage],
        stop: &AtomicBool,
        shutdown: &mut std::pin::Pin<&mut F>,
    ) -> Vec<RecordOutcome> {
        let records: Vec<Record> = messages
            .iter()
            .map(|m| Record {
                id: m.id.clone(),
                body: m.body.clone(),
                receive_count: m.receive_count,
            })
            .collect();
        let work = self.worker.run(&records, None, stop);
        tokio::pin!(work);
        let period = (self.options.visibility / 3).max(Duration::from_millis(100));
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut shutdown_seen = stop.load(Ordering::SeqCst);
        loop {
            tokio::select! {
                outcomes = &mut work => return outcomes,
                () = shutdown.as_mut(), if !shutdown_seen => {
                    shutdown_seen = true;
                    stop.store(true, Ordering::SeqCst);
                    info!(event = "worker.shutdown", "finishing renders in flight; starting no new ones");
                }
                _ = renew.tick() => {
                    for m in messages {
                        if let Err(e) = self.queue.extend(&m.receipt, self.options.visibility).await {
                            warn!(event = "worker.extend_failed", job_id = m.id.as_str(), error = %e);
                        }
                    }
                }
            }
        }
    }
}
