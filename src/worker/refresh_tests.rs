//! The worker's answer to S3 events, over the in-memory adapters: refresh, delete, drop,
//! ignore, invalidate (and defer a throttled invalidation), and the race between a render
//! and a replacement.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::batch::{InvalidationOutcome, deferral_delay};
use super::message::{DeferredInvalidation, Message};
use super::process::{CREATED_TAG, meta};
use super::*;
use crate::cdn::{CdnError, CdnInvalidator, Completion, Coverage, InProgressQuotas, MemoryCdn};
use crate::job::{Job, JobReason};
use crate::queue::memory::MemoryQueue;
use crate::queue::{FailedEntry, JobQueue, QueueError, ReceivedMessage};
use crate::store::memory::MemoryStore;
use crate::store::{ListPage, Object, ObjectInfo, ObjectStore, PutRequest, StoreError};

const ORIGINAL: &str = "photos/red cat.jpg";
const OURS: [&str; 2] = [
    "photos/red cat.jpg@100w.webp",
    "photos/red cat.jpg@64w_64h_1e.png",
];
const HAND_MADE: &str = "photos/red cat.jpg@50w.webp";

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

/// A store that counts writes and, once armed, replaces the original right after a GET of
/// it (a replacement landing while a render runs).
struct Racing {
    inner: MemoryStore,
    puts: AtomicUsize,
    replace_after_get: std::sync::Mutex<Option<Vec<u8>>>,
}

#[async_trait]
impl ObjectStore for Racing {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
    async fn get(&self, key: &str, max_bytes: u64) -> Result<Option<Object>, StoreError> {
        let got = self.inner.get(key, max_bytes).await;
        let replacement = self.replace_after_get.lock().unwrap().take();
        if let Some(body) = replacement {
            put_original(&self.inner, key, body).await;
        }
        got
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        self.inner.head(key).await
    }
    async fn put(&self, key: &str, body: Bytes, req: PutRequest) -> Result<ObjectInfo, StoreError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put(key, body, req).await
    }
    async fn tags(&self, key: &str) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        self.inner.tags(key).await
    }
    async fn list_page(
        &self,
        prefix: &str,
        continuation: Option<String>,
        page_size: u32,
    ) -> Result<ListPage, StoreError> {
        self.inner.list_page(prefix, continuation, page_size).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
}

async fn put_original(store: &MemoryStore, key: &str, body: Vec<u8>) {
    store
        .put(
            key,
            Bytes::from(body),
            PutRequest {
                content_type: "image/jpeg".into(),
                ..PutRequest::default()
            },
        )
        .await
        .unwrap();
}

/// The queue a rig's worker defers throttled invalidations to: a memory queue that also
/// remembers each delay asked for, and refuses sends when told to.
#[derive(Debug)]
struct DeferralQueue {
    inner: MemoryQueue,
    delays: std::sync::Mutex<Vec<Duration>>,
    refuse: AtomicBool,
}

impl DeferralQueue {
    fn delays(&self) -> Vec<Duration> {
        self.delays.lock().unwrap().clone()
    }

    /// The deferred invalidations queued, in send order.
    fn deferred(&self) -> Vec<DeferredInvalidation> {
        self.inner
            .bodies()
            .iter()
            .map(|body| match Message::parse(body) {
                Ok(Message::Invalidation(d)) => d,
                other => panic!("{body}: {other:?}"),
            })
            .collect()
    }
}

#[async_trait]
impl JobQueue for DeferralQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn send(&self, body: &str) -> Result<String, QueueError> {
        self.inner.send(body).await
    }
    async fn send_delayed(&self, body: &str, delay: Duration) -> Result<String, QueueError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(QueueError::Backend {
                operation: "SendMessage",
                queue: "memory".into(),
                retryable: true,
                message: "refused by the test".into(),
            });
        }
        self.delays.lock().unwrap().push(delay);
        self.inner.send_delayed(body, delay).await
    }
    async fn send_batch(&self, bodies: &[String]) -> Result<Vec<FailedEntry>, QueueError> {
        self.inner.send_batch(bodies).await
    }
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.inner.receive(max, wait, visibility).await
    }
    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        self.inner.ack(receipt).await
    }
    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        self.inner.extend(receipt, visibility).await
    }
}

struct Rig {
    store: Arc<Racing>,
    cdn: Arc<MemoryCdn>,
    queue: Arc<DeferralQueue>,
    worker: Worker<Box<dyn BucketStores>>,
}

fn rig_with(cdn: bool) -> Rig {
    rig_built(Arc::new(MemoryCdn::new()), cdn, false)
}

/// A rig over `memory_cdn` (given to the worker when `cdn`), deferring throttled
/// invalidations to the rig's queue when `defer`.
fn rig_built(memory_cdn: Arc<MemoryCdn>, cdn: bool, defer: bool) -> Rig {
    let store = Arc::new(Racing {
        inner: MemoryStore::new("bucket"),
        puts: AtomicUsize::new(0),
        replace_after_get: std::sync::Mutex::new(None),
    });
    let queue = Arc::new(DeferralQueue {
        inner: MemoryQueue::new("render"),
        delays: std::sync::Mutex::new(Vec::new()),
        refuse: AtomicBool::new(false),
    });
    let shared = store.clone();
    let stores: Box<dyn BucketStores> =
        Box::new(move |_: &str| -> Arc<dyn ObjectStore> { shared.clone() });
    let config = WorkerConfig {
        concurrency: 2,
        tuning: TuningConfig {
            max_encodes: 2,
            ..TuningConfig::default()
        },
        ..WorkerConfig::default()
    };
    let mut worker = Worker::new(stores, config);
    if cdn {
        worker = worker.with_cdn(memory_cdn.clone());
    }
    if defer {
        worker = worker.with_deferral_queue(queue.clone());
    }
    Rig {
        store,
        cdn: memory_cdn,
        queue,
        worker,
    }
}

impl BucketStores for Box<dyn BucketStores> {
    fn store_for(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        self.as_ref().store_for(bucket)
    }
}

/// The S3 event message for `key` in the test bucket.
fn s3_event(event_name: &str, key: &str) -> String {
    super::message::storage_event_body(event_name, "bucket", key)
}

fn record(id: &str, body: String, receive_count: u32) -> Record {
    Record {
        id: id.into(),
        body,
        receive_count,
    }
}

async fn run(rig: &Rig, records: &[Record]) -> Vec<RecordOutcome> {
    rig.worker.run(records, None, &AtomicBool::new(false)).await
}

/// The original, our two variants (rendered by jobs) and a hand-made `key@…` object.
async fn seeded(cdn: bool) -> Rig {
    seed(rig_with(cdn)).await
}

/// [`seeded`], on a rig of the test's own.
async fn seed(rig: Rig) -> Rig {
    put_original(&rig.store.inner, ORIGINAL, picture(320, 240, 20)).await;
    let jobs: Vec<Record> = OURS
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let body = Job::new("bucket", *key, JobReason::Miss, None)
                .unwrap()
                .to_json();
            record(&format!("job{i}"), body, 1)
        })
        .collect();
    for outcome in run(&rig, &jobs).await {
        assert!(
            matches!(outcome, RecordOutcome::Done(KeyOutcome::Written { .. })),
            "{outcome:?}"
        );
    }
    rig.store
        .inner
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
    rig
}

async fn body(rig: &Rig, key: &str) -> Option<Bytes> {
    rig.store
        .inner
        .get(key, u64::MAX)
        .await
        .unwrap()
        .map(|o| o.body)
}

async fn recorded_etag(rig: &Rig, key: &str) -> Option<String> {
    let info = rig.store.inner.head(key).await.unwrap()?;
    info.metadata.get(meta::ORIGINAL_ETAG).cloned()
}

async fn original_etag(rig: &Rig) -> Option<String> {
    rig.store.inner.head(ORIGINAL).await.unwrap()?.etag
}

const PATHS: [&str; 2] = ["/photos/red%20cat.jpg", "/photos/red%20cat.jpg@*"];

/// Replace the original and deliver its Put event: both of our variants are re-rendered and
/// record the new ETag.
async fn replace_and_refresh(rig: &Rig) {
    put_original(&rig.store.inner, ORIGINAL, picture(320, 240, 230)).await;
    let out = run(
        rig,
        &[record("e1", s3_event("ObjectCreated:Put", ORIGINAL), 1)],
    )
    .await;
    assert!(
        matches!(&out[0], RecordOutcome::Event(s) if s.rerendered == 2),
        "{out:?}"
    );
    let now = original_etag(rig).await;
    for key in OURS {
        assert_eq!(recorded_etag(rig, key).await, now, "{key}");
    }
}

#[tokio::test]
async fn a_replaced_original_refreshes_our_variants_and_leaves_hand_made_ones_alone() {
    let rig = seeded(true).await;
    let before: Vec<Bytes> = futures::future::join_all(OURS.iter().map(|k| body(&rig, k)))
        .await
        .into_iter()
        .map(Option::unwrap)
        .collect();
    put_original(&rig.store.inner, ORIGINAL, picture(320, 240, 230)).await;
    let out = run(
        &rig,
        &[record("e1", s3_event("ObjectCreated:Put", ORIGINAL), 1)],
    )
    .await;
    let RecordOutcome::Event(said) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!((said.originals, said.rerendered, said.foreign), (1, 2, 1));
    let now = original_etag(&rig).await;
    for (key, old) in OURS.iter().zip(before) {
        assert_eq!(recorded_etag(&rig, key).await, now, "{key}");
        assert_ne!(body(&rig, key).await.unwrap(), old, "{key}: new pixels");
        let tags = rig.store.inner.tags(key).await.unwrap().unwrap();
        assert_eq!(tags.get(CREATED_TAG.0).map(String::as_str), Some("1"));
    }
    assert_eq!(
        body(&rig, HAND_MADE).await.unwrap(),
        Bytes::from_static(b"drawn by hand")
    );
    assert_eq!(rig.cdn.requests(), vec![PATHS.to_vec()]);
}

#[tokio::test]
async fn a_deleted_original_deletes_only_our_variants_and_invalidates() {
    let rig = seeded(true).await;
    rig.store.inner.delete(ORIGINAL).await.unwrap();
    let out = run(
        &rig,
        &[record("e1", s3_event("ObjectRemoved:Delete", ORIGINAL), 1)],
    )
    .await;
    assert!(
        matches!(&out[0], RecordOutcome::Event(s) if s.deleted == 2 && s.foreign == 1),
        "{out:?}"
    );
    for key in OURS {
        assert!(body(&rig, key).await.is_none(), "{key}");
    }
    assert!(body(&rig, HAND_MADE).await.is_some());
    assert_eq!(rig.cdn.requests(), vec![PATHS.to_vec()]);
}

#[tokio::test]
async fn a_duplicate_event_changes_nothing_and_invalidates_nothing() {
    let rig = seeded(true).await;
    put_original(&rig.store.inner, ORIGINAL, picture(320, 240, 230)).await;
    let event = s3_event("ObjectCreated:Put", ORIGINAL);
    // Twice in one batch, then once more later.
    let out = run(
        &rig,
        &[
            record("e1", event.clone(), 1),
            record("e2", event.clone(), 1),
        ],
    )
    .await;
    assert!(out.iter().all(RecordOutcome::is_done), "{out:?}");
    let puts = rig.store.puts.load(Ordering::SeqCst);
    let out = run(&rig, &[record("e3", event, 1)]).await;
    assert!(
        matches!(&out[0], RecordOutcome::Event(s) if s.rerendered == 0 && s.deleted == 0),
        "{out:?}"
    );
    assert_eq!(rig.store.puts.load(Ordering::SeqCst), puts, "no write");
    assert_eq!(rig.cdn.requests().len(), 1, "one invalidation in all");
}

#[tokio::test]
async fn a_late_delete_event_after_a_newer_put_keeps_the_fresh_variants() {
    let rig = seeded(true).await;
    // Deleted, then uploaded again; the delete's event arrives after the new object exists.
    rig.store.inner.delete(ORIGINAL).await.unwrap();
    put_original(&rig.store.inner, ORIGINAL, picture(320, 240, 230)).await;
    let out = run(
        &rig,
        &[record("e1", s3_event("ObjectRemoved:Delete", ORIGINAL), 1)],
    )
    .await;
    assert!(
        matches!(&out[0], RecordOutcome::Event(s) if s.deleted == 0 && s.rerendered == 2),
        "{out:?}"
    );
    let now = original_etag(&rig).await;
    for key in OURS {
        assert_eq!(recorded_etag(&rig, key).await, now, "{key}");
    }
    // The put's own event, arriving after, finds everything current.
    let out = run(
        &rig,
        &[record("e2", s3_event("ObjectCreated:Put", ORIGINAL), 1)],
    )
    .await;
    assert!(
        matches!(&out[0], RecordOutcome::Event(s) if s.rerendered == 0),
        "{out:?}"
    );
    assert_eq!(rig.cdn.requests().len(), 1);
}

#[tokio::test]
async fn a_variants_own_event_is_dropped_without_any_work() {
    let rig = seeded(true).await;
    let puts = rig.store.puts.load(Ordering::SeqCst);
    let out = run(
        &rig,
        &[record("e1", s3_event("ObjectCreated:Put", OURS[0]), 1)],
    )
    .await;
    assert_eq!(
        out,
        vec![RecordOutcome::Event(EventOutcome {
            variant_events: 1,
            ..EventOutcome::default()
        })]
    );
    assert_eq!(rig.store.puts.load(Ordering::SeqCst), puts);
    assert!(rig.cdn.requests().is_empty());
    // An original whose name contains `@` but no valid params is an original.
    put_original(&rig.store.inner, "me@home.jpg", picture(64, 64, 9)).await;
    let out = run(
        &rig,
        &[record(
            "e2",
            s3_event("ObjectCreated:Put", "me@home.jpg"),
            1,
        )],
    )
    .await;
    assert!(
        matches!(&out[0], RecordOutcome::Event(s) if s.originals == 1),
        "{out:?}"
    );
}

#[tokio::test]
async fn test_events_and_other_event_types_are_done_and_bad_events_are_permanent() {
    let rig = seeded(true).await;
    let test = include_str!("../../events/s3-test-event.json").to_string();
    let tagging = s3_event("ObjectTagging:Put", ORIGINAL);
    let bad = r#"{"Records":[{"eventName":"ObjectCreated:Put"}]}"#.to_string();
    let out = run(
        &rig,
        &[
            record("t", test, 1),
            record("g", tagging, 1),
            record("b", bad, 1),
        ],
    )
    .await;
    assert_eq!(out[0], RecordOutcome::Event(EventOutcome::default()));
    assert!(matches!(&out[1], RecordOutcome::Event(s) if s.ignored == 1 && s.originals == 0));
    assert!(
        matches!(
            &out[2],
            RecordOutcome::Failed {
                retryable: false,
                kind: "invalid-event",
                ..
            }
        ),
        "{out:?}"
    );
    assert!(rig.cdn.requests().is_empty());
}

#[tokio::test]
async fn without_a_distribution_variants_are_still_refreshed() {
    let rig = seeded(false).await;
    replace_and_refresh(&rig).await;
}

#[tokio::test]
async fn a_failed_invalidation_fails_the_event_and_its_redelivery_invalidates() {
    let rig = seeded(true).await;
    put_original(&rig.store.inner, ORIGINAL, picture(320, 240, 230)).await;
    rig.cdn.fail_with(Some(throttled()));
    let event = s3_event("ObjectCreated:Put", ORIGINAL);
    let out = run(&rig, &[record("e1", event.clone(), 1)]).await;
    assert!(
        matches!(
            &out[0],
            RecordOutcome::Failed {
                retryable: true,
                kind: "cdn",
                ..
            }
        ),
        "{out:?}"
    );
    rig.cdn.fail_with(None);
    // The redelivery finds the variants current, and invalidates all the same.
    let out = run(&rig, &[record("e1", event, 2)]).await;
    assert!(
        matches!(&out[0], RecordOutcome::Event(s) if s.rerendered == 0),
        "{out:?}"
    );
    assert_eq!(rig.cdn.requests(), vec![PATHS.to_vec()]);
}

#[tokio::test]
async fn a_render_racing_a_replacement_does_not_write_the_old_picture() {
    let rig = rig_with(true);
    put_original(&rig.store.inner, ORIGINAL, picture(320, 240, 20)).await;
    *rig.store.replace_after_get.lock().unwrap() = Some(picture(320, 240, 230));
    let body = Job::new("bucket", OURS[0], JobReason::Miss, None)
        .unwrap()
        .to_json();
    let out = run(&rig, &[record("j", body.clone(), 1)]).await;
    assert!(
        matches!(
            &out[0],
            RecordOutcome::Failed {
                retryable: true,
                kind: "original-changed",
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(rig.store.puts.load(Ordering::SeqCst), 0, "nothing written");
    // The retry renders the new original.
    let out = run(&rig, &[record("j", body, 2)]).await;
    assert!(matches!(
        &out[0],
        RecordOutcome::Done(KeyOutcome::Written { .. })
    ));
    assert_eq!(
        recorded_etag(&rig, OURS[0]).await,
        original_etag(&rig).await
    );
}

#[tokio::test]
async fn a_bulk_batch_makes_one_invalidation_within_the_quotas() {
    let rig = rig_with(true);
    let keys: Vec<String> = (0..12).map(|i| format!("bulk/{i}.jpg")).collect();
    let mut jobs = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        put_original(&rig.store.inner, key, picture(48, 32, 10)).await;
        let body = Job::new("bucket", format!("{key}@16w.png"), JobReason::Miss, None)
            .unwrap()
            .to_json();
        jobs.push(record(&format!("j{i}"), body, 1));
    }
    assert!(run(&rig, &jobs).await.iter().all(RecordOutcome::is_done));
    let mut events = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        put_original(&rig.store.inner, key, picture(48, 32, 200)).await;
        events.push(record(
            &format!("e{i}"),
            s3_event("ObjectCreated:Put", key),
            1,
        ));
    }
    let out = run(&rig, &events).await;
    assert!(out.iter().all(RecordOutcome::is_done), "{out:?}");
    let requests = rig.cdn.requests();
    assert_eq!(requests.len(), 1, "one CreateInvalidation per batch");
    assert_eq!(requests[0], ["/bulk/*"]);
    assert!(crate::cdn::wildcard_count(&requests[0]) <= crate::cdn::MAX_WILDCARD_PATHS_PER_REQUEST);
}

// ---- throttled invalidations: deferred to the queue, merged, backed off ----

fn throttled() -> CdnError {
    CdnError::Throttled {
        distribution: "memory".into(),
        message: "TooManyInvalidationsInProgress".into(),
    }
}

/// CloudFront's quotas, with 15 wildcard paths of someone else's in progress that never
/// complete: every request with a wildcard is throttled.
async fn full_cdn() -> Arc<MemoryCdn> {
    let cdn = Arc::new(MemoryCdn::with_quotas(InProgressQuotas::cloudfront(
        Completion::Manual,
    )));
    let others: Vec<String> = (0..15).map(|i| format!("/other/{i}/*")).collect();
    cdn.invalidate(&others).await.unwrap();
    cdn
}

fn deferred_body(originals: &[&str], directories: &[&str], attempt: u32) -> String {
    DeferredInvalidation {
        coverage: Coverage::new(
            originals.iter().map(|k| k.to_string()),
            directories.iter().map(|d| d.to_string()),
        ),
        attempt,
    }
    .to_json()
}

#[tokio::test]
async fn a_throttled_invalidation_is_deferred_and_its_records_are_done() {
    let rig = seed(rig_built(full_cdn().await, true, true)).await;
    replace_and_refresh(&rig).await;
    assert_eq!(rig.cdn.throttled(), 1);
    assert_eq!(rig.cdn.requests().len(), 1, "only the other invalidation");
    // One delayed message carries the invalidation; it is not receivable yet.
    let deferred = rig.queue.deferred();
    assert_eq!(deferred.len(), 1);
    assert_eq!(deferred[0].attempt, 1);
    assert_eq!(deferred[0].coverage.paths(), PATHS);
    let delays = rig.queue.delays();
    assert!((60..=75).contains(&delays[0].as_secs()), "{delays:?}");
    assert!(
        rig.queue
            .receive(10, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn deferred_invalidations_merge_with_the_batch_into_one_request() {
    let cdn = Arc::new(MemoryCdn::with_quotas(InProgressQuotas::cloudfront(
        Completion::Manual,
    )));
    let rig = seed(rig_built(cdn, true, true)).await;
    put_original(&rig.store.inner, ORIGINAL, picture(320, 240, 230)).await;
    let out = run(
        &rig,
        &[
            record("d1", deferred_body(&["x/a b.jpg"], &[], 1), 1),
            record("e1", s3_event("ObjectCreated:Put", ORIGINAL), 1),
            record("d2", deferred_body(&[], &["bulk/"], 3), 1),
        ],
    )
    .await;
    let created = RecordOutcome::Invalidation(InvalidationOutcome::Created);
    assert_eq!(out[0], created);
    assert_eq!(out[2], created);
    assert!(
        matches!(&out[1], RecordOutcome::Event(s) if s.rerendered == 2),
        "{out:?}"
    );
    assert_eq!(
        rig.cdn.requests(),
        vec![vec![
            PATHS[0].to_string(),
            PATHS[1].into(),
            "/x/a%20b.jpg".into(),
            "/x/a%20b.jpg@*".into(),
            "/bulk/*".into(),
        ]],
        "one request for the batch and both deferred messages"
    );
    assert!(rig.queue.inner.is_empty(), "nothing deferred again");

    // More deferred messages than a request may carry wildcards for: one request still.
    let many: Vec<Record> = (0..8)
        .map(|i| {
            let key = format!("many/{i}.jpg");
            record(&format!("m{i}"), deferred_body(&[key.as_str()], &[], 1), 1)
        })
        .collect();
    let out = run(&rig, &many).await;
    assert!(out.iter().all(|o| *o == created), "{out:?}");
    assert_eq!(rig.cdn.requests().last().unwrap(), &["/many/*"]);
}

#[tokio::test]
async fn repeated_throttling_backs_off_and_never_fails_a_record() {
    let rig = rig_built(full_cdn().await, true, true);
    let mut body = deferred_body(&["a.jpg"], &[], 1);
    for attempt in 2..=8u32 {
        let out = run(&rig, &[record(&format!("d{attempt}"), body, 1)]).await;
        assert_eq!(
            out,
            [RecordOutcome::Invalidation(InvalidationOutcome::Deferred)]
        );
        let latest = rig.queue.deferred().pop().unwrap();
        assert_eq!(latest.attempt, attempt);
        assert_eq!(latest.coverage.paths(), ["/a.jpg", "/a.jpg@*"]);
        let delay = *rig.queue.delays().last().unwrap();
        let base = (60u64 << (attempt - 1)).min(900);
        assert!(
            delay.as_secs() >= base && delay.as_secs() <= (base + base / 4).min(900),
            "attempt {attempt}: {delay:?}"
        );
        body = latest.to_json();
    }
    let delays: Vec<u64> = rig.queue.delays().iter().map(Duration::as_secs).collect();
    assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
    assert_eq!(delays.last(), Some(&900), "capped at SQS's maximum");
    assert_eq!(rig.cdn.throttled(), 7);
    assert_eq!(deferral_delay(1, 0.0), Duration::from_secs(60));
    assert_eq!(deferral_delay(1, 1.0), Duration::from_secs(75));
    assert_eq!(deferral_delay(40, 1.0), Duration::from_secs(900));
}

#[tokio::test]
async fn a_cdn_error_other_than_throttling_still_fails_the_records() {
    let rig = seed(rig_built(Arc::new(MemoryCdn::new()), true, true)).await;
    put_original(&rig.store.inner, ORIGINAL, picture(320, 240, 230)).await;
    rig.cdn.fail_with(Some(CdnError::Backend {
        distribution: "memory".into(),
        retryable: false,
        message: "AccessDenied".into(),
    }));
    let out = run(
        &rig,
        &[
            record("e1", s3_event("ObjectCreated:Put", ORIGINAL), 1),
            record("d1", deferred_body(&["x.jpg"], &[], 2), 1),
        ],
    )
    .await;
    for outcome in &out {
        assert!(
            matches!(
                outcome,
                RecordOutcome::Failed {
                    retryable: false,
                    kind: "cdn",
                    ..
                }
            ),
            "{out:?}"
        );
    }
    assert!(rig.queue.inner.is_empty(), "nothing deferred");
}

#[tokio::test]
async fn a_throttled_invalidation_that_cannot_be_deferred_fails_its_records() {
    let rig = seed(rig_built(Arc::new(MemoryCdn::new()), true, true)).await;
    put_original(&rig.store.inner, ORIGINAL, picture(320, 240, 230)).await;
    rig.cdn.fail_with(Some(throttled()));
    rig.queue.refuse.store(true, Ordering::SeqCst);
    let out = run(
        &rig,
        &[
            record("e1", s3_event("ObjectCreated:Put", ORIGINAL), 1),
            record("d1", deferred_body(&["x.jpg"], &[], 2), 1),
        ],
    )
    .await;
    for outcome in &out {
        assert!(
            matches!(
                outcome,
                RecordOutcome::Failed {
                    retryable: true,
                    kind: "cdn",
                    ..
                }
            ),
            "{out:?}"
        );
    }
    assert!(rig.queue.inner.is_empty());
}

#[tokio::test]
async fn invalidation_messages_without_a_cdn_are_dropped_and_bad_ones_are_permanent() {
    let rig = rig_built(Arc::new(MemoryCdn::new()), false, true);
    let out = run(
        &rig,
        &[
            record("d1", deferred_body(&["x.jpg"], &[], 1), 1),
            record(
                "bad",
                r#"{"v":1,"invalidate":{"originals":[]},"attempt":1}"#.into(),
                1,
            ),
        ],
    )
    .await;
    assert_eq!(
        out[0],
        RecordOutcome::Invalidation(InvalidationOutcome::NoCdn)
    );
    assert!(
        matches!(
            &out[1],
            RecordOutcome::Failed {
                retryable: false,
                kind: "invalid-invalidation",
                ..
            }
        ),
        "{out:?}"
    );
    assert!(rig.cdn.requests().is_empty());
    assert!(rig.queue.inner.is_empty());
}

/// A bulk upload of 1,000 replaced originals, ten records a batch, against CloudFront's
/// quotas (an invalidation in progress for 90 s), on a paused clock: no record ever fails,
/// every refreshed original is covered by an invalidation accepted after its refresh, and
/// the requests stay few.
#[tokio::test(start_paused = true)]
async fn a_bulk_upload_is_invalidated_within_the_quotas_without_failing_a_record() {
    const N: usize = 1000;
    let cdn = Arc::new(MemoryCdn::with_quotas(InProgressQuotas::cloudfront(
        Completion::After(Duration::from_secs(90)),
    )));
    let rig = rig_built(cdn.clone(), true, true);
    let replaced = picture(16, 12, 230);
    // Ten originals a directory, so a batch's own request covers only its directory and a
    // deferred batch is covered only if its message is merged into a later request.
    let keys: Vec<String> = (0..N)
        .map(|i| format!("bulk/{:03}/{i:04}.jpg", i / 10))
        .collect();
    let variant = |key: &str| format!("{key}@8w_80q.jpg");
    // Each original already replaced; its variant of ours records another ETag.
    for key in &keys {
        put_original(&rig.store.inner, key, replaced.clone()).await;
        let metadata = [
            (meta::ORIGINAL_ETAG, "\"stale\""),
            (meta::PARAMS, "8w_80q.jpg"),
            (meta::VERSION, crate::VERSION),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let tags = [(CREATED_TAG.0.to_string(), CREATED_TAG.1.to_string())].into();
        let request = PutRequest {
            content_type: "image/jpeg".into(),
            metadata,
            tags,
            ..PutRequest::default()
        };
        rig.store
            .inner
            .put(&variant(key), Bytes::from_static(b"old"), request)
            .await
            .unwrap();
    }
    let queue = &rig.queue.inner;
    let events: Vec<String> = keys
        .iter()
        .map(|k| s3_event("ObjectCreated:Put", k))
        .collect();
    assert!(queue.send_batch(&events).await.unwrap().is_empty());
    let started = tokio::time::Instant::now();
    // (original, requests accepted before its batch): one after that must cover it.
    let mut refreshed: Vec<(String, usize)> = Vec::new();
    let (mut batches, mut invalidation_records) = (0, 0);
    while !queue.is_empty() {
        let got = queue
            .receive(10, Duration::ZERO, Duration::from_secs(300))
            .await
            .unwrap();
        if got.is_empty() {
            // Only deferred invalidations wait: time passes.
            tokio::time::advance(Duration::from_secs(10)).await;
            assert!(
                started.elapsed() < Duration::from_secs(3600),
                "never drained"
            );
            continue;
        }
        batches += 1;
        let accepted_before = cdn.requests().len();
        let records: Vec<Record> = got
            .iter()
            .map(|m| record(&m.id, m.body.clone(), m.receive_count))
            .collect();
        let out = rig
            .worker
            .run(&records, None, &AtomicBool::new(false))
            .await;
        for (message, outcome) in got.iter().zip(&out) {
            assert!(outcome.is_done(), "{outcome:?}");
            match outcome {
                RecordOutcome::Invalidation(_) => invalidation_records += 1,
                RecordOutcome::Event(_) => {
                    let Ok(Message::Storage(changes)) = Message::parse(&message.body) else {
                        panic!("{}", message.body)
                    };
                    refreshed.push((changes[0].key.clone(), accepted_before));
                }
                other => panic!("{other:?}"),
            }
            queue.ack(&message.receipt).await.unwrap();
        }
        // A batch takes about a second on Lambda.
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let took = started.elapsed();
    let accepted = cdn.requests();
    let covers = |request: &Vec<String>, path: &str| {
        request.iter().any(|p| {
            p == path
                || p.strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix))
        })
    };
    assert_eq!(refreshed.len(), N);
    for (key, accepted_before) in &refreshed {
        for path in [crate::cdn::path_of(key), crate::cdn::path_of(&variant(key))] {
            assert!(
                accepted[*accepted_before..]
                    .iter()
                    .any(|request| covers(request, &path)),
                "{path} refreshed but never invalidated after"
            );
        }
    }
    let etag = rig.store.inner.head(&keys[0]).await.unwrap().unwrap().etag;
    for key in &keys {
        assert_eq!(recorded_etag(&rig, &variant(key)).await, etag, "{key}");
    }
    for request in &accepted {
        assert!(crate::cdn::wildcard_count(request) <= crate::cdn::MAX_WILDCARD_PATHS_PER_REQUEST);
    }
    let (files, wildcards) = cdn.peak_in_progress();
    assert!(files <= 3000 && wildcards <= 15, "{files} {wildcards}");
    assert!(
        cdn.throttled() > 0,
        "the quotas were never reached: nothing was tested"
    );
    assert!(invalidation_records > 0);
    assert!(cdn.calls() <= batches, "more than one request per batch");
    assert!(accepted.len() <= 60, "{} requests", accepted.len());
    println!(
        "bulk: {N} originals in {batches} batches, {} s simulated; {} CreateInvalidation calls ({} accepted, {} throttled), {invalidation_records} deferred messages read, peak in progress {wildcards} wildcard paths",
        took.as_secs(),
        cdn.calls(),
        accepted.len(),
        cdn.throttled(),
    );
}
