//! The worker against moto's S3 and SQS (started by `scripts/test.sh`; skipped, saying so,
//! without `EDGETHUMB_TEST_ENDPOINT`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)] // test code

#[path = "../../aws/tests/common/mod.rs"]
mod common;

use std::io::Cursor;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::types::QueueAttributeName;
use bytes::Bytes;
use edgethumb::job::{Job, JobReason};
use edgethumb::queue::JobQueue;
use edgethumb::store::{ObjectStore, PutRequest};
use edgethumb::worker::process::meta;
use edgethumb::worker::{RecordOutcome, Runner, RunnerOptions, TuningConfig, Worker, WorkerConfig};
use edgethumb_aws::S3Store;
use edgethumb_aws::SqsQueue;
use edgethumb_aws::worker::{S3Buckets, handle_sqs_event};
use tokio::time::Instant;

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        let t = ((x * 7 + y * 13) % 17) as u8;
        image::Rgb([
            ((x * 255 / width) as u8).saturating_add(t),
            (y * 255 / height) as u8,
            (((x + y) * 128 / (width + height)) as u8).saturating_add(t),
        ])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

fn config() -> WorkerConfig {
    WorkerConfig {
        concurrency: 2,
        cache_control: "public, max-age=600".into(),
        tuning: TuningConfig {
            max_encodes: 4,
            ..TuningConfig::default()
        },
        ..WorkerConfig::default()
    }
}

async fn with_original(store: &S3Store, key: &str) {
    store
        .put(
            key,
            Bytes::from(jpeg(400, 300)),
            PutRequest {
                content_type: "image/jpeg".into(),
                ..PutRequest::default()
            },
        )
        .await
        .unwrap();
}

fn worker(store: &S3Store) -> Worker<S3Buckets> {
    Worker::new(S3Buckets::new(store.client().clone()), config())
}

fn job(store: &S3Store, key: &str) -> String {
    Job::new(store.bucket(), key, JobReason::Miss, None)
        .unwrap()
        .to_json()
}

fn event(records: &[(&str, String)]) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = records
        .iter()
        .map(|(id, body)| {
            let mut m = SqsMessage::default();
            m.message_id = Some(id.to_string());
            m.body = Some(body.clone());
            m
        })
        .collect();
    event
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(120)
}

#[tokio::test]
async fn a_job_writes_a_tagged_variant_with_type_cache_control_and_metadata() {
    let Some(store) = common::moto_store("worker_moto::a_job_writes").await else {
        return;
    };
    with_original(&store, "photos/cat.jpg").await;
    let key = "photos/cat.jpg@200w_150h_1e.webp";
    let response =
        handle_sqs_event(&worker(&store), event(&[("m1", job(&store, key))]), soon()).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");

    let client = store.client();
    let tagging = client
        .get_object_tagging()
        .bucket(store.bucket())
        .key(key)
        .send()
        .await
        .unwrap();
    let tags: Vec<(&str, &str)> = tagging
        .tag_set()
        .iter()
        .map(|t| (t.key(), t.value()))
        .collect();
    assert_eq!(tags, vec![("createByLambda", "1")]);

    let head = client
        .head_object()
        .bucket(store.bucket())
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("image/webp"));
    assert_eq!(head.cache_control(), Some("public, max-age=600"));
    let original = store.head("photos/cat.jpg").await.unwrap().unwrap();
    let metadata = head.metadata().cloned().unwrap_or_default();
    assert_eq!(metadata.get(meta::ORIGINAL_ETAG), original.etag.as_ref());
    assert_eq!(
        metadata.get(meta::VERSION).map(String::as_str),
        Some(edgethumb::VERSION)
    );
    assert_eq!(
        metadata.get(meta::PARAMS).map(String::as_str),
        Some("200w_150h_1e.webp")
    );
    let quality: u8 = metadata[meta::QUALITY].parse().unwrap();
    assert!((30..=95).contains(&quality));
    let score: f64 = metadata[meta::SCORE].parse().unwrap();
    assert!(score >= config().tuning.target_score, "{score}");
    let body = store.get(key, u64::MAX).await.unwrap().unwrap().body;
    assert_eq!(&body[..4], b"RIFF");
}

/// A job written by hand or by another system: `v`, `bucket` and `variant_key`, nothing
/// else (`events/job-v1-minimal.json`). The worker derives the original and the params.
#[tokio::test]
async fn a_minimal_hand_written_job_produces_the_variant() {
    let Some(store) = common::moto_store("worker_moto::a_minimal_job").await else {
        return;
    };
    with_original(&store, "photos/cat.jpg").await;
    let key = "photos/cat.jpg@200w.webp";
    let sample: serde_json::Value =
        serde_json::from_str(include_str!("../../events/job-v1-minimal.json")).unwrap();
    assert_eq!(sample["variant_key"], key);
    let body =
        serde_json::json!({"v": 1, "bucket": store.bucket(), "variant_key": key}).to_string();
    let response = handle_sqs_event(&worker(&store), event(&[("m1", body)]), soon()).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let variant = store.get(key, u64::MAX).await.unwrap().unwrap();
    assert_eq!(&variant.body[..4], b"RIFF");
    let decoded = image::load_from_memory(&variant.body).unwrap();
    assert_eq!(decoded.width(), 200);
    let head = store.head(key).await.unwrap().unwrap();
    assert_eq!(
        head.metadata.get(meta::PARAMS).map(String::as_str),
        Some("200w.webp")
    );
}

#[tokio::test]
async fn a_duplicate_job_does_not_write_again() {
    let Some(store) = common::moto_store("worker_moto::a_duplicate_job").await else {
        return;
    };
    with_original(&store, "a@b/pic.jpg").await;
    let key = "a@b/pic.jpg@120w";
    let w = worker(&store);
    let first = handle_sqs_event(&w, event(&[("m1", job(&store, key))]), soon()).await;
    assert!(first.batch_item_failures.is_empty());
    let before = store.head(key).await.unwrap().unwrap();
    // S3's Last-Modified has one-second resolution: wait so a rewrite would show.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = handle_sqs_event(
        &w,
        event(&[("m2", job(&store, key)), ("m3", job(&store, key))]),
        soon(),
    )
    .await;
    assert!(second.batch_item_failures.is_empty());
    let after = store.head(key).await.unwrap().unwrap();
    assert_eq!(before.etag, after.etag);
    assert_eq!(before.last_modified, after.last_modified);
}

#[tokio::test]
async fn a_poison_message_is_the_only_failure_reported() {
    let Some(store) = common::moto_store("worker_moto::a_poison_message").await else {
        return;
    };
    with_original(&store, "photos/cat.jpg").await;
    let response = handle_sqs_event(
        &worker(&store),
        event(&[
            ("poison-1", "{\"v\":1,\"bucket\":".into()),
            ("good-1", job(&store, "photos/cat.jpg@64w.jpg")),
        ]),
        soon(),
    )
    .await;
    let ids: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(ids, vec!["poison-1"]);
    assert!(
        store
            .head("photos/cat.jpg@64w.jpg")
            .await
            .unwrap()
            .is_some()
    );
}

/// A queue with a dead-letter queue after `max_receives` deliveries, as deployed.
async fn queue_with_dlq(
    test: &str,
    max_receives: u32,
    visibility_s: u32,
) -> Option<(SqsQueue, SqsQueue)> {
    let endpoint = common::moto_endpoint(test)?;
    let client = common::moto_settings(&endpoint).sqs_client().await;
    let dlq_url = client
        .create_queue()
        .queue_name(common::unique_name("et-dlq"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let redrive =
        format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"{max_receives}"}}"#);
    let url = client
        .create_queue()
        .queue_name(common::unique_name("et-jobs"))
        .attributes(QueueAttributeName::RedrivePolicy, redrive)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_s.to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    Some((
        SqsQueue::new(client.clone(), url),
        SqsQueue::new(client, dlq_url),
    ))
}

#[tokio::test]
async fn a_missing_original_is_reported_and_ends_in_the_dead_letter_queue() {
    let test = "worker_moto::a_missing_original";
    let Some(store) = common::moto_store(test).await else {
        return;
    };
    let Some((queue, dlq)) = queue_with_dlq(test, 2, 1).await else {
        return;
    };
    let body = job(&store, "photos/never-uploaded.jpg@100w");
    queue.send(&body).await.unwrap();
    let w = worker(&store);
    // Each delivery fails permanently and is reported (not deleted); after two receives
    // SQS's redrive moves the message to the DLQ instead of delivering it a third time.
    for delivery in 1..=2 {
        let got = queue
            .receive(10, Duration::from_secs(3), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "delivery {delivery}");
        let records = [edgethumb::worker::Record {
            id: got[0].id.clone(),
            body: got[0].body.clone(),
            receive_count: got[0].receive_count,
        }];
        let out = w
            .run(&records, None, &std::sync::atomic::AtomicBool::new(false))
            .await;
        assert!(
            matches!(
                &out[0],
                RecordOutcome::Failed {
                    retryable: false,
                    kind: "original-missing",
                    ..
                }
            ),
            "{out:?}"
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let again = queue
        .receive(10, Duration::from_secs(1), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(again.is_empty(), "delivered a third time: {again:?}");
    let dead = dlq
        .receive(10, Duration::from_secs(2), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, body);
}

#[tokio::test]
async fn the_runner_acks_done_jobs_on_sqs() {
    let Some(store) = common::moto_store("worker_moto::the_runner_acks").await else {
        return;
    };
    let Some(queue) = common::moto_queue("worker_moto::the_runner_acks").await else {
        return;
    };
    with_original(&store, "photos/cat.jpg").await;
    for w in [40, 50] {
        queue
            .send(&job(&store, &format!("photos/cat.jpg@{w}w")))
            .await
            .unwrap();
    }
    queue.send("not a job").await.unwrap();
    let options = RunnerOptions {
        once: true,
        wait: Duration::from_secs(1),
        visibility: Duration::from_secs(30),
        max_messages: 10,
    };
    let queue = std::sync::Arc::new(queue);
    let summary = Runner::new(queue.clone(), worker(&store), options)
        .run(std::future::pending())
        .await
        .unwrap();
    assert_eq!((summary.done, summary.failed), (2, 1), "{summary:?}");
    for w in [40, 50] {
        assert!(
            store
                .head(&format!("photos/cat.jpg@{w}w"))
                .await
                .unwrap()
                .is_some()
        );
    }
    // The done ones are deleted; the poison one is in flight (not deleted).
    let attributes = queue
        .client()
        .get_queue_attributes()
        .queue_url(queue.queue_url())
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    assert_eq!(
        attributes[&QueueAttributeName::ApproximateNumberOfMessagesNotVisible],
        "1"
    );
    assert_eq!(
        attributes[&QueueAttributeName::ApproximateNumberOfMessages],
        "0"
    );
}

#[tokio::test]
async fn work_once_drains_a_queue_as_a_subprocess() {
    let test = "worker_moto::work_once_drains";
    let Some(endpoint) = common::moto_endpoint(test) else {
        return;
    };
    let Some(store) = common::moto_store(test).await else {
        return;
    };
    let Some(queue) = common::moto_queue(test).await else {
        return;
    };
    with_original(&store, "in/photo.jpg").await;
    let keys: Vec<String> = [
        "in/photo.jpg@100w",
        "in/photo.jpg@80w_80h_1e_1c.webp",
        "in/photo.jpg@50p.png",
        "in/photo.jpg@60w_70q.jpg",
    ]
    .iter()
    .map(|k| k.to_string())
    .collect();
    let bodies: Vec<String> = keys.iter().map(|k| job(&store, k)).collect();
    assert!(queue.send_batch(&bodies).await.unwrap().is_empty());

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_edgethumb"))
        .args(["work", "--once", "--concurrency", "2", "--queue-url"])
        .arg(queue.queue_url())
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("EDGETHUMB_QUEUE_URL")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), output)
        .await
        .expect("work --once finished")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("4 done"), "{stderr}");
    for key in &keys {
        let info = store.head(key).await.unwrap();
        assert!(info.is_some(), "{key} missing; log:\n{stderr}");
        let tags = store.tags(key).await.unwrap().unwrap();
        assert_eq!(tags.get("createByLambda").map(String::as_str), Some("1"));
    }
    let left = queue
        .receive(10, Duration::from_secs(1), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}
