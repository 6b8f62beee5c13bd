//! Replacing or deleting an original, end to end on moto: S3 sends its event notifications
//! to the render queue, the worker (the `edgethumb work` loop over SQS, S3 and CloudFront)
//! drains it, and the variants, the hand-made `key@…` object and CloudFront's invalidations
//! are checked. The set-up checks first that moto delivers S3 notifications to SQS (its test
//! event) and accepts CloudFront invalidations.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use aws_sdk_cloudfront::types::{
    CookiePreference, DefaultCacheBehavior, DistributionConfig, ForwardedValues, ItemSelection,
    Origin, Origins, S3OriginConfig, ViewerProtocolPolicy,
};
use aws_sdk_s3::types::{Event, NotificationConfiguration, QueueConfiguration};
use bytes::Bytes;

use edgethumb::job::{Job, JobReason};
use edgethumb::queue::JobQueue;
use edgethumb::store::{ObjectStore, PutRequest};
use edgethumb::worker::message::storage_event_body;
use edgethumb::worker::{
    Record, RecordOutcome, RunSummary, Runner, RunnerOptions, TuningConfig, Worker, WorkerConfig,
};
use edgethumb_aws::worker::S3Buckets;
use edgethumb_aws::{CloudFrontInvalidator, S3Store, SqsQueue};

use common::quota_cloudfront::QuotaCloudFront;
use common::{moto_endpoint, moto_settings, unique_name};

const CREATED: (&str, &str) = ("createByLambda", "1");

struct Rig {
    endpoint: String,
    store: S3Store,
    queue: Arc<SqsQueue>,
    dlq_url: String,
    sqs: aws_sdk_sqs::Client,
    cloudfront: aws_sdk_cloudfront::Client,
    distribution: String,
    s3: aws_sdk_s3::Client,
}

fn picture(width: u32, height: u32, shade: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([shade, (x * 255 / width) as u8, (y * 255 / height) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

// moto's CreateDistribution wants the legacy TTL and forwarded-values settings.
#[allow(deprecated)]
async fn distribution(cloudfront: &aws_sdk_cloudfront::Client, bucket: &str) -> String {
    let origin = Origin::builder()
        .id("images")
        .domain_name(format!("{bucket}.s3.amazonaws.com"))
        .s3_origin_config(S3OriginConfig::builder().origin_access_identity("").build())
        .build()
        .unwrap();
    let behaviour = DefaultCacheBehavior::builder()
        .target_origin_id("images")
        .viewer_protocol_policy(ViewerProtocolPolicy::AllowAll)
        .min_ttl(0)
        .forwarded_values(
            ForwardedValues::builder()
                .query_string(false)
                .cookies(
                    CookiePreference::builder()
                        .forward(ItemSelection::None)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let config = DistributionConfig::builder()
        .caller_reference(unique_name("dist"))
        .origins(
            Origins::builder()
                .quantity(1)
                .items(origin)
                .build()
                .unwrap(),
        )
        .default_cache_behavior(behaviour)
        .comment("edgethumb refresh test")
        .enabled(true)
        .build()
        .unwrap();
    cloudfront
        .create_distribution()
        .distribution_config(config)
        .send()
        .await
        .expect("moto accepts CreateDistribution")
        .distribution()
        .unwrap()
        .id()
        .to_string()
}

/// A bucket whose notifications go to a fresh queue (with a DLQ, `maxReceiveCount` 4 as
/// deployed), and a distribution. Checks that moto delivers S3's test event to the queue.
async fn rig(test: &str) -> Option<Rig> {
    let endpoint = moto_endpoint(test)?;
    let settings = moto_settings(&endpoint);
    let s3 = settings.s3_client().await;
    let sqs = settings.sqs_client().await;
    let cloudfront = settings.cloudfront_client().await;
    let bucket = unique_name("et-refresh");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let dlq_url = sqs
        .create_queue()
        .queue_name(unique_name("et-dlq"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_arn = queue_arn(&sqs, &dlq_url).await;
    let queue_url = sqs
        .create_queue()
        .queue_name(unique_name("et-render"))
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 4}).to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let arn = queue_arn(&sqs, &queue_url).await;
    notify(&s3, &bucket, Some(&arn)).await;
    let queue = Arc::new(SqsQueue::new(sqs.clone(), queue_url));
    // moto, like S3, sends a test event when the notification is configured.
    let first = queue
        .receive(10, Duration::from_secs(2), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        first.iter().any(|m| m.body.contains("s3:TestEvent")),
        "moto did not deliver S3's test event to the queue: {first:?}"
    );
    // Back in the queue: the first drain reads it as the worker would.
    for m in &first {
        queue.extend(&m.receipt, Duration::ZERO).await.unwrap();
    }
    let distribution = distribution(&cloudfront, &bucket).await;
    Some(Rig {
        endpoint,
        store: S3Store::new(s3.clone(), bucket),
        queue,
        dlq_url,
        sqs,
        cloudfront,
        distribution,
        s3,
    })
}

/// Send the bucket's write and delete notifications to the queue `arn` (`None`: nowhere).
async fn notify(s3: &aws_sdk_s3::Client, bucket: &str, arn: Option<&str>) {
    let mut config = NotificationConfiguration::builder();
    if let Some(arn) = arn {
        config = config.queue_configurations(
            QueueConfiguration::builder()
                .queue_arn(arn)
                .events(Event::from("s3:ObjectCreated:*"))
                .events(Event::from("s3:ObjectRemoved:*"))
                .build()
                .unwrap(),
        );
    }
    s3.put_bucket_notification_configuration()
        .bucket(bucket)
        .notification_configuration(config.build())
        .send()
        .await
        .unwrap();
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .unwrap()
        .clone()
}

impl Rig {
    fn worker(&self) -> Worker<S3Buckets> {
        self.worker_with(self.cloudfront.clone())
    }

    /// The worker, invalidating through `cloudfront` (moto itself, or a quota layer).
    fn worker_with(&self, cloudfront: aws_sdk_cloudfront::Client) -> Worker<S3Buckets> {
        let config = WorkerConfig {
            concurrency: 2,
            tuning: TuningConfig {
                max_encodes: 2,
                ..TuningConfig::default()
            },
            distribution_id: Some(self.distribution.clone()),
            ..WorkerConfig::default()
        };
        Worker::new(S3Buckets::new(self.s3.clone()), config)
            .with_cdn(Arc::new(CloudFrontInvalidator::new(
                cloudfront,
                self.distribution.clone(),
            )))
            .with_deferral_queue(self.queue.clone())
    }

    /// Run the worker until a receive comes back empty.
    async fn drain(&self) -> RunSummary {
        self.drain_with(self.worker()).await
    }

    async fn drain_with(&self, worker: Worker<S3Buckets>) -> RunSummary {
        let options = RunnerOptions {
            once: true,
            wait: Duration::from_secs(1),
            visibility: Duration::from_secs(30),
            max_messages: 10,
        };
        Runner::new(self.queue.clone(), worker, options)
            .run(std::future::pending())
            .await
            .unwrap()
    }

    /// Messages on the render queue not yet deleted: visible, in flight and delayed.
    async fn queue_depth(&self) -> usize {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let names = [
            A::ApproximateNumberOfMessages,
            A::ApproximateNumberOfMessagesNotVisible,
            A::ApproximateNumberOfMessagesDelayed,
        ];
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(self.queue.queue_url())
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap();
        names
            .iter()
            .map(|n| attrs.get(n).unwrap().parse::<usize>().unwrap())
            .sum()
    }

    async fn put_original(&self, key: &str, body: Vec<u8>) -> String {
        self.store
            .put(
                key,
                Bytes::from(body),
                PutRequest {
                    content_type: "image/jpeg".into(),
                    ..PutRequest::default()
                },
            )
            .await
            .unwrap()
            .etag
            .unwrap()
    }

    async fn render_jobs(&self, keys: &[String]) {
        for chunk in keys.chunks(10) {
            let bodies: Vec<String> = chunk
                .iter()
                .map(|k| {
                    Job::new(self.store.bucket(), k.as_str(), JobReason::Miss, None)
                        .unwrap()
                        .to_json()
                })
                .collect();
            self.queue.send_batch(&bodies).await.unwrap();
        }
    }

    async fn recorded_etag(&self, key: &str) -> Option<String> {
        let info = self.store.head(key).await.unwrap()?;
        info.metadata.get("original-etag").cloned()
    }

    async fn body(&self, key: &str) -> Option<Bytes> {
        self.store.get(key, u64::MAX).await.unwrap().map(|o| o.body)
    }

    /// Every invalidation's paths, oldest first.
    async fn invalidations(&self) -> Vec<Vec<String>> {
        let list = self
            .cloudfront
            .list_invalidations()
            .distribution_id(&self.distribution)
            .send()
            .await
            .unwrap();
        let mut ids: Vec<String> = list
            .invalidation_list()
            .map(|l| l.items().iter().map(|i| i.id().to_string()).collect())
            .unwrap_or_default();
        // moto lists newest first, as CloudFront does.
        ids.reverse();
        let mut out = Vec::new();
        for id in ids {
            let inv = self
                .cloudfront
                .get_invalidation()
                .distribution_id(&self.distribution)
                .id(id)
                .send()
                .await
                .unwrap();
            let paths = inv
                .invalidation()
                .and_then(|i| i.invalidation_batch())
                .and_then(|b| b.paths())
                .map(|p| p.items().to_vec())
                .unwrap_or_default();
            out.push(paths);
        }
        out
    }

    async fn dlq_depth(&self) -> usize {
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.dlq_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .unwrap();
        attrs
            .attributes
            .unwrap()
            .get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .unwrap()
            .parse()
            .unwrap()
    }
}

const ORIGINAL: &str = "photos/ünï cat+1%.jpg";
const PATHS: [&str; 2] = [
    "/photos/%C3%BCn%C3%AF%20cat+1%25.jpg",
    "/photos/%C3%BCn%C3%AF%20cat+1%25.jpg@*",
];
const HAND_MADE: &str = "photos/ünï cat+1%.jpg@50w.webp";

fn our_variants() -> Vec<String> {
    ["100w.webp", "64w_64h_1e.png", "80w_70q.jpg"]
        .iter()
        .map(|p| format!("{ORIGINAL}@{p}"))
        .collect()
}

/// The original, our three variants rendered by jobs, a hand-made `key@…` object; the
/// queue drained (the variant writes' own events included) and no invalidation made.
async fn seeded(rig: &Rig) {
    rig.put_original(ORIGINAL, picture(320, 240, 20)).await;
    rig.render_jobs(&our_variants()).await;
    rig.store
        .put(
            HAND_MADE,
            Bytes::from_static(b"drawn by hand"),
            PutRequest {
                content_type: "image/webp".into(),
                ..PutRequest::default()
            },
        )
        .await
        .unwrap();
    let summary = rig.drain().await;
    // S3's test event, the original's event, 3 jobs, 3 variant-write events, the hand-made
    // object's event.
    assert_eq!(summary.received, 9, "{summary:?}");
    assert_eq!(summary.failed, 0, "{summary:?}");
    for key in our_variants() {
        let tags = rig.store.tags(&key).await.unwrap().unwrap();
        assert_eq!(tags.get(CREATED.0).map(String::as_str), Some(CREATED.1));
    }
    assert!(
        rig.invalidations().await.is_empty(),
        "nothing was replaced yet"
    );
}

#[tokio::test]
async fn replacing_an_original_refreshes_our_variants_and_invalidates_once() {
    let Some(rig) = rig("replacing_an_original_refreshes_our_variants_and_invalidates_once").await
    else {
        return;
    };
    seeded(&rig).await;
    let mut before = BTreeMap::new();
    for key in our_variants() {
        before.insert(key.clone(), rig.body(&key).await.unwrap());
    }
    let etag = rig.put_original(ORIGINAL, picture(320, 240, 230)).await;
    let summary = rig.drain().await;
    // The original's event, then one event per variant rewritten (dropped): nothing more.
    assert_eq!(summary.received, 4, "{summary:?}");
    assert_eq!(summary.done, 4, "{summary:?}");
    for key in our_variants() {
        assert_eq!(rig.recorded_etag(&key).await.as_ref(), Some(&etag), "{key}");
        assert_ne!(
            rig.body(&key).await.unwrap(),
            before[&key],
            "{key}: same pixels"
        );
    }
    assert_eq!(
        rig.body(HAND_MADE).await.unwrap(),
        Bytes::from_static(b"drawn by hand")
    );
    assert_eq!(rig.invalidations().await, vec![PATHS.to_vec()]);

    // The same event again (S3 delivers at least once) and a late delete event for an
    // original that exists: nothing is re-rendered, deleted or invalidated.
    let duplicate = storage_event_body("ObjectCreated:Put", rig.store.bucket(), ORIGINAL);
    let late_delete = storage_event_body("ObjectRemoved:Delete", rig.store.bucket(), ORIGINAL);
    rig.queue
        .send_batch(&[duplicate, late_delete])
        .await
        .unwrap();
    let summary = rig.drain().await;
    assert_eq!((summary.received, summary.done), (2, 2), "{summary:?}");
    for key in our_variants() {
        assert_eq!(rig.recorded_etag(&key).await.as_ref(), Some(&etag), "{key}");
    }
    assert_eq!(rig.invalidations().await.len(), 1);
    assert_eq!(rig.dlq_depth().await, 0);
}

#[tokio::test]
async fn deleting_an_original_deletes_our_variants_and_invalidates_once() {
    let Some(rig) = rig("deleting_an_original_deletes_our_variants_and_invalidates_once").await
    else {
        return;
    };
    seeded(&rig).await;
    rig.store.delete(ORIGINAL).await.unwrap();
    let summary = rig.drain().await;
    // The original's delete event, then one per variant deleted (dropped).
    assert_eq!((summary.received, summary.done), (4, 4), "{summary:?}");
    for key in our_variants() {
        assert!(rig.store.head(&key).await.unwrap().is_none(), "{key}");
    }
    assert!(rig.store.head(HAND_MADE).await.unwrap().is_some());
    assert_eq!(rig.invalidations().await, vec![PATHS.to_vec()]);
    assert_eq!(rig.dlq_depth().await, 0);
}

/// How long from replacing an original to all its variants fresh, per variant count (for
/// docs/worker.md). `cargo test -p edgethumb-aws --features worker --test refresh_moto --
/// --ignored --nocapture measure`.
#[tokio::test]
#[ignore = "a measurement: run by hand against moto"]
async fn measure_refresh_time_per_variant_count() {
    let Some(rig) = rig("measure_refresh_time_per_variant_count").await else {
        return;
    };
    for count in [1usize, 10, 50] {
        let original = format!("measure/{count}.jpg");
        rig.put_original(&original, picture(640, 480, 20)).await;
        let variants: Vec<String> = (0..count)
            .map(|i| format!("{original}@{}w.webp", 40 + 4 * i))
            .collect();
        rig.render_jobs(&variants).await;
        rig.drain().await;
        let etag = rig.put_original(&original, picture(640, 480, 230)).await;
        let started = Instant::now();
        // The worker drains while the variants are polled: the time is when the last one
        // carries the new ETag, not when the drain's final empty receive returns.
        let fresh = async {
            loop {
                let mut all = true;
                for key in &variants {
                    all &= rig.recorded_etag(key).await.as_ref() == Some(&etag);
                }
                if all {
                    return started.elapsed();
                }
                assert!(started.elapsed() < Duration::from_secs(600), "never fresh");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let (summary, took) = tokio::join!(rig.drain(), fresh);
        println!(
            "refresh: {count} variants fresh after {} ms (queue messages received: {}, of which variant events: {})",
            took.as_millis(),
            summary.received,
            summary.received - 1
        );
    }
    assert_eq!(rig.dlq_depth().await, 0);
}

/// 1,000 originals replaced at once: every variant fresh, invalidations one per batch
/// within the quotas, nothing in the dead-letter queue. CloudFront's quotas are enforced by
/// a layer in front of moto's CloudFront (`common::quota_cloudfront`: each invalidation in
/// progress for `EDGETHUMB_TEST_INVALIDATION_HOLD_S`, default 60 s, refused over 15
/// wildcard or 3,000 file paths in progress), so throttled invalidations are deferred on the
/// queue and the worker keeps draining until the queue holds nothing, delayed ones included.
#[tokio::test]
#[ignore = "minutes against moto: run by hand (docs/worker.md has its figures)"]
async fn a_thousand_originals_replaced_at_once() {
    let Some(rig) = rig("a_thousand_originals_replaced_at_once").await else {
        return;
    };
    const N: usize = 1000;
    let hold = Duration::from_secs(
        std::env::var("EDGETHUMB_TEST_INVALIDATION_HOLD_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let quota = QuotaCloudFront::start(Some(&rig.endpoint), hold);
    let cloudfront = moto_settings(&quota.endpoint).cloudfront_client().await;
    let originals: Vec<String> = (0..N).map(|i| format!("bulk/{i:04}.jpg")).collect();
    let variants: Vec<String> = originals
        .iter()
        .map(|o| format!("{o}@32w_80q.webp"))
        .collect();
    let first = picture(96, 64, 20);
    // Seeded without notifications (the queue would carry 3,000 messages of set-up), the
    // variants rendered by the worker from job records directly.
    rig.drain().await; // S3's test event
    notify(&rig.s3, rig.store.bucket(), None).await;
    let started = Instant::now();
    for key in &originals {
        rig.put_original(key, first.clone()).await;
    }
    let worker = rig.worker();
    for (i, chunk) in variants.chunks(10).enumerate() {
        let records: Vec<Record> = chunk
            .iter()
            .enumerate()
            .map(|(j, key)| Record {
                id: format!("seed-{i}-{j}"),
                body: Job::new(rig.store.bucket(), key.as_str(), JobReason::Miss, None)
                    .unwrap()
                    .to_json(),
                receive_count: 1,
            })
            .collect();
        let outcomes = worker.run(&records, None, &AtomicBool::new(false)).await;
        assert!(outcomes.iter().all(RecordOutcome::is_done), "{outcomes:?}");
    }
    println!(
        "bulk: seeded {N} originals and variants in {} ms",
        started.elapsed().as_millis()
    );
    let arn = queue_arn(&rig.sqs, rig.queue.queue_url()).await;
    notify(&rig.s3, rig.store.bucket(), Some(&arn)).await;
    rig.drain().await; // the test event of the new configuration
    let before = rig.invalidations().await.len();
    let second = picture(96, 64, 230);
    let started = Instant::now();
    for key in &originals {
        rig.put_original(key, second.clone()).await;
    }
    let uploaded = started.elapsed();
    let etag = edgethumb::store::md5_etag(&second);
    let mut summary = RunSummary::default();
    let mut fresh_after = None;
    // Drain, then wait out the deferred invalidations' delays, until nothing is left.
    loop {
        let drained = rig.drain_with(rig.worker_with(cloudfront.clone())).await;
        summary.received += drained.received;
        summary.done += drained.done;
        summary.failed += drained.failed;
        if fresh_after.is_none() {
            let mut all = true;
            for key in &variants {
                all &= rig.recorded_etag(key).await.as_ref() == Some(&etag);
            }
            if all {
                fresh_after = Some(started.elapsed());
            }
        }
        if rig.queue_depth().await == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "never drained"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let took = started.elapsed();
    for key in &variants {
        assert_eq!(rig.recorded_etag(key).await.as_ref(), Some(&etag), "{key}");
    }
    let invalidations = rig.invalidations().await[before..].to_vec();
    assert_eq!(
        invalidations,
        quota.accepted(),
        "moto got what the quota layer let through"
    );
    let paths: usize = invalidations.iter().map(Vec::len).sum();
    for request in &invalidations {
        assert!(
            edgethumb::cdn::wildcard_count(request)
                <= edgethumb::cdn::MAX_WILDCARD_PATHS_PER_REQUEST
        );
        assert!(request.len() <= edgethumb::cdn::MAX_PATHS_PER_REQUEST);
    }
    let covers = |request: &Vec<String>, path: &str| {
        request.iter().any(|p| {
            p == path
                || p.strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix))
        })
    };
    for key in originals.iter().chain(&variants) {
        let path = edgethumb::cdn::path_of(key);
        assert!(
            invalidations.iter().any(|r| covers(r, &path)),
            "{path} never invalidated"
        );
    }
    let (files, wildcards) = quota.peak();
    assert!(files <= 3000 && wildcards <= 15, "{files} {wildcards}");
    let batches = summary.received.div_ceil(10);
    assert!(
        (quota.calls() as u64) <= batches,
        "{} > {batches}",
        quota.calls()
    );
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert_eq!(rig.dlq_depth().await, 0);
    let deferred_messages = summary.received - 2 * N as u64;
    println!(
        "bulk: {N} originals uploaded in {} ms, all variants fresh after {} ms, queue empty (last invalidation accepted) after {} ms; {} messages received ({deferred_messages} deferred invalidations); CreateInvalidation calls {}: {} accepted ({paths} paths), {} throttled; peak in progress {wildcards} wildcard and {files} file paths; hold {} s",
        uploaded.as_millis(),
        fresh_after.unwrap_or(took).as_millis(),
        took.as_millis(),
        summary.received,
        quota.calls(),
        invalidations.len(),
        quota.throttled(),
        hold.as_secs(),
    );
}
