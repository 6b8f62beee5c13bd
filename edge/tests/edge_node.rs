//! The packaged Lambda@Edge bundle, end to end: real `node` imports the unzipped edge.zip
//! (index.mjs + edgethumb.node built with zig for glibc 2.17) with an edgethumb.json that
//! points at moto, and handles CloudFront events against moto's S3 and SQS.
//!
//! The bundle takes minutes to build, so these tests are `#[ignore]`d in the plain
//! `cargo test` run and run by `scripts/test_edge.sh` (a step of `scripts/test.sh`), which
//! packages, unzips and sets `EDGETHUMB_EDGE_BUNDLE`; moto comes from
//! `EDGETHUMB_TEST_ENDPOINT`. Both missing is a failure, not a skip.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)] // test code

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine as _;
use edgethumb::job::{Job, JobReason};
use edgethumb_aws::AwsSettings;
use serde_json::{Value, json};

const REGION: &str = "us-east-1";

/// The repository root (this crate is `edge/`).
fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn required_env(name: &str, hint: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("{name} is not set: {hint}"))
}

fn bundle() -> PathBuf {
    PathBuf::from(required_env(
        "EDGETHUMB_EDGE_BUNDLE",
        "run scripts/test_edge.sh (it packages edge.zip and unzips it)",
    ))
}

fn endpoint() -> String {
    required_env(
        "EDGETHUMB_TEST_ENDPOINT",
        "run through scripts/test.sh, which starts moto_server",
    )
}

fn settings() -> AwsSettings {
    AwsSettings::new(REGION)
        .with_endpoint(endpoint())
        .with_static_credentials("test", "test")
}

/// A copy of the bundle with our own edgethumb.json (the packaged one is left alone).
fn bundle_with_config(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["index.mjs", "edgethumb.node"] {
        std::fs::copy(bundle().join(name), dir.path().join(name)).unwrap();
    }
    std::fs::write(dir.path().join("edgethumb.json"), config).unwrap();
    dir
}

/// Import index.mjs in a fresh node and run `handler` over each event; the results are
/// written as one JSON array to `results.json` beside it (stdout carries the handler's
/// logs). The environment is what Lambda gives a function: credentials and region only.
fn run_node(dir: &Path, events: &[Value]) -> Output {
    const DRIVER: &str = r#"
        import { writeFileSync } from 'node:fs';
        const chunks = [];
        for await (const c of process.stdin) chunks.push(c);
        const events = JSON.parse(Buffer.concat(chunks).toString());
        const { handler } = await import(process.argv[1]);
        const out = [];
        for (const e of events) out.push(await handler(e));
        writeFileSync(process.argv[2], JSON.stringify(out));
    "#;
    let _ = std::fs::remove_file(dir.join("results.json"));
    let mut child = Command::new("node")
        .args(["--input-type=module", "-e", DRIVER])
        .arg(dir.join("index.mjs"))
        .arg(dir.join("results.json"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node must be on PATH");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(events).unwrap().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The handler's results, and its log lines (each must be a JSON object).
fn handle_all(dir: &Path, events: &[Value]) -> (Vec<Value>, Vec<Value>) {
    let out = run_node(dir, events);
    assert!(
        out.status.success(),
        "node failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let results = serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap())
        .expect("results.json is a JSON array");
    let logs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"))
        })
        .collect();
    (results, logs)
}

fn logged(logs: &[Value], event: &str) -> usize {
    logs.iter().filter(|l| l["event"] == event).count()
}

/// A fresh bucket and queue in moto, and an edgethumb.json pointing at them.
struct Moto {
    bucket: String,
    queue_url: String,
    s3: aws_sdk_s3::Client,
    sqs: aws_sdk_sqs::Client,
}

impl Moto {
    async fn new(name: &str) -> Moto {
        let (s3, sqs) = settings().clients().await;
        let bucket = format!("edge-e2e-{name}-{}", std::process::id());
        s3.create_bucket().bucket(&bucket).send().await.unwrap();
        let queue_url = sqs
            .create_queue()
            .queue_name(&bucket)
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        Moto {
            bucket,
            queue_url,
            s3,
            sqs,
        }
    }

    fn config(&self) -> String {
        json!({
            "queue_url": self.queue_url,
            "queue_region": REGION,
            "bucket_region": REGION,
            "endpoint_url": endpoint(),
            "provisional_cache_control": "public, max-age=60",
        })
        .to_string()
    }

    async fn put(&self, key: &str, body: Vec<u8>) {
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("image/jpeg")
            .body(body.into())
            .send()
            .await
            .unwrap();
    }

    async fn jobs(&self) -> Vec<Job> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        received
            .messages()
            .iter()
            .map(|m| Job::parse(m.body().unwrap()).unwrap())
            .collect()
    }

    /// A sample event aimed at our bucket.
    fn event(&self, name: &str, uri: Option<&str>) -> Value {
        let path = root().join(format!("events/origin-response-{name}.json"));
        let mut event: Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let request = &mut event["Records"][0]["cf"]["request"];
        request["origin"]["s3"]["domainName"] = json!(format!("{}.s3.amazonaws.com", self.bucket));
        request["origin"]["s3"]["region"] = json!(REGION);
        if let Some(uri) = uri {
            request["uri"] = json!(uri);
        }
        event
    }
}

/// A 640×480 gradient photo as JPEG.
fn jpeg_640x480() -> Vec<u8> {
    let img = image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([
            (x * 255 / 640) as u8,
            (y * 255 / 480) as u8,
            ((x ^ y) & 0xff) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .unwrap();
    out.into_inner()
}

fn header<'a>(response: &'a Value, name: &str) -> &'a str {
    response["headers"][name][0]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} header in {response}"))
}

#[tokio::test]
#[ignore = "needs the packaged bundle and moto: scripts/test_edge.sh"]
async fn miss_is_rendered_by_the_addon_under_node_and_a_job_lands_on_sqs() {
    let moto = Moto::new("miss").await;
    moto.put("photos/cat.jpg", jpeg_640x480()).await;
    let dir = bundle_with_config(&moto.config());

    let (results, logs) = handle_all(
        dir.path(),
        &[
            moto.event("miss-404", Some("/photos/cat.jpg@320w.webp")),
            moto.event("miss-403", Some("/photos/cat.jpg@100w_100h_2e.jpg")),
            moto.event("miss-404", Some("/photos/cat.jpg@200w.avif")),
        ],
    );

    let webp = &results[0];
    assert_eq!(webp["status"], "200", "{webp}");
    assert_eq!(webp["bodyEncoding"], "base64");
    assert_eq!(header(webp, "content-type"), "image/webp");
    assert_eq!(header(webp, "cache-control"), "public, max-age=60");
    let body = base64::engine::general_purpose::STANDARD
        .decode(webp["body"].as_str().unwrap())
        .unwrap();
    let decoded = image::load_from_memory_with_format(&body, image::ImageFormat::WebP).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (320, 240));
    assert!(webp["headers"].get("content-encoding").is_none());

    let jpeg = &results[1];
    assert_eq!(jpeg["status"], "200", "{jpeg}");
    assert_eq!(header(jpeg, "content-type"), "image/jpeg");
    let body = base64::engine::general_purpose::STANDARD
        .decode(jpeg["body"].as_str().unwrap())
        .unwrap();
    let decoded = image::load_from_memory_with_format(&body, image::ImageFormat::Jpeg).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (100, 100));

    // AVIF from the zig-built libaom inside the addon.
    let avif = &results[2];
    assert_eq!(avif["status"], "200", "{avif}");
    assert_eq!(header(avif, "content-type"), "image/avif");
    let body = base64::engine::general_purpose::STANDARD
        .decode(avif["body"].as_str().unwrap())
        .unwrap();
    let decoded = edgethumb::pipeline::decode_output(&body).unwrap();
    assert_eq!((decoded.width, decoded.height), (200, 150));

    assert_eq!(logged(&logs, "edge.miss"), 3, "{logs:?}");
    assert_eq!(logged(&logs, "edge.enqueue_failed"), 0, "{logs:?}");

    let mut jobs = moto.jobs().await;
    jobs.sort_by(|a, b| a.variant_key.cmp(&b.variant_key));
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    for job in &jobs {
        assert_eq!(job.bucket, moto.bucket);
        assert_eq!(job.original_key, "photos/cat.jpg");
        assert_eq!(job.reason, JobReason::Miss);
        assert!(job.original_etag.is_some(), "{job:?}");
    }
    assert_eq!(jobs[0].variant_key, "photos/cat.jpg@100w_100h_2e.jpg");
    assert_eq!(jobs[1].variant_key, "photos/cat.jpg@200w.avif");
    assert_eq!(jobs[2].variant_key, "photos/cat.jpg@320w.webp");
}

#[tokio::test]
#[ignore = "needs the packaged bundle and moto: scripts/test_edge.sh"]
async fn hits_and_real_404s_pass_through_deep_equal_without_a_job() {
    let moto = Moto::new("hit").await;
    moto.put("photos/cat.jpg", jpeg_640x480()).await;
    let dir = bundle_with_config(&moto.config());
    let events = [
        moto.event("hit-200", None),
        moto.event("not-modified-304", None),
        moto.event("no-variant", None),
    ];
    let (results, logs) = handle_all(dir.path(), &events);
    assert_eq!(logged(&logs, "edge.miss"), 0, "{logs:?}");
    for (event, result) in events.iter().zip(&results) {
        assert_eq!(result, &event["Records"][0]["cf"]["response"]);
    }
    assert!(moto.jobs().await.is_empty());
}

#[tokio::test]
#[ignore = "needs the packaged bundle and moto: scripts/test_edge.sh"]
async fn missing_original_and_bad_params_are_http_errors_not_crashes() {
    let moto = Moto::new("errors").await;
    let dir = bundle_with_config(&moto.config());
    let (results, logs) = handle_all(
        dir.path(),
        &[
            moto.event("miss-404", Some("/photos/none.jpg@320w.webp")),
            moto.event("invalid-params", None),
        ],
    );
    assert_eq!(results[0]["status"], "404", "{}", results[0]);
    assert_eq!(results[1]["status"], "400", "{}", results[1]);
    for r in &results {
        assert_eq!(header(r, "cache-control"), "public, max-age=10");
    }
    assert_eq!(logged(&logs, "edge.miss_failed"), 2, "{logs:?}");
}

#[test]
#[ignore = "needs the packaged bundle: scripts/test_edge.sh"]
fn a_bad_config_fails_the_import_with_a_clear_message() {
    let event = json!({"Records": []});
    for (config, needle) in [
        (
            r#"{"queue_url": "https://q", "queue_region": "us-east-1", "queue_ulr": "typo"}"#,
            "queue_ulr",
        ),
        (r#"{"queue_region": "us-east-1"}"#, "queue_url"),
        ("{ not json", "edgethumb.json"),
    ] {
        let dir = bundle_with_config(config);
        let out = run_node(dir.path(), std::slice::from_ref(&event));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{config} was accepted");
        assert!(stderr.contains("edgethumb"), "{stderr}");
        assert!(stderr.contains(needle), "{config}: {stderr}");
    }
    let dir = bundle_with_config("{}");
    std::fs::remove_file(dir.path().join("edgethumb.json")).unwrap();
    let out = run_node(dir.path(), &[event]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot read edge config"), "{stderr}");
}

fn elf_glibc(file: &Path) -> Output {
    Command::new("python3")
        .arg(root().join("scripts/elf_glibc.py"))
        .args(["--max", "2.17"])
        .arg(file)
        .output()
        .expect("python3 must be on PATH")
}

#[test]
#[ignore = "needs the packaged bundle: scripts/test_edge.sh"]
fn the_packaged_addon_needs_no_glibc_newer_than_2_17() {
    let out = elf_glibc(&bundle().join("edgethumb.node"));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("GLIBC_2."));
}

/// The check can fail: this test binary is linked against the build host's glibc.
#[test]
fn the_glibc_check_refuses_a_host_build() {
    let out = elf_glibc(&std::env::current_exe().unwrap());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("needs glibc newer than 2.17"), "{stderr}");
    assert!(stderr.contains("GLIBC_2."), "{stderr}");
}
