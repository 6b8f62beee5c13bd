//! The edge handler over every sample event in `events/`, with in-memory adapters.
//! (The S3/SQS path is tested end to end through the packaged addon under node.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)] // test code

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use edgethumb::edge::cloudfront::{Event, Response};
use edgethumb::edge::{BucketLocation, EdgeConfig, EdgeHandler, EdgeOutcome};
use edgethumb::job::{Job, JobReason};
use edgethumb::queue::memory::MemoryQueue;
use edgethumb::store::memory::MemoryStore;
use edgethumb::store::{ListPage, ObjectInfo, ObjectStore, PutRequest, StoreError};

type StoreFactory = Box<dyn Fn(&BucketLocation) -> Arc<dyn ObjectStore> + Send + Sync>;
type Handler = EdgeHandler<Arc<MemoryQueue>, StoreFactory>;

struct Rig {
    handler: Handler,
    queue: Arc<MemoryQueue>,
    store: Arc<MemoryStore>,
    locations: Arc<Mutex<Vec<BucketLocation>>>,
}

fn config(extra: &str) -> EdgeConfig {
    let text = format!(r#"{{"queue_url": "memory://jobs", "queue_region": "us-east-1"{extra}}}"#);
    EdgeConfig::from_json(&text, "test").unwrap()
}

fn rig_with(config: EdgeConfig, queue: MemoryQueue) -> Rig {
    let queue = Arc::new(queue);
    let store = Arc::new(MemoryStore::new("photos-bucket"));
    let locations = Arc::new(Mutex::new(Vec::new()));
    let (s, l) = (store.clone(), locations.clone());
    let stores: StoreFactory = Box::new(move |loc: &BucketLocation| {
        l.lock().unwrap().push(loc.clone());
        s.clone() as Arc<dyn ObjectStore>
    });
    Rig {
        handler: EdgeHandler::new(config, queue.clone(), stores),
        queue,
        store,
        locations,
    }
}

fn new_rig() -> Rig {
    rig_with(config(""), MemoryQueue::new("jobs"))
}

fn event(name: &str) -> Event {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("events")
        .join(format!("origin-response-{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// A smooth RGB test photo as JPEG.
fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let mut rgb = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            rgb.extend_from_slice(&[
                (x * 255 / width) as u8,
                (y * 255 / height) as u8,
                ((x + y) % 256) as u8,
            ]);
        }
    }
    encode_jpeg(&rgb, width, height, 90)
}

fn noise_jpeg(width: u32, height: u32) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let rgb: Vec<u8> = (0..width * height * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect();
    encode_jpeg(&rgb, width, height, 85)
}

fn encode_jpeg(rgb: &[u8], width: u32, height: u32, quality: u8) -> Vec<u8> {
    let img = image::RgbImage::from_raw(width, height, rgb.to_vec()).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(&img)
        .unwrap();
    out.into_inner()
}

async fn put(store: &MemoryStore, key: &str, body: Vec<u8>) {
    store
        .put(
            key,
            body.into(),
            PutRequest {
                content_type: "image/jpeg".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

fn generated(outcome: EdgeOutcome) -> Response {
    match outcome {
        EdgeOutcome::Generated { response, .. } => response,
        EdgeOutcome::PassThrough => panic!("expected a generated response"),
    }
}

fn header<'a>(r: &'a Response, name: &str) -> &'a str {
    &r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))[0]
        .value
}

fn body(r: &Response) -> Vec<u8> {
    assert_eq!(r.body_encoding.as_deref(), Some("base64"));
    base64::engine::general_purpose::STANDARD
        .decode(r.body.as_ref().unwrap())
        .unwrap()
}

fn jobs(queue: &Arc<MemoryQueue>) -> Vec<Job> {
    queue
        .bodies()
        .iter()
        .map(|b| Job::parse(b).unwrap())
        .collect()
}

#[tokio::test]
async fn hits_and_non_variants_pass_through_without_a_job() {
    let rig = new_rig();
    put(&rig.store, "photos/cat.jpg", jpeg(64, 48)).await;
    for name in ["hit-200", "not-modified-304", "no-variant"] {
        assert_eq!(
            rig.handler.handle(&event(name)).await,
            EdgeOutcome::PassThrough,
            "{name}"
        );
    }
    assert!(rig.queue.is_empty());
    assert!(
        rig.locations.lock().unwrap().is_empty(),
        "no S3 access on a pass-through"
    );
}

#[tokio::test]
async fn handle_json_returns_none_for_pass_through() {
    let rig = new_rig();
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("events/origin-response-hit-200.json"),
    )
    .unwrap();
    assert_eq!(rig.handler.handle_json(&text).await.unwrap(), None);
    assert!(rig.handler.handle_json("{not json").await.is_err());
}

#[tokio::test]
async fn misses_as_403_and_404_render_and_enqueue() {
    for name in ["miss-403", "miss-404"] {
        let rig = new_rig();
        put(&rig.store, "photos/cat.jpg", jpeg(640, 480)).await;
        let r = generated(rig.handler.handle(&event(name)).await);
        assert_eq!(r.status, "200", "{name}");
        assert_eq!(header(&r, "content-type"), "image/webp");
        assert!(header(&r, "cache-control").contains("max-age="));
        assert!(header(&r, "etag").starts_with('"'));
        assert!(httpdate::parse_http_date(header(&r, "last-modified")).is_ok());
        assert!(!r.headers.contains_key("content-encoding"));
        let timing = header(&r, "server-timing");
        assert!(timing.contains("render;dur="), "{timing}");
        assert!(
            !timing.contains("total;dur=0.0"),
            "total is filled in: {timing}"
        );
        let img = image::load_from_memory(&body(&r)).unwrap();
        // 200w_200h_1e on 640x480: cover → 267x200.
        assert_eq!((img.width(), img.height()), (267, 200));
        let jobs = jobs(&rig.queue);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].bucket, "photos-bucket");
        assert_eq!(jobs[0].original_key, "photos/cat.jpg");
        assert_eq!(jobs[0].variant_key, "photos/cat.jpg@200w_200h_1e_80q.webp");
        assert_eq!(jobs[0].reason, JobReason::Miss);
        assert!(jobs[0].original_etag.is_some());
    }
}

/// `.avif` misses answer AVIF up to `avif_max_pixels` output pixels and the provisional
/// copy as WebP above it (same provisional Cache-Control); the job names the `.avif` key
/// either way, so the worker writes the AVIF.
#[tokio::test]
async fn avif_misses_answer_avif_or_webp_above_the_edge_limit() {
    let rig = rig_with(
        config(r#", "avif_max_pixels": 40000"#),
        MemoryQueue::new("jobs"),
    );
    put(&rig.store, "cat.jpg", jpeg(640, 480)).await;
    let small = generated(rig.handler.handle(&miss_for("/cat.jpg@200w.avif")).await);
    assert_eq!(small.status, "200");
    assert_eq!(header(&small, "content-type"), "image/avif");
    let bytes = body(&small);
    assert_eq!(&bytes[4..12], b"ftypavif");
    let decoded = edgethumb::pipeline::decode_output(&bytes).unwrap();
    assert_eq!((decoded.width, decoded.height), (200, 150));
    // 240×180 = 43,200 pixels: over the limit.
    let big = generated(rig.handler.handle(&miss_for("/cat.jpg@240w.avif")).await);
    assert_eq!(big.status, "200");
    assert_eq!(header(&big, "content-type"), "image/webp");
    assert_eq!(
        header(&big, "cache-control"),
        header(&small, "cache-control"),
        "both are provisional"
    );
    let img = image::load_from_memory(&body(&big)).unwrap();
    assert_eq!((img.width(), img.height()), (240, 180));
    let keys: Vec<String> = jobs(&rig.queue)
        .into_iter()
        .map(|j| j.variant_key)
        .collect();
    assert_eq!(keys, ["cat.jpg@200w.avif", "cat.jpg@240w.avif"]);
}

#[tokio::test]
async fn domain_forms_pick_bucket_region_and_key() {
    let cases = [
        (
            "regional-domain",
            "photos-bucket",
            Some("us-west-2"),
            "image/jpeg",
            (400, 300),
        ),
        (
            "path-style-domain",
            "photos-bucket",
            None,
            "image/jpeg",
            (1024, 768),
        ),
        (
            "legacy-domain",
            "photos-bucket",
            Some("eu-west-1"),
            "image/png",
            (267, 200),
        ),
    ];
    for (name, bucket, region, content_type, size) in cases {
        let rig = new_rig();
        put(&rig.store, "photos/cat.jpg", jpeg(640, 480)).await;
        let r = generated(rig.handler.handle(&event(name)).await);
        assert_eq!(r.status, "200", "{name}: {:?}", r.body);
        assert_eq!(header(&r, "content-type"), content_type, "{name}");
        let img = image::load_from_memory(&body(&r)).unwrap();
        assert_eq!((img.width(), img.height()), size, "{name}");
        let loc = rig.locations.lock().unwrap()[0].clone();
        assert_eq!(loc.bucket, bucket, "{name}");
        assert_eq!(loc.region.as_deref(), region, "{name}");
        assert_eq!(jobs(&rig.queue).len(), 1, "{name}");
    }
}

#[tokio::test]
async fn bucket_region_from_config_when_the_domain_has_none() {
    let rig = rig_with(
        config(r#", "bucket_region": "sa-east-1""#),
        MemoryQueue::new("q"),
    );
    put(&rig.store, "photos/cat.jpg", jpeg(64, 48)).await;
    generated(rig.handler.handle(&event("path-style-domain")).await);
    assert_eq!(
        rig.locations.lock().unwrap()[0].region.as_deref(),
        Some("sa-east-1")
    );
}

#[tokio::test]
async fn percent_encoded_utf8_keys_are_decoded() {
    let rig = new_rig();
    let key = "photos/summer 2026/café & crêpe.jpg";
    put(&rig.store, key, jpeg(600, 400)).await;
    let r = generated(rig.handler.handle(&event("percent-encoded")).await);
    assert_eq!(r.status, "200", "{:?}", r.body);
    let img = image::load_from_memory(&body(&r)).unwrap();
    assert_eq!((img.width(), img.height()), (300, 300), "1e_1c crops");
    assert_eq!(jobs(&rig.queue)[0].original_key, key);
}

#[tokio::test]
async fn invalid_params_answer_400_naming_the_token() {
    let rig = new_rig();
    put(&rig.store, "photos/cat.jpg", jpeg(64, 48)).await;
    let r = generated(rig.handler.handle(&event("invalid-params")).await);
    assert_eq!(r.status, "400");
    assert!(r.body.as_ref().unwrap().contains("9999h"), "{:?}", r.body);
    assert!(header(&r, "cache-control").contains("max-age"));
    assert!(header(&r, "content-type").starts_with("text/plain"));
    assert!(rig.queue.is_empty());
}

#[tokio::test]
async fn missing_original_is_404_without_a_job() {
    let rig = new_rig();
    let r = generated(rig.handler.handle(&event("miss-404")).await);
    assert_eq!(r.status, "404");
    assert!(rig.queue.is_empty());
}

#[tokio::test]
async fn undecodable_and_oversized_sources() {
    let rig = new_rig();
    let mut truncated = jpeg(640, 480);
    truncated.truncate(truncated.len() / 3);
    put(&rig.store, "photos/cat.jpg", truncated).await;
    let r = generated(rig.handler.handle(&event("miss-404")).await);
    assert_eq!(r.status, "422", "{:?}", r.body);

    let rig = new_rig();
    put(&rig.store, "photos/cat.jpg", b"plain text".to_vec()).await;
    let r = generated(rig.handler.handle(&event("miss-404")).await);
    assert_eq!(r.status, "415");

    let rig = rig_with(
        config(r#", "max_source_bytes": 1000"#),
        MemoryQueue::new("q"),
    );
    put(&rig.store, "photos/cat.jpg", jpeg(640, 480)).await;
    let r = generated(rig.handler.handle(&event("miss-404")).await);
    assert_eq!(r.status, "413");

    let rig = rig_with(
        config(r#", "max_source_pixels": 1000"#),
        MemoryQueue::new("q"),
    );
    put(&rig.store, "photos/cat.jpg", jpeg(640, 480)).await;
    let r = generated(rig.handler.handle(&event("miss-404")).await);
    assert_eq!(r.status, "413");
}

#[tokio::test]
async fn a_failing_queue_still_serves_the_image() {
    let rig = rig_with(config(""), MemoryQueue::new("q").with_max_message_bytes(10));
    put(&rig.store, "photos/cat.jpg", jpeg(640, 480)).await;
    let r = generated(rig.handler.handle(&event("miss-404")).await);
    assert_eq!(r.status, "200");
    assert!(rig.queue.is_empty());
}

/// A store whose reads of the original fail the way S3 does under faults; everything else
/// is a memory store.
struct FailingReads {
    inner: MemoryStore,
    retryable: bool,
}

#[async_trait::async_trait]
impl ObjectStore for FailingReads {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
    async fn get(
        &self,
        key: &str,
        _max_bytes: u64,
    ) -> Result<Option<edgethumb::store::Object>, StoreError> {
        Err(StoreError::Backend {
            operation: "GetObject",
            bucket: "photos-bucket".into(),
            key: key.into(),
            retryable: self.retryable,
            message: "reading body: connection reset".into(),
        })
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        self.inner.head(key).await
    }
    async fn put(
        &self,
        key: &str,
        body: bytes::Bytes,
        request: PutRequest,
    ) -> Result<ObjectInfo, StoreError> {
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

/// Regression (issue 18 chaos run): a throttled, failed or cut GetObject of the original was
/// answered 502 with the error cache policy and no Retry-After, so CloudFront cached a
/// transient failure. It must be a 503 with Retry-After and no-store; a failure that
/// retrying cannot fix stays a 502. No job is sent: the original was never read.
#[tokio::test]
async fn an_original_that_cannot_be_read_now_is_a_503_with_retry_after() {
    for (retryable, status) in [(true, "503"), (false, "502")] {
        let queue = Arc::new(MemoryQueue::new("q"));
        let store: Arc<dyn ObjectStore> = Arc::new(FailingReads {
            inner: MemoryStore::new("photos-bucket"),
            retryable,
        });
        let stores: StoreFactory = Box::new(move |_: &BucketLocation| store.clone());
        let handler: Handler = EdgeHandler::new(config(""), queue.clone(), stores);
        let r = generated(handler.handle(&event("miss-404")).await);
        assert_eq!(r.status, status, "retryable {retryable}: {:?}", r.body);
        if retryable {
            assert_eq!(header(&r, "retry-after"), "5");
            assert_eq!(header(&r, "cache-control"), "no-store");
        } else {
            assert!(!r.headers.contains_key("retry-after"));
        }
        assert!(queue.is_empty());
    }
}

fn miss_for(uri: &str) -> Event {
    let mut e = event("miss-404");
    e.records[0].cf.request.uri = uri.to_string();
    e
}

#[tokio::test]
async fn large_outputs_never_exceed_the_budget() {
    let budget = 200_000usize;
    let rig = rig_with(
        config(&format!(r#", "response_budget_bytes": {budget}"#)),
        MemoryQueue::new("q"),
    );
    put(&rig.store, "noise.jpg", noise_jpeg(4096, 4096)).await;
    put(&rig.store, "small-noise.jpg", noise_jpeg(512, 512)).await;
    let mut statuses = Vec::new();
    for uri in [
        "/noise.jpg@100p.png",
        "/noise.jpg@4096w_95q.jpg",
        "/noise.jpg@2048w.webp",
        "/small-noise.jpg@100p.png",
        "/small-noise.jpg@100p_100q.avif",
        "/small-noise.jpg@100p_100q.jpg",
    ] {
        let r = generated(rig.handler.handle(&miss_for(uri)).await);
        assert!(
            r.serialized_len() <= budget,
            "{uri}: {} bytes over the budget",
            r.serialized_len()
        );
        if r.status == "503" {
            assert_eq!(header(&r, "cache-control"), "no-store");
            assert!(r.headers.contains_key("retry-after"));
        } else {
            assert_eq!(r.status, "200", "{uri}: {:?}", r.body);
            // Dimensions are preserved whatever the fallback.
            let img = edgethumb::pipeline::decode_output(&body(&r)).unwrap();
            assert!(img.width == 512 || img.width >= 2048, "{uri}");
        }
        statuses.push(r.status.clone());
    }
    assert_eq!(statuses[0], "503", "4096² noise cannot fit 200 kB");
    assert_eq!(statuses[3], "200", "512² noise fits once re-encoded");
    assert_eq!(
        statuses[4], "200",
        "512² noise as AVIF fits once re-encoded"
    );
    assert_eq!(rig.queue.len(), 6, "every miss enqueues, fitted or not");
}

/// A render past its deadline is a 503 with `Retry-After` and no-store (never a cut-off by
/// CloudFront), it still enqueues the job, and the time it spent is reported.
#[tokio::test]
async fn a_render_past_its_deadline_is_a_503_that_reports_its_time() {
    let mut config = config("");
    // Below the configurable minimum (1000 ms) on purpose: every render overruns it.
    config.render_deadline_ms = 0;
    let rig = rig_with(config, MemoryQueue::new("q"));
    put(&rig.store, "big.jpg", jpeg(1600, 1200)).await;
    let outcome = rig.handler.handle(&miss_for("/big.jpg@1024w.png")).await;
    let EdgeOutcome::Generated { response, timings } = outcome else {
        panic!("expected a generated response");
    };
    assert_eq!(response.status, "503", "{:?}", response.body);
    assert_eq!(header(&response, "cache-control"), "no-store");
    assert!(response.headers.contains_key("retry-after"));
    let text = response.body.clone().unwrap_or_default();
    assert!(text.contains("deadline"), "{text}");
    assert!(timings.render > std::time::Duration::ZERO, "{timings:?}");
    assert_eq!(rig.queue.len(), 1, "the worker still gets the job");
}

/// Every miss is one EMF line that CloudWatch accepts, with the status class, the format
/// and what happened; a registry (as `serve` uses) counts the same.
#[tokio::test]
async fn every_miss_emits_valid_metrics() {
    use edgethumb::metrics::{self, EmfRecorder, MetricsSink, Registry, validate_emf};
    let recorder = Arc::new(EmfRecorder::default());
    let registry = Arc::new(Registry::new());
    struct Both(Arc<EmfRecorder>, Arc<Registry>);
    impl MetricsSink for Both {
        fn record(&self, o: &metrics::Observation) {
            self.0.record(o);
            self.1.record(o);
        }
    }
    let budget = 200_000usize;
    let queue = MemoryQueue::new("q").with_max_message_bytes(10); // every enqueue fails
    let mut rig = rig_with(
        config(&format!(r#", "response_budget_bytes": {budget}"#)),
        queue,
    );
    rig.handler = rig
        .handler
        .with_metrics(Arc::new(Both(recorder.clone(), registry.clone())));
    put(&rig.store, "photos/cat.jpg", jpeg(640, 480)).await;
    put(&rig.store, "noise.jpg", noise_jpeg(2048, 2048)).await;
    for (uri, status) in [
        ("/photos/cat.jpg@200w.webp", "200"),
        ("/photos/cat.jpg@200x", "400"),
        ("/photos/nope.jpg@200w", "404"),
        ("/noise.jpg@100p.png", "503"),
    ] {
        let r = generated(rig.handler.handle(&miss_for(uri)).await);
        assert_eq!(r.status, status, "{uri}");
    }
    // A hit is not a miss: no line.
    assert_eq!(
        rig.handler.handle(&event("hit-200")).await,
        EdgeOutcome::PassThrough
    );
    let lines = recorder.lines();
    assert_eq!(lines.len(), 4);
    for line in &lines {
        validate_emf(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["StatusClass"], "2xx");
    assert_eq!(first["Format"], "webp");
    assert_eq!(first["EnqueueFailures"], 1.0);
    assert!(first["OutputBytes"].as_f64().unwrap() > 0.0);
    let over: serde_json::Value = serde_json::from_str(&lines[3]).unwrap();
    assert_eq!(over["OverBudget"], 1.0);
    assert_eq!(over["StatusClass"], "5xx");
    let count = |class: &str, format: &str| {
        registry.value(
            &metrics::EDGE_MISSES,
            &[("StatusClass", class), ("Format", format)],
        )
    };
    assert_eq!(count("2xx", "webp"), 1.0);
    assert_eq!(count("4xx", "none"), 2.0);
    assert_eq!(count("5xx", "none"), 1.0);
}
