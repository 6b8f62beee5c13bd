//! Wiring the worker to AWS: S3 stores per job bucket, settings from the environment, JSON
//! logs. Shared by the Lambda binary (`worker/`) and `edgethumb work --queue-url`.

use std::sync::Arc;

use super::{BucketStores, ConfigError, Worker, WorkerConfig};
use crate::aws::AwsSettings;
use crate::store::ObjectStore;
use crate::store::s3::S3Store;

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

/// The Lambda worker: S3 from the environment, [`WorkerConfig::from_env`].
pub async fn lambda_worker_from_env() -> Result<Worker<S3Buckets>, ConfigError> {
    let config = WorkerConfig::from_env()?;
    let client = settings_from_env().s3_client().await;
    Ok(Worker::new(S3Buckets::new(client), config))
}

pub use crate::logging::init_json_logs;
