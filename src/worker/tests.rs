//! Unit tests of the worker's rules over the in-memory adapters.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use super::process::{CREATED_TAG, meta};
use super::*;
use crate::job::{Job, JobReason};
use crate::queue::JobQueue;
use crate::queue::memory::MemoryQueue;
use crate::store::memory::MemoryStore;
use crate::store::{ListPage, Object, ObjectInfo, ObjectStore, PutRequest, StoreError};

/// A store that counts calls, can slow down or fail `get`, and tracks how many writes
/// overlap (a render holds its CPU slot and memory permit until its write is done).
struct Probe {
    inner: MemoryStore,
    gets: AtomicUsize,
    heads: AtomicUsize,
    puts: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    get_delay: Duration,
    put_delay: Duration,
    fail_gets: Option<bool>,
}

impl Probe {
    fn new() -> Probe {
        Probe {
            inner: MemoryStore::new("bucket"),
            gets: AtomicUsize::new(0),
            heads: AtomicUsize::new(0),
            puts: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            get_delay: Duration::ZERO,
            put_delay: Duration::ZERO,
            fail_gets: None,
        }
    }
}

#[async_trait]
impl ObjectStore for Probe {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
    async fn get(&self, key: &str, max_bytes: u64) -> Result<Option<Object>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        if let Some(retryable) = self.fail_gets {
            return Err(StoreError::Backend {
                operation: "GetObject",
                bucket: "bucket".into(),
                key: key.into(),
                retryable,
                message: "injected".into(),
            });
        }
        tokio::time::sleep(self.get_delay).await;
        self.inner.get(key, max_bytes).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        self.heads.fetch_add(1, Ordering::SeqCst);
        self.inner.head(key).await
    }
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        request: PutRequest,
    ) -> Result<ObjectInfo, StoreError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.put_delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.inner.put(key, body, request).await
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

/// A photo-like test image: gradients, a few edges and some texture.
fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        let t = ((x * 7 + y * 13) % 17) as u8;
        let edge = if (x / 40 + y / 40) % 2 == 0 { 40 } else { 0 };
        image::Rgb([
            ((x * 255 / width) as u8).saturating_add(t),
            ((y * 255 / height) as u8).saturating_add(edge),
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
        tuning: TuningConfig {
            max_encodes: 3,
            ..TuningConfig::default()
        },
        ..WorkerConfig::default()
    }
}

async fn setup() -> Arc<Probe> {
    let store = Arc::new(Probe::new());
    put_original(&store, "photos/cat.jpg", jpeg(320, 240)).await;
    store
}

async fn put_original(store: &Probe, key: &str, body: Vec<u8>) {
    store
        .inner
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

fn worker(store: Arc<Probe>, config: WorkerConfig) -> Worker<impl BucketStores> {
    Worker::new(
        move |_bucket: &str| -> Arc<dyn ObjectStore> { store.clone() },
        config,
    )
}

fn job(key: &str) -> String {
    Job::new("bucket", key, JobReason::Miss, None)
        .unwrap()
        .to_json()
}

fn record(id: &str, body: String) -> Record {
    Record {
        id: id.into(),
        body,
        receive_count: 1,
    }
}

async fn run(w: &Worker<impl BucketStores>, records: &[Record]) -> Vec<RecordOutcome> {
    w.run(records, None, &AtomicBool::new(false)).await
}

fn is_permanent(o: &RecordOutcome, expected_kind: &str) -> bool {
    matches!(o, RecordOutcome::Failed { retryable: false, kind, .. } if *kind == expected_kind)
}

#[tokio::test]
async fn a_job_writes_the_variant_with_tag_type_cache_control_and_metadata() {
    let store = setup().await;
    let w = worker(store.clone(), config());
    let out = run(&w, &[record("m1", job("photos/cat.jpg@100w.webp"))]).await;
    let RecordOutcome::Done(KeyOutcome::Written { quality, score, .. }) = &out[0] else {
        panic!("{out:?}");
    };
    let info = store
        .inner
        .head("photos/cat.jpg@100w.webp")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.content_type.as_deref(), Some("image/webp"));
    assert_eq!(info.cache_control.as_deref(), Some(DEFAULT_CACHE_CONTROL));
    let original = store.inner.head("photos/cat.jpg").await.unwrap().unwrap();
    assert_eq!(
        info.metadata.get(meta::ORIGINAL_ETAG),
        original.etag.as_ref()
    );
    assert_eq!(
        info.metadata.get(meta::VERSION).map(String::as_str),
        Some(crate::VERSION)
    );
    assert_eq!(
        info.metadata.get(meta::PARAMS).map(String::as_str),
        Some("100w.webp")
    );
    assert_eq!(info.metadata.get(meta::QUALITY), Some(&quality.to_string()));
    let score = score.expect("tuned renders are scored");
    assert_eq!(info.metadata.get(meta::SCORE), Some(&format!("{score:.2}")));
    let tags = store
        .inner
        .tags("photos/cat.jpg@100w.webp")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tags.get(CREATED_TAG.0).map(String::as_str), Some("1"));
    let body = store
        .inner
        .get("photos/cat.jpg@100w.webp", u64::MAX)
        .await
        .unwrap()
        .unwrap()
        .body;
    assert_eq!(&body[..4], b"RIFF");
}

#[tokio::test]
async fn a_url_quality_is_honoured_exactly() {
    let store = setup().await;
    let w = worker(store.clone(), config());
    let out = run(&w, &[record("m1", job("photos/cat.jpg@100w_55q.jpg"))]).await;
    assert!(
        matches!(
            &out[0],
            RecordOutcome::Done(KeyOutcome::Written {
                quality: 55,
                score: None,
                ..
            })
        ),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_current_variant_is_skipped_after_heads_only() {
    let store = setup().await;
    let w = worker(store.clone(), config());
    let key = "photos/cat.jpg@100w";
    run(&w, &[record("m1", job(key))]).await;
    let before = store.inner.head(key).await.unwrap().unwrap();
    let gets = store.gets.load(Ordering::SeqCst);
    let puts = store.puts.load(Ordering::SeqCst);

    let out = run(&w, &[record("m2", job(key))]).await;
    assert_eq!(out, vec![RecordOutcome::Done(KeyOutcome::Current)]);
    assert_eq!(store.gets.load(Ordering::SeqCst), gets, "no download");
    assert_eq!(store.puts.load(Ordering::SeqCst), puts, "no write");
    let after = store.inner.head(key).await.unwrap().unwrap();
    assert_eq!(before.etag, after.etag);
    assert_eq!(before.last_modified, after.last_modified);
}

#[tokio::test]
async fn a_changed_original_or_another_version_is_rendered_again() {
    let store = setup().await;
    let w = worker(store.clone(), config());
    let key = "photos/cat.jpg@100w";
    run(&w, &[record("m1", job(key))]).await;
    // New original: different ETag.
    put_original(&store, "photos/cat.jpg", jpeg(330, 240)).await;
    let out = run(&w, &[record("m2", job(key))]).await;
    assert!(matches!(
        out[0],
        RecordOutcome::Done(KeyOutcome::Written { .. })
    ));
    // Same original, but written by another edgethumb version.
    let mut info = store.inner.head(key).await.unwrap().unwrap();
    info.metadata
        .insert(meta::VERSION.into(), "0.0.0-old".into());
    let body = store.inner.get(key, u64::MAX).await.unwrap().unwrap().body;
    store
        .inner
        .put(
            key,
            body,
            PutRequest {
                content_type: "image/jpeg".into(),
                metadata: info.metadata,
                ..PutRequest::default()
            },
        )
        .await
        .unwrap();
    let out = run(&w, &[record("m3", job(key))]).await;
    assert!(matches!(
        out[0],
        RecordOutcome::Done(KeyOutcome::Written { .. })
    ));
    let info = store.inner.head(key).await.unwrap().unwrap();
    assert_eq!(
        info.metadata.get(meta::VERSION).map(String::as_str),
        Some(crate::VERSION)
    );
}

#[tokio::test]
async fn duplicates_in_a_batch_render_once_and_share_the_outcome() {
    let store = setup().await;
    let w = worker(store.clone(), config());
    let records = [
        record("a", job("photos/cat.jpg@100w_100h_1e.webp")),
        record("b", job("photos/cat.jpg@100w_100h_1e.webp")),
        // Another spelling of the same variant: rendered once, written under both keys.
        record("c", job("photos/cat.jpg@100h_100w_1e.webp")),
        record("d", job("photos/cat.jpg@50w")),
    ];
    let out = run(&w, &records).await;
    assert!(out.iter().all(RecordOutcome::is_done), "{out:?}");
    assert_eq!(
        store.gets.load(Ordering::SeqCst),
        2,
        "one download per variant"
    );
    assert_eq!(
        store.puts.load(Ordering::SeqCst),
        3,
        "one write per distinct key"
    );
    assert_eq!(out[0], out[1]);
    let a = store
        .inner
        .get("photos/cat.jpg@100w_100h_1e.webp", u64::MAX);
    let c = store
        .inner
        .get("photos/cat.jpg@100h_100w_1e.webp", u64::MAX);
    assert_eq!(
        a.await.unwrap().unwrap().body,
        c.await.unwrap().unwrap().body
    );

    // A failing render fails every duplicate.
    let out = run(
        &w,
        &[
            record("x", job("photos/gone.jpg@10w")),
            record("y", job("photos/gone.jpg@10w")),
        ],
    )
    .await;
    assert!(
        out.iter().all(|o| is_permanent(o, "original-missing")),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_batch_names_exactly_the_failed_records() {
    let store = setup().await;
    put_original(&store, "photos/random.jpg", vec![0xFF, 0xD8, 1, 2, 3, 4, 5]).await;
    let w = worker(store.clone(), config());
    let record = |id: &str, body: &str| Record {
        id: id.into(),
        body: body.into(),
        receive_count: 1,
    };
    let records = vec![
        record("good", &job("photos/cat.jpg@80w")),
        record("poison", "{not json"),
        record("newer", r#"{"v":2,"whatever":true}"#),
        record("missing", &job("photos/nope.jpg@80w")),
        record("corrupt", &job("photos/random.jpg@80w")),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = w.failed_ids(&records, deadline).await;
    assert_eq!(failed, vec!["poison", "newer", "missing", "corrupt"]);
    assert!(
        store
            .inner
            .head("photos/cat.jpg@80w")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn failures_are_classified_retryable_or_permanent() {
    let store = setup().await;
    put_original(
        &store,
        "photos/random.jpg",
        b"definitely not an image".to_vec(),
    )
    .await;
    let mut cfg = config();
    cfg.allowed_buckets = Some(vec!["bucket".into()]);
    let w = worker(store.clone(), cfg);
    let other_bucket = Job::new("elsewhere", "a.jpg@10w", JobReason::Manual, None)
        .unwrap()
        .to_json();
    let out = run(
        &w,
        &[
            record("1", "garbage".into()),
            record("2", job("photos/nope.jpg@80w")),
            record("3", job("photos/random.jpg@80w")),
            record("4", other_bucket),
            record("5", r#"{"v":9}"#.into()),
        ],
    )
    .await;
    assert!(is_permanent(&out[0], "invalid-job"), "{:?}", out[0]);
    assert!(is_permanent(&out[1], "original-missing"), "{:?}", out[1]);
    assert!(is_permanent(&out[2], "undecodable"), "{:?}", out[2]);
    assert!(is_permanent(&out[3], "bucket-not-allowed"), "{:?}", out[3]);
    assert!(
        matches!(
            &out[4],
            RecordOutcome::Failed {
                retryable: true,
                ..
            }
        ),
        "{:?}",
        out[4]
    );

    // Store errors keep the store's verdict.
    for retryable in [true, false] {
        let mut probe = Probe::new();
        probe.fail_gets = Some(retryable);
        let w = worker(Arc::new(probe), config());
        let out = run(&w, &[record("s", job("photos/cat.jpg@10w"))]).await;
        assert!(
            matches!(&out[0], RecordOutcome::Failed { retryable: r, kind: "store", .. } if *r == retryable),
            "{out:?}"
        );
    }
}

#[tokio::test]
async fn an_original_over_the_limits_is_permanent() {
    let store = setup().await;
    let mut cfg = config();
    cfg.limits.max_bytes = 100;
    let w = worker(store.clone(), cfg);
    let out = run(&w, &[record("big", job("photos/cat.jpg@10w"))]).await;
    assert!(is_permanent(&out[0], "over-limits"), "{out:?}");
    let mut cfg = config();
    cfg.limits.max_pixels = 1000;
    let w = worker(store.clone(), cfg);
    let out = run(&w, &[record("big", job("photos/cat.jpg@10w"))]).await;
    assert!(is_permanent(&out[0], "over-limits"), "{out:?}");
}

#[tokio::test]
async fn no_render_starts_when_the_deadline_is_too_close() {
    let store = setup().await;
    let mut cfg = config();
    cfg.time_reserve = Duration::from_secs(5);
    let w = worker(store.clone(), cfg);
    let records = [
        record("a", job("photos/cat.jpg@10w")),
        record("b", job("photos/cat.jpg@20w")),
    ];
    let response_ids = |outs: &[RecordOutcome]| {
        outs.iter()
            .filter(|o| {
                matches!(
                    o,
                    RecordOutcome::Failed {
                        kind: "not-started",
                        retryable: true,
                        ..
                    }
                )
            })
            .count()
    };
    let out = w
        .run(
            &records,
            Some(Instant::now() + Duration::from_secs(3)),
            &AtomicBool::new(false),
        )
        .await;
    assert_eq!(response_ids(&out), 2, "{out:?}");
    assert_eq!(store.gets.load(Ordering::SeqCst), 0);
    assert_eq!(store.heads.load(Ordering::SeqCst), 0);
    // With time to spare both run.
    let out = w
        .run(
            &records,
            Some(Instant::now() + Duration::from_secs(60)),
            &AtomicBool::new(false),
        )
        .await;
    assert!(out.iter().all(RecordOutcome::is_done), "{out:?}");
}

#[tokio::test]
async fn the_deadline_accounts_for_the_longest_render_so_far() {
    // One slot, renders of ~300 ms, 1 s left and a 500 ms reserve: the first render starts
    // (1 s > 0.5 s), then ~0.7 s remain < 0.5 s + 0.3 s, so the second does not.
    let mut probe = Probe::new();
    probe.get_delay = Duration::from_millis(300);
    let store = Arc::new(probe);
    put_original(&store, "photos/cat.jpg", jpeg(64, 48)).await;
    let mut cfg = config();
    cfg.concurrency = 1;
    cfg.time_reserve = Duration::from_millis(500);
    let w = worker(store.clone(), cfg);
    let out = w
        .run(
            &[
                record("a", job("photos/cat.jpg@10w")),
                record("b", job("photos/cat.jpg@20w")),
            ],
            Some(Instant::now() + Duration::from_secs(1)),
            &AtomicBool::new(false),
        )
        .await;
    assert!(out[0].is_done(), "{out:?}");
    assert!(
        matches!(
            &out[1],
            RecordOutcome::Failed {
                kind: "not-started",
                ..
            }
        ),
        "{out:?}"
    );
}

#[tokio::test]
async fn parallelism_is_bounded_by_cores_and_by_memory() {
    let mut probe = Probe::new();
    probe.put_delay = Duration::from_millis(150);
    let store = Arc::new(probe);
    put_original(&store, "photos/cat.jpg", jpeg(64, 48)).await;
    let records: Vec<Record> = (1..=6)
        .map(|w| record(&format!("r{w}"), job(&format!("photos/cat.jpg@{w}0w"))))
        .collect();
    let mut cfg = config();
    cfg.concurrency = 3;
    let w = worker(store.clone(), cfg);
    let out = run(&w, &records).await;
    assert!(out.iter().all(RecordOutcome::is_done));
    let max = store.max_in_flight.load(Ordering::SeqCst);
    assert!((2..=3).contains(&max), "max in flight {max}");

    // A memory budget that one render fills: one at a time despite 3 slots.
    store.max_in_flight.store(0, Ordering::SeqCst);
    let mut cfg = config();
    cfg.concurrency = 3;
    cfg.memory_budget_mib = 1;
    let w = worker(store.clone(), cfg);
    let records: Vec<Record> = (1..=4)
        .map(|w| record(&format!("s{w}"), job(&format!("photos/cat.jpg@{w}1w"))))
        .collect();
    let out = run(&w, &records).await;
    assert!(out.iter().all(RecordOutcome::is_done));
    assert_eq!(store.max_in_flight.load(Ordering::SeqCst), 1);
}

#[test]
fn memory_weight_is_the_estimate_in_mib_within_the_budget() {
    assert_eq!(batch::memory_weight_mib(100 * 1024 * 1024, 64), 64);
    assert_eq!(batch::memory_weight_mib(1, 64), 1);
    assert_eq!(batch::memory_weight_mib(0, 64), 1);
    assert_eq!(batch::memory_weight_mib(24 * 1024 * 1024, 1000), 24);
    assert_eq!(batch::memory_weight_mib(u64::MAX, 1000), 1000);
}

#[test]
fn memory_estimate_adds_the_metric_only_when_the_quality_is_searched() {
    let pinned: crate::Params = "400w_80q.jpg".parse().unwrap();
    let searched: crate::Params = "400w.jpg".parse().unwrap();
    let mib = 1024 * 1024;
    assert_eq!(
        process::memory_estimate(mib, &pinned),
        MEMORY_PER_SOURCE_BYTE * mib
    );
    assert_eq!(
        process::memory_estimate(mib, &searched),
        MEMORY_PER_SOURCE_BYTE * mib + tuning::MAX_SCORING_BYTES
    );
    assert_eq!(process::memory_estimate(u64::MAX, &searched), u64::MAX);
}

#[tokio::test]
async fn the_runner_drains_acks_and_keeps_failures() {
    let store = setup().await;
    let queue = Arc::new(MemoryQueue::new("q"));
    for key in [
        "photos/cat.jpg@10w",
        "photos/cat.jpg@20w",
        "photos/cat.jpg@30w.webp",
    ] {
        queue.send(&job(key)).await.unwrap();
    }
    queue.send("poison").await.unwrap();
    let options = RunnerOptions {
        once: true,
        wait: Duration::from_millis(50),
        visibility: Duration::from_secs(30),
        max_messages: 2,
    };
    let runner = Runner::new(queue.clone(), worker(store.clone(), config()), options);
    let summary = runner.run(std::future::pending()).await.unwrap();
    assert_eq!(
        summary,
        RunSummary {
            received: 4,
            done: 3,
            failed: 1,
            released: 0
        }
    );
    assert_eq!(queue.bodies(), vec!["poison".to_string()]);
    for key in [
        "photos/cat.jpg@10w",
        "photos/cat.jpg@20w",
        "photos/cat.jpg@30w.webp",
    ] {
        assert!(store.inner.head(key).await.unwrap().is_some(), "{key}");
    }
}

#[tokio::test]
async fn the_runner_extends_visibility_of_long_jobs() {
    let mut probe = Probe::new();
    probe.get_delay = Duration::from_millis(900);
    let store = Arc::new(probe);
    put_original(&store, "photos/cat.jpg", jpeg(64, 48)).await;
    let queue = Arc::new(MemoryQueue::new("q"));
    queue.send(&job("photos/cat.jpg@10w")).await.unwrap();
    let options = RunnerOptions {
        once: true,
        wait: Duration::from_millis(10),
        visibility: Duration::from_millis(300),
        max_messages: 10,
    };
    let runner = Runner::new(queue.clone(), worker(store.clone(), config()), options);
    let spy = async {
        // Well past the 300 ms visibility: without renewal the message would be back.
        tokio::time::sleep(Duration::from_millis(600)).await;
        queue
            .receive(10, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap()
    };
    let (summary, stolen) = tokio::join!(runner.run(std::future::pending()), spy);
    assert!(stolen.is_empty(), "redelivered while being worked on");
    assert_eq!(summary.unwrap().done, 1);
    assert!(queue.is_empty());
}

#[tokio::test]
async fn on_shutdown_in_flight_renders_finish_and_the_rest_is_released() {
    let mut probe = Probe::new();
    probe.get_delay = Duration::from_millis(300);
    let store = Arc::new(probe);
    put_original(&store, "photos/cat.jpg", jpeg(64, 48)).await;
    let queue = Arc::new(MemoryQueue::new("q"));
    for w in [10, 20, 30] {
        queue
            .send(&job(&format!("photos/cat.jpg@{w}w")))
            .await
            .unwrap();
    }
    let mut cfg = config();
    cfg.concurrency = 1;
    let options = RunnerOptions {
        once: false,
        wait: Duration::from_millis(10),
        visibility: Duration::from_secs(30),
        max_messages: 10,
    };
    let runner = Runner::new(queue.clone(), worker(store.clone(), cfg), options);
    let shutdown = tokio::time::sleep(Duration::from_millis(100));
    let summary = runner.run(shutdown).await.unwrap();
    assert_eq!(summary.done, 1, "{summary:?}");
    assert_eq!(summary.released, 2, "{summary:?}");
    // The finished one was acked; the others are back on the queue, visible right away.
    assert_eq!(queue.len(), 2);
    let back = queue
        .receive(10, Duration::ZERO, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!(store.puts.load(Ordering::SeqCst), 1);
}

/// The source's fault is permanent (the DLQ keeps it after `maxReceiveCount`); memory, a
/// caught bug and a deadline are not, so SQS redelivers them.
#[test]
fn failures_not_of_the_sources_making_are_retried() {
    use crate::pipeline::PipelineError;
    let retry = |e: PipelineError| {
        let failure = RenderFailure::Pipeline(e);
        (failure.is_retryable(), failure.kind())
    };
    assert_eq!(
        retry(PipelineError::OutOfMemory {
            what: "JPEG",
            bytes: 1 << 40
        }),
        (true, "out-of-memory")
    );
    assert_eq!(
        retry(PipelineError::Internal("panic: index out of bounds".into())),
        (true, "internal")
    );
    assert_eq!(
        retry(PipelineError::DeadlineExceeded {
            step: "load",
            elapsed: Duration::from_secs(2),
            limit: Duration::from_secs(1),
        }),
        (true, "deadline")
    );
    assert_eq!(
        retry(PipelineError::Corrupt {
            format: "JPEG",
            reason: "bad Huffman code".into()
        }),
        (false, "undecodable")
    );
    assert_eq!(
        retry(PipelineError::TooManyPixels {
            width: 1,
            height: 1,
            pixels: 1,
            limit: 0
        }),
        (false, "over-limits")
    );
}

/// Every record is one EMF line CloudWatch accepts: written (with quality, bytes, time),
/// current, and failures by outcome and reason (permanent ones counted towards the DLQ).
#[tokio::test]
async fn every_record_emits_valid_metrics() {
    use crate::metrics::{EmfRecorder, validate_emf};
    let store = setup().await;
    put_original(&store, "photos/random.jpg", vec![0xFF, 0xD8, 1, 2, 3, 4, 5]).await;
    let recorder = Arc::new(EmfRecorder::default());
    let w = worker(store.clone(), config()).with_metrics(recorder.clone());
    let mut again = record("again", job("photos/cat.jpg@80w.webp"));
    again.receive_count = 3;
    let records = vec![
        record("good", job("photos/cat.jpg@80w.webp")),
        record("poison", "{not json".into()),
        record("corrupt", job("photos/random.jpg@80w")),
    ];
    let out = run(&w, &records).await;
    assert!(out[0].is_done());
    // The same variant again: already current.
    let out = run(&w, &[again]).await;
    assert!(out[0].is_done());
    let lines = recorder.lines();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| {
            validate_emf(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            serde_json::from_str(l).unwrap()
        })
        .collect();
    let by_outcome = |outcome: &str| {
        parsed
            .iter()
            .find(|p| p["Outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {outcome} line in {lines:#?}"))
    };
    let written = by_outcome("written");
    assert_eq!(written["Format"], "webp");
    assert!(written["ChosenQuality"].as_f64().unwrap() > 0.0);
    assert!(written["OutputBytes"].as_f64().unwrap() > 0.0);
    let permanent: Vec<_> = parsed
        .iter()
        .filter(|p| p["Outcome"] == "permanent-failure")
        .collect();
    assert_eq!(permanent.len(), 2);
    assert!(permanent.iter().all(|p| p["TowardsDeadLetter"] == 1.0));
    let reasons: Vec<&str> = permanent
        .iter()
        .map(|p| p["Reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.contains(&"invalid-job") && reasons.contains(&"undecodable"),
        "{reasons:?}"
    );
    let current = by_outcome("current");
    assert_eq!(current["Redeliveries"], 1.0);
}
