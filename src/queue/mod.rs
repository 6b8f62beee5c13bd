//! The `JobQueue` port: how render jobs travel from the edge to the worker.
//!
//! Adapters: `edgethumb_aws::SqsQueue` (AWS SQS), `local` (a durable spool directory, the
//! embedded default; feature `local`) and [`memory`] (tests). Both are at-least-once: a received message that is not acked before its
//! visibility timeout comes back.

#[cfg(feature = "local")]
pub mod local;
pub mod memory;

use std::time::Duration;

use async_trait::async_trait;

/// A received message. `receipt` acks or extends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub id: String,
    pub receipt: String,
    pub body: String,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
}

/// An entry of a batch send that still failed after retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedEntry {
    /// Index into the slice given to `send_batch`.
    pub index: usize,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("message is {size} bytes, over the queue's limit of {limit}")]
    MessageTooLarge { size: usize, limit: usize },
    #[error("{operation} on {queue} failed (retryable: {retryable}): {message}")]
    Backend {
        operation: &'static str,
        queue: String,
        retryable: bool,
        message: String,
    },
    #[error("unknown or expired receipt {0:?}")]
    InvalidReceipt(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl QueueError {
    pub fn is_retryable(&self) -> bool {
        match self {
            QueueError::Backend { retryable, .. } => *retryable,
            QueueError::Io { .. } => true,
            QueueError::MessageTooLarge { .. } | QueueError::InvalidReceipt(_) => false,
        }
    }
}

/// The job-queue port.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Queue name or URL, for logs.
    fn name(&self) -> &str;
    /// Send one message; returns its id.
    async fn send(&self, body: &str) -> Result<String, QueueError>;
    /// Send one message that no receive returns before `delay` has passed (SQS's
    /// `DelaySeconds`; at most [`MAX_DELAY`], longer delays are clamped to it). The worker
    /// defers a throttled CDN invalidation this way instead of failing the records it covers.
    async fn send_delayed(&self, body: &str, delay: Duration) -> Result<String, QueueError>;
    /// Send many (10 per request for SQS), retrying only the failed entries; returns the
    /// entries that still failed. An error means nothing could be sent at all.
    async fn send_batch(&self, bodies: &[String]) -> Result<Vec<FailedEntry>, QueueError>;
    /// Receive up to `max` (≤ 10) messages, waiting up to `wait` for the first one.
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError>;
    /// Acknowledge (delete) a message.
    async fn ack(&self, receipt: &str) -> Result<(), QueueError>;
    /// Keep a message invisible for `visibility` more, for long jobs.
    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError>;
}

/// A shared queue is a queue: handlers take `Q: JobQueue` by value, and tests or `serve`
/// keep a handle to the same queue to inspect or drain it.
#[async_trait]
impl<T: JobQueue + ?Sized> JobQueue for std::sync::Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    async fn send(&self, body: &str) -> Result<String, QueueError> {
        (**self).send(body).await
    }
    async fn send_delayed(&self, body: &str, delay: Duration) -> Result<String, QueueError> {
        (**self).send_delayed(body, delay).await
    }
    async fn send_batch(&self, bodies: &[String]) -> Result<Vec<FailedEntry>, QueueError> {
        (**self).send_batch(bodies).await
    }
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        (**self).receive(max, wait, visibility).await
    }
    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        (**self).ack(receipt).await
    }
    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        (**self).extend(receipt, visibility).await
    }
}

/// SQS's default (and, until 2025, maximum) message size: 256 KiB. Adapters refuse bigger
/// bodies before sending so the caller gets a clear error rather than an opaque 400.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Refuse a body over `limit` before it is sent, so the caller gets a clear error rather
/// than an opaque rejection from the queue.
pub fn check_message_size(body: &str, limit: usize) -> Result<(), QueueError> {
    if body.len() > limit {
        return Err(QueueError::MessageTooLarge {
            size: body.len(),
            limit,
        });
    }
    Ok(())
}

/// SQS's longest `DelaySeconds` (15 minutes); every adapter clamps a longer delay to it, so
/// local mode delays exactly what production would.
pub const MAX_DELAY: Duration = Duration::from_secs(900);

/// SQS returns at most 10 messages per receive and takes at most 10 entries per batch.
pub const MAX_BATCH: usize = 10;

/// `receive` takes 1..=10 like SQS; out-of-range values are clamped, not refused, so a
/// caller's `0` cannot turn into a busy loop that never returns anything.
pub fn clamp_receive_max(max: u32) -> usize {
    (max as usize).clamp(1, MAX_BATCH)
}
