//! CloudFront's invalidation quotas on the wire: `CloudFrontInvalidator` against a small
//! server that answers CreateInvalidation as CloudFront does once 15 wildcard paths (or
//! 3,000 file paths) are in progress, `400 TooManyInvalidationsInProgress` in CloudFront's
//! XML, and the worker deferring what it refuses. moto accepts every invalidation, so it
//! cannot show this.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use edgethumb::cdn::{CdnError, CdnInvalidator, Coverage};
use edgethumb::queue::JobQueue;
use edgethumb::queue::memory::MemoryQueue;
use edgethumb::store::ObjectStore;
use edgethumb::store::memory::MemoryStore;
use edgethumb::worker::message::{DeferredInvalidation, Message};
use edgethumb::worker::{InvalidationOutcome, Record, RecordOutcome, Worker, WorkerConfig};
use edgethumb_aws::{AwsSettings, CloudFrontInvalidator};

use common::quota_cloudfront::QuotaCloudFront;

async fn invalidator(fake: &QuotaCloudFront) -> CloudFrontInvalidator {
    let client = AwsSettings::new("us-east-1")
        .with_endpoint(&fake.endpoint)
        .with_static_credentials("testing", "testing")
        .cloudfront_client()
        .await;
    CloudFrontInvalidator::new(client, "E2QWRUHEXAMPLE")
}

fn wildcards(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("/{prefix}/{i}/*")).collect()
}

#[tokio::test]
async fn too_many_invalidations_in_progress_is_throttled() {
    let fake = QuotaCloudFront::start(None, Duration::from_secs(3600));
    let cdn = invalidator(&fake).await;
    let id = cdn.invalidate(&wildcards(10, "a")).await.unwrap();
    assert_eq!(id, "IFAKE1");
    cdn.invalidate(&wildcards(5, "b")).await.unwrap();
    // 15 wildcard paths in progress: the next wildcard is refused, a file path is not.
    let err = cdn.invalidate(&wildcards(1, "c")).await.unwrap_err();
    assert!(
        matches!(&err, CdnError::Throttled { distribution, message }
            if distribution == "E2QWRUHEXAMPLE" && message.contains("TooManyInvalidationsInProgress")),
        "{err:?}"
    );
    assert!(err.is_retryable());
    cdn.invalidate(&["/photos/a%20b.jpg".to_string()])
        .await
        .unwrap();
    // The SDK sent the throttled request once: retrying it at once would meet the same quota.
    assert_eq!((fake.calls(), fake.throttled()), (4, 1));
    assert_eq!(fake.peak(), (1, 15));
    assert_eq!(fake.accepted()[2], ["/photos/a%20b.jpg"]);
}

#[tokio::test]
async fn the_worker_defers_what_cloudfront_throttles() {
    let fake = QuotaCloudFront::start(None, Duration::from_secs(3600));
    let cdn = invalidator(&fake).await;
    cdn.invalidate(&wildcards(15, "other")).await.unwrap();
    let queue = Arc::new(MemoryQueue::new("render"));
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new("b"));
    let stores = move |_: &str| store.clone();
    let worker = Worker::new(stores, WorkerConfig::default())
        .with_cdn(Arc::new(cdn))
        .with_deferral_queue(queue.clone());
    let body = DeferredInvalidation {
        coverage: Coverage::new(["photos/cat.jpg".to_string()], []),
        attempt: 2,
    }
    .to_json();
    let records = [Record {
        id: "d1".into(),
        body,
        receive_count: 1,
    }];
    let out = worker.run(&records, None, &AtomicBool::new(false)).await;
    assert_eq!(
        out,
        [RecordOutcome::Invalidation(InvalidationOutcome::Deferred)]
    );
    assert_eq!(fake.throttled(), 1);
    let bodies = queue.bodies();
    assert_eq!(bodies.len(), 1);
    let Ok(Message::Invalidation(again)) = Message::parse(&bodies[0]) else {
        panic!("{bodies:?}")
    };
    assert_eq!(again.attempt, 3);
    assert_eq!(
        again.coverage.paths(),
        ["/photos/cat.jpg", "/photos/cat.jpg@*"]
    );
    // Delayed: not receivable now.
    assert!(
        queue
            .receive(10, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
}
