//! The S3 and SQS adapters for the edge: one SQS client, and one S3 client per region.
//!
//! An origin-response event names its bucket by domain, and a distribution may have
//! origins in several regions, so S3 clients are made on first use per region and cached
//! for the life of the container (a client holds its connection pool and credentials
//! cache; making one per request would redo TLS handshakes and credential resolution).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_config::{Region, SdkConfig};

use edgethumb::edge::{BucketLocation, EdgeConfig, OriginStores};
use edgethumb::store::ObjectStore;

use crate::s3::S3Store;
use crate::settings::{AwsSettings, CallLimits};
use crate::sqs::SqsQueue;

/// Clients made on first use, one per region, shared by every later request.
pub struct RegionCache<C> {
    make: Box<dyn Fn(&str) -> C + Send + Sync>,
    clients: Mutex<HashMap<String, C>>,
}

impl<C: Clone> RegionCache<C> {
    pub fn new(make: impl Fn(&str) -> C + Send + Sync + 'static) -> Self {
        RegionCache {
            make: Box::new(make),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The client for `region`, made now if this is the region's first request.
    pub fn get(&self, region: &str) -> C {
        // A poisoned lock only means another request panicked while inserting; the map
        // itself is still consistent (an insert either happened or not).
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        clients
            .entry(region.to_string())
            .or_insert_with(|| (self.make)(region))
            .clone()
    }

    pub fn regions(&self) -> usize {
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

/// [`OriginStores`] over S3: the bucket's region comes from the origin (domain or event),
/// else the config's `bucket_region` (the handler fills that in), else `queue_region`
/// (the stack keeps bucket and queue together).
pub struct S3OriginStores {
    fallback_region: String,
    clients: RegionCache<aws_sdk_s3::Client>,
}

impl OriginStores for S3OriginStores {
    fn store_for(&self, location: &BucketLocation) -> Arc<dyn ObjectStore> {
        let region = location
            .region
            .as_deref()
            .unwrap_or(self.fallback_region.as_str());
        Arc::new(S3Store::new(
            self.clients.get(region),
            location.bucket.clone(),
        ))
    }
}

/// The queue and the origin stores of an edge config.
pub struct AwsEdgeAdapters {
    pub queue: SqsQueue,
    pub stores: S3OriginStores,
}

impl AwsEdgeAdapters {
    /// One SDK configuration load for the container (explicit region, so no IMDS or
    /// profile lookup for it; credentials resolve lazily, from Lambda's environment
    /// variables, on the first signed request).
    pub async fn new(config: &EdgeConfig) -> Self {
        let settings = settings(config, &config.queue_region);
        let sdk = settings.sdk_config().await;
        let queue = SqsQueue::new(aws_sdk_sqs::Client::new(&sdk), config.queue_url.clone());
        let endpoint = config.endpoint_url.clone();
        let stores = S3OriginStores {
            fallback_region: config.queue_region.clone(),
            clients: RegionCache::new(move |region: &str| {
                s3_client(&sdk, endpoint.as_deref(), region)
            }),
        };
        AwsEdgeAdapters { queue, stores }
    }
}

/// The edge's calls are bounded by [`CallLimits::EDGE`] (fewer attempts, shorter timeouts
/// than the worker's): a viewer is waiting.
fn settings(config: &EdgeConfig, region: &str) -> AwsSettings {
    let settings = AwsSettings::new(region).with_call_limits(CallLimits::EDGE);
    match &config.endpoint_url {
        Some(endpoint) => settings.with_endpoint(endpoint.clone()),
        None => settings,
    }
}

/// An S3 client for `region` from the already loaded configuration: no second load.
fn s3_client(sdk: &SdkConfig, endpoint: Option<&str>, region: &str) -> aws_sdk_s3::Client {
    let mut settings = AwsSettings::new(region).with_call_limits(CallLimits::EDGE);
    if let Some(endpoint) = endpoint {
        settings = settings.with_endpoint(endpoint);
    }
    let regional = sdk
        .to_builder()
        .region(Region::new(region.to_string()))
        .build();
    settings.s3_client_from(&regional)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn one_client_per_region_made_on_first_use() {
        let made = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&made);
        let cache = RegionCache::new(move |region: &str| {
            counter.fetch_add(1, Ordering::SeqCst);
            region.to_uppercase()
        });
        assert_eq!(cache.regions(), 0);
        assert_eq!(cache.get("us-east-1"), "US-EAST-1");
        assert_eq!(cache.get("us-east-1"), "US-EAST-1");
        assert_eq!(cache.get("eu-west-1"), "EU-WEST-1");
        assert_eq!(made.load(Ordering::SeqCst), 2);
        assert_eq!(cache.regions(), 2);
    }

    #[tokio::test]
    async fn stores_follow_the_origin_region_then_the_fallback() {
        let config = EdgeConfig::from_json(
            r#"{"queue_url": "http://127.0.0.1:9/1/q", "queue_region": "eu-west-1",
                "endpoint_url": "http://127.0.0.1:9"}"#,
            "test",
        )
        .unwrap();
        let AwsEdgeAdapters { stores, queue } = AwsEdgeAdapters::new(&config).await;
        assert_eq!(
            queue.client().config().retry_config().cloned(),
            Some(CallLimits::EDGE.retry_config())
        );
        let at = |region: Option<&str>| BucketLocation {
            bucket: "photos".into(),
            region: region.map(String::from),
            key_prefix: String::new(),
        };
        assert_eq!(stores.store_for(&at(Some("us-west-2"))).bucket(), "photos");
        stores.store_for(&at(Some("us-west-2")));
        stores.store_for(&at(None));
        assert_eq!(stores.clients.regions(), 2);
        let regions: Vec<String> = ["us-west-2", "eu-west-1"]
            .iter()
            .map(|r| {
                stores
                    .clients
                    .get(r)
                    .config()
                    .region()
                    .map(|r| r.to_string())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(regions, ["us-west-2", "eu-west-1"]);
        let s3 = stores.clients.get("us-west-2");
        assert_eq!(
            s3.config().retry_config().cloned(),
            Some(CallLimits::EDGE.retry_config())
        );
        assert_eq!(
            s3.config()
                .timeout_config()
                .and_then(|t| t.operation_timeout()),
            Some(CallLimits::EDGE.operation_timeout)
        );
        assert_eq!(stores.clients.regions(), 2);
    }
}
