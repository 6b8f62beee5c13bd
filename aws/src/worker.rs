//! Wiring the worker to AWS: S3 stores per job bucket, settings from the environment, and
//! the Lambda's SQS event in and `batchItemFailures` out. Shared by the Lambda binary
//! (`worker/`) and `edgethumb work --queue-url`.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use tokio::time::Instant;

use edgethumb::metrics::EmfStdout;
use edgethumb::store::ObjectStore;
use edgethumb::worker::{BucketStores, ConfigError, Record, Worker, WorkerConfig};

use crate::cloudfront::CloudFrontInvalidator;
use crate::s3::S3Store;
use crate::settings::AwsSettings;
use crate::sqs::SqsQueue;

/// One S3 client (the worker's region) shared by the store of every bucket a job names.
#[derive(Clone)]
pub struct S3Buckets {
    client: aws_sdk_s3::Client,
}

impl S3Buckets {
    pub fn new(client: aws_sdk_s3::Client) -> Self {
        S3Buckets { client }
    }
}

impl BucketStores for S3Buckets {
    fn store_for(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        Arc::new(S3Store::new(self.client.clone(), bucket))
    }
}

/// The region from the standard variables (`AWS_REGION`, which Lambda sets, then
/// `AWS_DEFAULT_REGION`), else `us-east-1`.
pub fn region_from_env() -> String {
    ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .map(|v| v.trim().to_string())
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| "us-east-1".to_string())
}

/// AWS settings from the standard environment (`AWS_ENDPOINT_URL` is honoured by
/// [`AwsSettings`]; credentials come from the standard chain).
pub fn settings_from_env() -> AwsSettings {
    AwsSettings::new(region_from_env())
}

/// The variable naming the render queue (the template sets it to the queue the Lambda
/// reads): throttled invalidations are deferred to it. `edgethumb work` reads the same one
/// for `--queue-url`.
pub const QUEUE_URL_ENV: &str = "EDGETHUMB_QUEUE_URL";

/// The Lambda worker: S3 from the environment, [`WorkerConfig::from_env`], and the render
/// queue of [`QUEUE_URL_ENV`] for deferred invalidations.
pub async fn lambda_worker_from_env() -> Result<Worker<S3Buckets>, ConfigError> {
    let config = WorkerConfig::from_env()?;
    let settings = settings_from_env();
    let client = settings.s3_client().await;
    // Metrics as CloudWatch EMF lines on stdout, beside the JSON logs.
    let mut worker = Worker::new(S3Buckets::new(client), config).with_metrics(Arc::new(EmfStdout));
    match std::env::var(QUEUE_URL_ENV)
        .ok()
        .filter(|url| !url.trim().is_empty())
    {
        Some(url) => {
            let queue = SqsQueue::new(settings.sqs_client().await, url.trim());
            worker = worker.with_deferral_queue(Arc::new(queue));
        }
        None => tracing::warn!(
            event = "worker.start",
            "no {QUEUE_URL_ENV}: an invalidation CloudFront throttles cannot be deferred, so it fails the records it covers (they come back, and may end in the DLQ)"
        ),
    }
    Ok(with_cdn_from_config(worker, &settings).await)
}

/// `worker` with a CloudFront invalidator for [`WorkerConfig::distribution_id`], when set
/// (the Lambda and `edgethumb work` alike).
pub async fn with_cdn_from_config<S: BucketStores>(
    worker: Worker<S>,
    settings: &AwsSettings,
) -> Worker<S> {
    match worker.config().distribution_id.clone() {
        Some(id) => {
            let client = settings.cloudfront_client().await;
            worker.with_cdn(Arc::new(CloudFrontInvalidator::new(client, id)))
        }
        None => {
            tracing::warn!(
                event = "worker.start",
                "no distribution id (EDGETHUMB_DISTRIBUTION_ID): replaced or deleted originals refresh their variants, but no CDN is invalidated"
            );
            worker
        }
    }
}

/// The Lambda entry: the event's records through [`Worker::failed_ids`]; every record not
/// done (retryable or permanent) is named in `batchItemFailures`.
///
/// `deadline` is the invocation's deadline (from the Lambda context).
pub async fn handle_sqs_event<S: BucketStores>(
    worker: &Worker<S>,
    event: SqsEvent,
    deadline: Instant,
) -> SqsBatchResponse {
    let records = records(event);
    let mut response = SqsBatchResponse::default();
    for id in worker.failed_ids(&records, deadline).await {
        response.add_failure(id);
    }
    response
}

/// The worker's records from SQS's message shape.
fn records(event: SqsEvent) -> Vec<Record> {
    event
        .records
        .into_iter()
        .map(|m| Record {
            receive_count: m
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|c| c.parse().ok())
                .unwrap_or(1),
            // A record without an id cannot be named; an empty identifier makes Lambda
            // retry the whole batch, which is safe (renders are idempotent).
            id: m.message_id.unwrap_or_default(),
            body: m.body.unwrap_or_default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgethumb::store::memory::MemoryStore;
    use std::time::Duration;

    #[tokio::test]
    async fn the_lambda_response_names_exactly_the_failed_records() {
        let event: SqsEvent = serde_json::from_value(serde_json::json!({"Records": [
            {"messageId": "poison", "body": "{not json",
             "attributes": {"ApproximateReceiveCount": "3"}},
            {"messageId": "newer", "body": r#"{"v":2,"whatever":true}"#},
            {"messageId": "missing", "body": r#"{"v":1,"bucket":"b","variant_key":"nope.jpg@80w"}"#},
        ]}))
        .unwrap();
        let records = records(event.clone());
        assert_eq!(records[0].receive_count, 3);
        assert_eq!(records[1].receive_count, 1);
        let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new("b"));
        let stores = move |_: &str| store.clone();
        let worker = Worker::new(stores, WorkerConfig::default());
        let deadline = Instant::now() + Duration::from_secs(60);
        let response = handle_sqs_event(&worker, event, deadline).await;
        let json = serde_json::to_value(&response).unwrap();
        let failed: Vec<&str> = json["batchItemFailures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["itemIdentifier"].as_str().unwrap())
            .collect();
        assert_eq!(failed, ["poison", "newer", "missing"]);
    }
}
