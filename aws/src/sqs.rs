//! The SQS adapter of [`JobQueue`].
//!
//! Message size is checked here, before sending, because SQS's own refusal is a generic 400
//! that a worker or the edge could mistake for a transient failure and retry forever.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{MessageSystemAttributeName, SendMessageBatchRequestEntry};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use edgethumb::queue::{
    DEFAULT_MAX_MESSAGE_BYTES, FailedEntry, JobQueue, MAX_BATCH, MAX_DELAY, QueueError,
    ReceivedMessage, check_message_size, clamp_receive_max,
};

/// SQS long polling waits at most 20 s per call; longer waits are several calls.
const MAX_WAIT_PER_CALL: Duration = Duration::from_secs(20);
/// SQS's largest visibility timeout (12 hours).
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
/// Sends of the entries of a batch that SQS reported as failed through no fault of ours
/// (the first send included). Only entries are retried here: a call that fails outright was
/// already retried by the SDK ([`crate::CallLimits`]) and is not sent again.
pub const ENTRY_ATTEMPTS: u32 = 3;
/// Wait before the first re-send of failed entries, doubling after.
pub const ENTRY_BACKOFF: Duration = Duration::from_millis(100);

/// What an SQS failure means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqsFailure {
    /// The receipt handle is unknown, stale or no longer in flight.
    InvalidReceipt,
    Retryable,
    Permanent,
}

/// Map an SQS answer to its meaning (pure, for unit tests). `status` is `None` when no
/// response arrived (timeout, connection failure): retryable.
pub fn classify(status: Option<u16>, code: Option<&str>) -> SqsFailure {
    let Some(status) = status else {
        return SqsFailure::Retryable;
    };
    match code {
        Some("ReceiptHandleIsInvalid" | "MessageNotInflight" | "InvalidReceiptHandle") => {
            return SqsFailure::InvalidReceipt;
        }
        Some(
            "RequestThrottled"
            | "ThrottlingException"
            | "KmsThrottled"
            | "ServiceUnavailable"
            | "InternalError"
            | "InternalFailure"
            | "RequestTimeout",
        ) => return SqsFailure::Retryable,
        _ => {}
    }
    match status {
        429 | 500..=599 => SqsFailure::Retryable,
        _ => SqsFailure::Permanent,
    }
}

fn failure_of<E>(err: &SdkError<E, HttpResponse>) -> (SqsFailure, String)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = DisplayErrorContext(err).to_string();
    let failure = match err {
        SdkError::ConstructionFailure(_) => SqsFailure::Permanent,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            SqsFailure::Retryable
        }
        SdkError::ServiceError(ctx) => {
            classify(Some(ctx.raw().status().as_u16()), ctx.err().code())
        }
        _ => classify(err.raw_response().map(|r| r.status().as_u16()), err.code()),
    };
    (failure, message)
}

/// One SQS queue, addressed by URL.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    max_message_bytes: usize,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        SqsQueue {
            client,
            queue_url: queue_url.into(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// The queue's `MaximumMessageSize` when it differs from 256 KiB (SQS allows 1 KiB to
    /// 1 MiB). Not fetched automatically: the edge must not spend a round trip on it.
    pub fn with_max_message_bytes(mut self, limit: usize) -> Self {
        self.max_message_bytes = limit;
        self
    }

    pub fn client(&self) -> &aws_sdk_sqs::Client {
        &self.client
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    fn check_size(&self, body: &str) -> Result<(), QueueError> {
        check_message_size(body, self.max_message_bytes)
    }

    fn error<E>(
        &self,
        operation: &'static str,
        err: &SdkError<E, HttpResponse>,
        receipt: Option<&str>,
    ) -> QueueError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (failure, message) = failure_of(err);
        match (failure, receipt) {
            (SqsFailure::InvalidReceipt, Some(receipt)) => {
                QueueError::InvalidReceipt(receipt.to_string())
            }
            (failure, _) => QueueError::Backend {
                operation,
                queue: self.queue_url.clone(),
                retryable: failure == SqsFailure::Retryable,
                message,
            },
        }
    }

    /// Send one chunk (≤ 10 entries, ≤ the size limit in total), re-sending only the
    /// entries SQS reports as failed with a retryable code (up to [`ENTRY_ATTEMPTS`] sends,
    /// [`ENTRY_BACKOFF`] doubling between them). A call error ends the chunk: the SDK has
    /// already retried that call. Returns the entries still failed and, when no call got
    /// through at all, the call error.
    async fn send_chunk(
        &self,
        bodies: &[String],
        indices: &[usize],
    ) -> (Vec<FailedEntry>, Option<QueueError>) {
        let mut pending: Vec<usize> = indices.to_vec();
        let mut final_failures: Vec<FailedEntry> = Vec::new();
        let mut last_reasons: HashMap<usize, String> = HashMap::new();
        let mut call_error = None;
        let mut any_call_ok = false;
        for attempt in 0..ENTRY_ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(ENTRY_BACKOFF * 2u32.pow(attempt - 1)).await;
            }
            let mut entries = Vec::with_capacity(pending.len());
            for &index in &pending {
                match SendMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .message_body(&bodies[index])
                    .build()
                {
                    Ok(entry) => entries.push(entry),
                    Err(e) => {
                        last_reasons.insert(index, e.to_string());
                    }
                }
            }
            let result = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
            match result {
                Ok(output) => {
                    any_call_ok = true;
                    let mut retry = Vec::new();
                    for failed in output.failed {
                        let Ok(index) = failed.id.parse::<usize>() else {
                            continue;
                        };
                        let reason = format!(
                            "{}: {}",
                            failed.code,
                            failed.message.as_deref().unwrap_or("")
                        );
                        if entry_retryable(failed.sender_fault, &failed.code) {
                            last_reasons.insert(index, reason);
                            retry.push(index);
                        } else {
                            // Our request is wrong for this entry; resending cannot help.
                            final_failures.push(FailedEntry { index, reason });
                        }
                    }
                    pending = retry;
                }
                Err(err) => {
                    let error = self.error("SendMessageBatch", &err, None);
                    for &index in &pending {
                        last_reasons.insert(index, error.to_string());
                    }
                    call_error = Some(error);
                    break;
                }
            }
        }
        final_failures.extend(pending.into_iter().map(|index| {
            FailedEntry {
                index,
                reason: last_reasons
                    .remove(&index)
                    .unwrap_or_else(|| "not sent".to_string()),
            }
        }));
        (final_failures, if any_call_ok { None } else { call_error })
    }

    /// One SendMessage; without a delay, the queue's own default delay applies.
    async fn send_message(
        &self,
        body: &str,
        delay: Option<Duration>,
    ) -> Result<String, QueueError> {
        self.check_size(body)?;
        let output = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .set_delay_seconds(delay.map(|d| whole_seconds(d, MAX_DELAY)))
            .send()
            .await
            .map_err(|e| self.error("SendMessage", &e, None))?;
        Ok(output.message_id.unwrap_or_default())
    }
}

/// Whether an entry SQS reported as failed in a SendMessageBatch answer is worth sending
/// again: the service's fault (`SenderFault: false`), or throttling even when blamed on us.
pub fn entry_retryable(sender_fault: bool, code: &str) -> bool {
    !sender_fault || classify(Some(400), Some(code)) == SqsFailure::Retryable
}

/// Whole seconds for SQS, rounding up so a sub-second visibility never becomes 0
/// ("visible immediately").
fn whole_seconds(d: Duration, max: Duration) -> i32 {
    let d = d.min(max);
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

#[async_trait]
impl JobQueue for SqsQueue {
    fn name(&self) -> &str {
        &self.queue_url
    }

    async fn send(&self, body: &str) -> Result<String, QueueError> {
        self.send_message(body, None).await
    }

    async fn send_delayed(&self, body: &str, delay: Duration) -> Result<String, QueueError> {
        self.send_message(body, Some(delay)).await
    }

    async fn send_batch(&self, bodies: &[String]) -> Result<Vec<FailedEntry>, QueueError> {
        let mut failed = Vec::new();
        // Chunks of at most 10 entries and at most the size limit in total (SQS applies the
        // message limit to the whole batch request too).
        let mut chunks: Vec<Vec<usize>> = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        let mut current_bytes = 0usize;
        for (index, body) in bodies.iter().enumerate() {
            if let Err(e) = self.check_size(body) {
                failed.push(FailedEntry {
                    index,
                    reason: e.to_string(),
                });
                continue;
            }
            if current.len() == MAX_BATCH || current_bytes + body.len() > self.max_message_bytes {
                chunks.push(std::mem::take(&mut current));
                current_bytes = 0;
            }
            current.push(index);
            current_bytes += body.len();
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        let mut sent_any = chunks.is_empty();
        let mut last_error = None;
        for chunk in &chunks {
            let (chunk_failed, error) = self.send_chunk(bodies, chunk).await;
            if chunk_failed.len() < chunk.len() {
                sent_any = true;
            }
            failed.extend(chunk_failed);
            if error.is_some() {
                last_error = error;
            }
        }
        if !sent_any && let Some(error) = last_error {
            return Err(error);
        }
        failed.sort_by_key(|f| f.index);
        Ok(failed)
    }

    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let max = i32::try_from(clamp_receive_max(max)).unwrap_or(10);
        let visibility = whole_seconds(visibility, MAX_VISIBILITY);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            // SQS waits in whole seconds: round to the nearest, so a 1 s wait is a 1 s long
            // poll (not a short poll) and the overshoot stays under half a second.
            let wait_secs = i32::try_from(
                (remaining + Duration::from_millis(500))
                    .min(MAX_WAIT_PER_CALL)
                    .as_secs(),
            )
            .unwrap_or(0);
            let output = self
                .client
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(max)
                .wait_time_seconds(wait_secs)
                .visibility_timeout(visibility)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .send()
                .await
                .map_err(|e| self.error("ReceiveMessage", &e, None))?;
            let messages: Vec<ReceivedMessage> = output
                .messages
                .unwrap_or_default()
                .into_iter()
                .filter_map(|m| {
                    let receive_count = m
                        .attributes
                        .as_ref()
                        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(1);
                    Some(ReceivedMessage {
                        id: m.message_id?,
                        receipt: m.receipt_handle?,
                        body: m.body.unwrap_or_default(),
                        receive_count,
                    })
                })
                .collect();
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !messages.is_empty() || remaining < Duration::from_millis(500) {
                return Ok(messages);
            }
        }
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| self.error("DeleteMessage", &e, Some(receipt)))?;
        Ok(())
    }

    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(whole_seconds(visibility, MAX_VISIBILITY))
            .send()
            .await
            .map_err(|e| self.error("ChangeMessageVisibility", &e, Some(receipt)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classification() {
        assert_eq!(classify(None, None), SqsFailure::Retryable);
        assert_eq!(
            classify(Some(400), Some("RequestThrottled")),
            SqsFailure::Retryable
        );
        assert_eq!(classify(Some(500), None), SqsFailure::Retryable);
        assert_eq!(classify(Some(503), Some("whatever")), SqsFailure::Retryable);
        assert_eq!(
            classify(Some(400), Some("ReceiptHandleIsInvalid")),
            SqsFailure::InvalidReceipt
        );
        assert_eq!(
            classify(Some(400), Some("MessageNotInflight")),
            SqsFailure::InvalidReceipt
        );
        assert_eq!(
            classify(Some(400), Some("AWS.SimpleQueueService.NonExistentQueue")),
            SqsFailure::Permanent
        );
        assert_eq!(
            classify(Some(403), Some("AccessDenied")),
            SqsFailure::Permanent
        );
    }

    #[test]
    fn only_entries_failed_by_the_service_or_throttled_are_resent() {
        assert!(entry_retryable(false, "InternalError"));
        assert!(entry_retryable(false, "AnythingElse"));
        assert!(entry_retryable(true, "RequestThrottled"));
        assert!(!entry_retryable(true, "InvalidParameterValue"));
        assert!(!entry_retryable(
            true,
            "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"
        ));
    }

    #[test]
    fn seconds_round_up_and_clamp() {
        assert_eq!(whole_seconds(Duration::ZERO, MAX_VISIBILITY), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1), MAX_VISIBILITY), 1);
        assert_eq!(
            whole_seconds(Duration::from_millis(1500), MAX_VISIBILITY),
            2
        );
        assert_eq!(whole_seconds(Duration::from_secs(30), MAX_VISIBILITY), 30);
        assert_eq!(
            whole_seconds(Duration::from_secs(1 << 40), MAX_VISIBILITY),
            43_200
        );
    }

    /// A stand-in SQS endpoint speaking the JSON protocol for SendMessageBatch, failing
    /// chosen entries on the first call. moto never fails single entries, so this is the
    /// only way to exercise the partial-failure path; everything else runs against moto.
    async fn fake_sqs(
        transient: &'static [&'static str],
        sender_fault: &'static [&'static str],
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Vec<String>>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<String>>::new()));
        let seen = calls.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let calls = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // Read one request: headers, then Content-Length bytes of body.
                        let header_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            let n = socket.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        };
                        let headers = String::from_utf8_lossy(&buf[..header_end]).to_lowercase();
                        let length: usize = headers
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < header_end + length {
                            let mut chunk = [0u8; 4096];
                            let n = socket.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        let body: serde_json::Value =
                            serde_json::from_slice(&buf[header_end..header_end + length]).unwrap();
                        buf.drain(..header_end + length);
                        let ids: Vec<String> = body["Entries"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|e| e["Id"].as_str().unwrap().to_string())
                            .collect();
                        let first_call = {
                            let mut calls = calls.lock().unwrap();
                            calls.push(ids.clone());
                            calls.len() == 1
                        };
                        let (mut ok, mut failed) = (Vec::new(), Vec::new());
                        for id in ids {
                            if sender_fault.contains(&id.as_str()) {
                                failed.push(serde_json::json!({"Id": id, "SenderFault": true, "Code": "InvalidMessageContents", "Message": "bad"}));
                            } else if first_call && transient.contains(&id.as_str()) {
                                failed.push(serde_json::json!({"Id": id, "SenderFault": false, "Code": "InternalError", "Message": "try again"}));
                            } else {
                                ok.push(serde_json::json!({"Id": id, "MessageId": format!("m-{id}"), "MD5OfMessageBody": "x"}));
                            }
                        }
                        let reply =
                            serde_json::json!({"Successful": ok, "Failed": failed}).to_string();
                        let response = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: {}\r\n\r\n{reply}",
                            reply.len()
                        );
                        if socket.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (endpoint, calls)
    }

    #[tokio::test]
    async fn batch_retries_only_transient_failures() {
        let (endpoint, calls) = fake_sqs(&["1", "3"], &["5"]).await;
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "a", "b", None, None, "test",
            ))
            .endpoint_url(&endpoint)
            .http_client(crate::settings::shared_http_client())
            .build();
        let queue = SqsQueue::new(
            aws_sdk_sqs::Client::from_conf(config),
            format!("{endpoint}/q"),
        );
        let bodies: Vec<String> = (0..7).map(|i| format!("body {i}")).collect();
        let failed = queue.send_batch(&bodies).await.unwrap();
        // The sender-fault entry is reported, not retried; transient ones were retried alone.
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].index, 5);
        assert!(
            failed[0].reason.contains("InvalidMessageContents"),
            "{}",
            failed[0].reason
        );
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[0].len(), 7);
        assert_eq!(calls[1], vec!["1".to_string(), "3".to_string()]);
    }

    #[tokio::test]
    async fn oversize_is_refused_before_any_request() {
        // An unroutable endpoint: any request would fail with a dispatch error instead.
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:9")
            .build();
        let queue = SqsQueue::new(
            aws_sdk_sqs::Client::from_conf(config),
            "http://127.0.0.1:9/q",
        )
        .with_max_message_bytes(8);
        let err = queue.send("123456789").await.unwrap_err();
        assert!(
            matches!(err, QueueError::MessageTooLarge { size: 9, limit: 8 }),
            "{err}"
        );
        assert!(!err.is_retryable());
        let failed = queue
            .send_batch(&["123456789".to_string(), "0123456789".to_string()])
            .await
            .unwrap();
        assert_eq!(
            failed.iter().map(|f| f.index).collect::<Vec<_>>(),
            vec![0, 1]
        );
    }
}
