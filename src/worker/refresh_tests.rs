//! The worker's answer to S3 events, over the in-memory adapters: refresh, delete, drop,
//! ignore, invalidate, and the race between a render and a replacement.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::process::{CREATED_TAG, meta};
use super::*;
use crate::cdn::{CdnError, MemoryCdn};
use crate::job::{Job, JobReason};
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

struct Rig {
    store: Arc<Racing>,
    cdn: Arc<MemoryCdn>,
    worker: Worker<Box<dyn BucketStores>>,
}

fn rig_with(cdn: bool) -> Rig {
    let store = Arc::new(Racing {
        inner: MemoryStore::new("bucket"),
        puts: AtomicUsize::new(0),
        replace_after_get: std::sync::Mutex::new(None),
    });
    let memory_cdn = Arc::new(MemoryCdn::new());
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
    Rig {
        store,
        cdn: memory_cdn,
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
    let rig = rig_with(cdn);
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
    put_original(&rig.store.inner, ORIGINAL, picture(320, 240, 230)).await;
    let out = run(
        &rig,
        &[record("e1", s3_event("ObjectCreated:Put", ORIGINAL), 1)],
    )
    .await;
    assert!(
        matches!(&out[0], RecordOutcome::Event(s) if s.rerendered == 2),
        "{out:?}"
    );
    let now = original_etag(&rig).await;
    for key in OURS {
        assert_eq!(recorded_etag(&rig, key).await, now);
    }
}

#[tokio::test]
async fn a_failed_invalidation_fails_the_event_and_its_redelivery_invalidates() {
    let rig = seeded(true).await;
    put_original(&rig.store.inner, ORIGINAL, picture(320, 240, 230)).await;
    rig.cdn.fail_with(Some(CdnError::Throttled {
        distribution: "memory".into(),
        message: "TooManyInvalidationsInProgress".into(),
    }));
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
