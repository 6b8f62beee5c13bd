//! End to end: the real `edgethumb serve` binary on a temporary folder and a free port.
//!
//! - a miss is rendered by the edge handler (`x-edgethumb: miss`, right size, Server-Timing);
//! - the in-process worker writes the canonical variant into the folder (tagged
//!   `createByLambda=1`, with metadata), waited for with a bound;
//! - the next request is a hit with an ETag, and `If-None-Match` gets 304;
//! - errors answer as the edge would, hostile paths are refused, SIGTERM exits cleanly;
//! - a job enqueued while no worker runs stays in the local queue and is done by the next
//!   start;
//! - the page works in headless Chromium (`tests/browser/`, skipped with a message when
//!   Chromium or the npm packages are missing, unless `EDGETHUMB_BROWSER_TEST=required`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)] // test code

#[path = "../../aws/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use edgethumb::store::fs::FsStore;
use edgethumb::store::{ObjectInfo, ObjectStore};

const BIN: &str = env!("CARGO_BIN_EXE_edgethumb");
/// Bounds for waits on another process; generous for a loaded 2-core CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const WORKER_TIMEOUT: Duration = Duration::from_secs(120);

/// A running `serve`, stopped (SIGTERM, then kill) when dropped.
struct Serve {
    child: Child,
    base: String,
}

impl Serve {
    fn start(dir: &Path, extra: &[&str]) -> Serve {
        Serve::start_with(&[dir.as_os_str()], extra)
    }

    fn start_with(positional: &[&std::ffi::OsStr], extra: &[&str]) -> Serve {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(positional)
            .args(["--addr", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn edgethumb serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.split("listening on ").nth(1) {
                    let _ = tx.send(url.trim().trim_end_matches('/').to_string());
                }
            }
        });
        let base = match rx.recv_timeout(START_TIMEOUT) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                panic!("serve printed no URL within {START_TIMEOUT:?}");
            }
        };
        Serve { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    /// SIGTERM and wait (bounded); the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("serve did not exit within 45 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = agent().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .expect("body");
    Reply {
        status,
        headers,
        body,
    }
}

/// The status line of a raw request, for paths an HTTP client would normalise.
fn raw_status(addr: &str, target: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status for {target:.60}: {text:.200}"))
}

/// Width and height of a JPEG, PNG, WebP or (through libavif) AVIF body.
fn image_size(bytes: &[u8]) -> (u32, u32) {
    let image = edgethumb::pipeline::decode_output(bytes).expect("decodable image");
    (image.width, image.height)
}

/// An 800×600 photo-like original (smooth gradients plus texture).
fn write_original(path: &Path) {
    let image = image::RgbImage::from_fn(800, 600, |x, y| {
        let texture = ((x * 7 + y * 13) % 17) as u8;
        image::Rgb([
            (x * 255 / 800) as u8,
            (y * 255 / 600) as u8,
            128u8.wrapping_add(texture),
        ])
    });
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    image.save(path).expect("write original");
}

fn temp_folder() -> (tempfile::TempDir, PathBuf) {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().join("originals");
    std::fs::create_dir_all(&dir).expect("mkdir");
    (temp, dir)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Wait (bounded) until the worker's variant is in the store, and return its metadata and
/// tags, read through the filesystem adapter as the next request will.
fn wait_for_variant(
    dir: &Path,
    key: &str,
) -> (
    edgethumb::store::ObjectInfo,
    std::collections::BTreeMap<String, String>,
) {
    let rt = runtime();
    let store = rt.block_on(FsStore::open(dir)).expect("open store");
    let deadline = Instant::now() + WORKER_TIMEOUT;
    loop {
        if let Some(info) = rt.block_on(store.head(key)).expect("head") {
            let tags = rt
                .block_on(store.tags(key))
                .expect("tags")
                .expect("tags of an existing object");
            return (info, tags);
        }
        assert!(
            Instant::now() < deadline,
            "the worker wrote no {key} within {WORKER_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn miss_then_worker_variant_then_hit_and_304() {
    let (_temp, dir) = temp_folder();
    write_original(&dir.join("photos/cat.png"));
    let mut serve = Serve::start(&dir, &[]);

    // Miss: rendered by the edge handler.
    let miss = get(&serve.url("/photos/cat.png@200w.webp"), &[]);
    assert_eq!(miss.status, 200, "{}", String::from_utf8_lossy(&miss.body));
    assert_eq!(miss.header("x-edgethumb"), Some("miss"));
    assert_eq!(miss.header("content-type"), Some("image/webp"));
    let timing = miss.header("server-timing").unwrap_or_default();
    for step in ["fetch;dur=", "render;dur=", "enqueue;dur=", "total;dur="] {
        assert!(
            timing.contains(step),
            "Server-Timing {timing:?} lacks {step}"
        );
    }
    assert_eq!(image_size(&miss.body), (200, 150));

    // The worker writes the canonical variant, tagged, with metadata.
    let (info, tags) = wait_for_variant(&dir, "photos/cat.png@200w.webp");
    assert!(dir.join("photos/cat.png@200w.webp").is_file());
    assert_eq!(tags.get("createByLambda").map(String::as_str), Some("1"));
    assert_eq!(info.content_type.as_deref(), Some("image/webp"));
    assert!(
        !info.metadata.is_empty(),
        "the worker's variant has no user metadata"
    );
    let etag = info.etag.clone().expect("stored ETag");

    // Hit: served from the store as S3 would, with the worker's long cache-control.
    let hit = get(&serve.url("/photos/cat.png@200w.webp"), &[]);
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-edgethumb"), Some("hit"));
    assert_eq!(hit.header("etag"), Some(etag.as_str()));
    assert_eq!(hit.header("content-type"), Some("image/webp"));
    assert!(hit.header("last-modified").is_some());
    assert_eq!(hit.header("cache-control"), info.cache_control.as_deref());
    assert!(hit.header("server-timing").is_some());
    assert_eq!(image_size(&hit.body), (200, 150));

    let not_modified = get(
        &serve.url("/photos/cat.png@200w.webp"),
        &[("if-none-match", &etag)],
    );
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some(etag.as_str()));
    let changed = get(
        &serve.url("/photos/cat.png@200w.webp"),
        &[("if-none-match", "\"something-else\"")],
    );
    assert_eq!(changed.status, 200);

    // The original, the page and its JSON.
    let original = get(&serve.url("/photos/cat.png"), &[]);
    assert_eq!(original.status, 200);
    assert_eq!(original.header("content-type"), Some("image/png"));
    assert_eq!(image_size(&original.body), (800, 600));
    let page = get(&serve.url("/"), &[]);
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("edgethumb serve"));
    let list = get(&serve.url("/_edgethumb/originals"), &[]);
    let json: serde_json::Value = serde_json::from_slice(&list.body).expect("JSON");
    let keys: Vec<&str> = json["originals"]
        .as_array()
        .expect("originals")
        .iter()
        .filter_map(|o| o["key"].as_str())
        .collect();
    assert_eq!(
        keys,
        ["photos/cat.png"],
        "variants and state are not listed"
    );

    // Errors as the edge answers them.
    let bad = get(&serve.url("/photos/cat.png@200x.webp"), &[]);
    assert_eq!(bad.status, 400);
    assert!(String::from_utf8_lossy(&bad.body).contains("200x"));
    assert_eq!(
        get(&serve.url("/photos/missing.png@200w.webp"), &[]).status,
        404
    );
    assert_eq!(get(&serve.url("/photos/missing.png"), &[]).status, 404);
    std::fs::write(dir.join("photos/notes.txt"), b"not an image").expect("write");
    let unsupported = get(&serve.url("/photos/notes.txt@100w.jpg"), &[]);
    assert!(
        matches!(unsupported.status, 415 | 422),
        "{}",
        unsupported.status
    );

    // Hostile paths are refused cleanly, and the server keeps serving.
    let addr = serve.addr();
    for target in [
        "/../../etc/passwd",
        "/photos/../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd@100w.jpg",
        "/photos/cat.png%00.jpg",
        "/.edgethumb/queue",
    ] {
        let status = raw_status(&addr, target);
        assert!(matches!(status, 400 | 404), "{target}: {status}");
    }
    let huge = format!("/{}@100w.jpg", "a".repeat(20_000));
    assert!(matches!(raw_status(&addr, &huge), 400 | 414));
    assert_eq!(raw_status(&addr, "/photos/cat.png"), 200);

    let status = serve.stop();
    assert!(status.success(), "serve exited with {status} after SIGTERM");
}

#[test]
fn a_job_left_in_the_queue_is_done_by_the_next_start() {
    let (_temp, dir) = temp_folder();
    write_original(&dir.join("dog.png"));
    {
        let mut serve = Serve::start(&dir, &["--no-worker"]);
        let miss = get(&serve.url("/dog.png@120w.jpg"), &[]);
        assert_eq!(miss.status, 200);
        assert_eq!(miss.header("x-edgethumb"), Some("miss"));
        assert!(serve.stop().success());
    }
    assert!(!dir.join("dog.png@120w.jpg").exists());
    let spool = runtime()
        .block_on(edgethumb::queue::local::LocalQueue::open(
            dir.join(".edgethumb/queue"),
        ))
        .expect("open the spool");
    let (ready, in_flight) = runtime().block_on(spool.counts()).expect("counts");
    assert_eq!(
        ready + in_flight,
        1,
        "the miss's job is not in .edgethumb/queue"
    );

    let mut serve = Serve::start(&dir, &[]);
    let (info, tags) = wait_for_variant(&dir, "dog.png@120w.jpg");
    assert_eq!(tags.get("createByLambda").map(String::as_str), Some("1"));
    assert_eq!(info.content_type.as_deref(), Some("image/jpeg"));
    let hit = get(&serve.url("/dog.png@120w.jpg"), &[]);
    assert_eq!(hit.header("x-edgethumb"), Some("hit"));
    assert_eq!(image_size(&hit.body), (120, 90));
    assert!(serve.stop().success());
}

/// The same flow with `--bucket/--queue-url/--endpoint-url` against moto's S3 and SQS.
#[test]
fn serve_against_s3_and_sqs_on_moto() {
    let test = "serve_e2e::serve_against_s3_and_sqs_on_moto";
    let Some(endpoint) = common::moto_endpoint(test) else {
        return;
    };
    let rt = runtime();
    let (Some(store), Some(queue)) = rt.block_on(async {
        (
            common::moto_store(test).await,
            common::moto_queue(test).await,
        )
    }) else {
        return;
    };
    let temp = tempfile::tempdir().expect("tempdir");
    let png = temp.path().join("cat.png");
    write_original(&png);
    let body = bytes::Bytes::from(std::fs::read(&png).expect("read"));
    let request = edgethumb::store::PutRequest {
        content_type: "image/png".into(),
        ..Default::default()
    };
    rt.block_on(store.put("photos/cat.png", body, request))
        .expect("put original");
    let mut serve = Serve::start_with(
        &[],
        &[
            "--bucket",
            store.bucket(),
            "--queue-url",
            queue.queue_url(),
            "--endpoint-url",
            &endpoint,
            "--region",
            "us-east-1",
        ],
    );
    let miss = get(&serve.url("/photos/cat.png@100w_100h_1e_1c.jpg"), &[]);
    assert_eq!(miss.status, 200, "{}", String::from_utf8_lossy(&miss.body));
    assert_eq!(miss.header("x-edgethumb"), Some("miss"));
    assert_eq!(image_size(&miss.body), (100, 100));

    let key = "photos/cat.png@100w_100h_1e_1c.jpg";
    let deadline = Instant::now() + WORKER_TIMEOUT;
    let info = loop {
        if let Some(info) = rt.block_on(store.head(key)).expect("head") {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "no variant in S3 within {WORKER_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let tags = rt.block_on(store.tags(key)).expect("tags").expect("exists");
    assert_eq!(tags.get("createByLambda").map(String::as_str), Some("1"));
    assert!(!info.metadata.is_empty());
    let etag = info.etag.expect("etag");
    let hit = get(&serve.url("/photos/cat.png@100w_100h_1e_1c.jpg"), &[]);
    assert_eq!(hit.header("x-edgethumb"), Some("hit"));
    assert_eq!(hit.header("etag"), Some(etag.as_str()));
    assert_eq!(image_size(&hit.body), (100, 100));
    let not_modified = get(
        &serve.url("/photos/cat.png@100w_100h_1e_1c.jpg"),
        &[("if-none-match", &etag)],
    );
    assert_eq!(not_modified.status, 304);
    assert!(serve.stop().success());
}

#[test]
fn browser_page_shows_thumbnails() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let required = std::env::var("EDGETHUMB_BROWSER_TEST").is_ok_and(|v| v == "required");
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing = if !node_ok {
        Some("node is not installed".to_string())
    } else if !Path::new(&chromium).exists() {
        Some(format!("{chromium} is missing (apt-get install chromium)"))
    } else if !browser_dir.join("node_modules/playwright-core").is_dir() {
        Some("tests/browser/node_modules is missing (npm ci in tests/browser)".to_string())
    } else {
        None
    };
    if let Some(reason) = missing {
        assert!(!required, "browser test required but {reason}");
        eprintln!("SKIPPED browser_page_shows_thumbnails: {reason}; scripts/test.sh installs it");
        return;
    }
    let mut child = Command::new("node")
        .arg("page.test.mjs")
        .current_dir(&browser_dir)
        .env("EDGETHUMB_BIN", BIN)
        .env("CHROMIUM", &chromium)
        .spawn()
        .expect("spawn node");
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("browser test took over 300 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "browser test failed: {status}");
}

// ------------------------------------------------------------ viewer-request rules (issue 14)

/// Chrome's `Accept` for images (docs/edge.md, `.auto` table) and curl's.
const CHROME_ACCEPT: &str = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8";
/// Safari 16 takes WebP but not AVIF.
const SAFARI16_ACCEPT: &str =
    "image/webp,image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5";
const CURL_ACCEPT: &str = "*/*";
/// A signing secret for the tests (16+ bytes, as the settings require).
const SECRET: &str = "test-secret-0123456789abcdef";

/// The jobs waiting in a serve folder's spool (`ready/` and `inflight/`), parsed.
fn spooled_jobs(dir: &Path) -> Vec<serde_json::Value> {
    let mut jobs = Vec::new();
    for sub in ["ready", "inflight"] {
        let Ok(entries) = std::fs::read_dir(dir.join(".edgethumb/queue").join(sub)) else {
            continue;
        };
        for entry in entries {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("read job");
            jobs.push(serde_json::from_slice(&bytes).expect("job JSON"));
        }
    }
    jobs
}

/// File names in a folder, sorted (hidden ones left out).
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

fn write_settings(dir: &Path, json: &str) -> PathBuf {
    let path = dir.join("viewer-settings.json");
    std::fs::write(&path, json).expect("write settings");
    path
}

/// `edgethumb sign ARGS...`: stdout lines, stderr, success.
fn sign(args: &[&str]) -> (Vec<String>, String, bool) {
    let output = Command::new(BIN)
        .arg("sign")
        .args(args)
        .output()
        .expect("run edgethumb sign");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 stdout");
    (
        stdout.lines().map(str::to_string).collect(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        output.status.success(),
    )
}

/// Replace the signature of a signed URL with another valid-looking one.
fn tamper_signature(url: &str) -> String {
    let (head, signature) = url.rsplit_once("&s=").expect("a signed URL");
    let mut bytes = signature.as_bytes().to_vec();
    bytes[0] = if bytes[0] == b'A' { b'B' } else { b'A' };
    format!("{head}&s={}", String::from_utf8(bytes).expect("ASCII"))
}

fn assert_viewer_reject(reply: &Reply, status: u16, message: &str) {
    assert_eq!(
        reply.status,
        status,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(String::from_utf8_lossy(&reply.body), message);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(reply.header("x-edgethumb"), Some("viewer-reject"));
}

#[test]
fn every_spelling_is_one_job_and_one_stored_variant() {
    let (_temp, dir) = temp_folder();
    write_original(&dir.join("photos/cat.png"));
    let canonical = "photos/cat.png@200w_80q.webp";

    // Without a worker the job stays in the spool: it names the canonical key, not the
    // spelling asked for (the worker writes the job's key).
    {
        let mut serve = Serve::start(&dir, &["--no-worker"]);
        let miss = get(&serve.url("/photos/cat.png@80q_200w_0e.WEBP?utm=1"), &[]);
        assert_eq!(miss.status, 200, "{}", String::from_utf8_lossy(&miss.body));
        assert_eq!(miss.header("x-edgethumb"), Some("miss"));
        assert_eq!(miss.header("content-type"), Some("image/webp"));
        assert_eq!(image_size(&miss.body), (200, 150));
        assert!(serve.stop().success());
    }
    let jobs = spooled_jobs(&dir);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["variant_key"], canonical);
    assert_eq!(jobs[0]["params"], "200w_80q.webp");

    // The worker does that one job; every other spelling is then a hit on its variant and
    // enqueues nothing.
    let mut serve = Serve::start(&dir, &[]);
    let (info, _tags) = wait_for_variant(&dir, canonical);
    let etag = info.etag.expect("stored ETag");
    for spelling in [
        "/photos/cat.png@200w_80q.webp",
        "/photos/cat.png@0200w_80q_100p.webp",
        "/photos/c%61t.png%40200w_80q.WebP",
        "/photos/cat.png@80q_200w.webp?k=x&s=y",
    ] {
        let hit = get(&serve.url(spelling), &[]);
        assert_eq!(hit.status, 200, "{spelling}");
        assert_eq!(hit.header("x-edgethumb"), Some("hit"), "{spelling}");
        assert_eq!(hit.header("etag"), Some(etag.as_str()), "{spelling}");
    }
    assert!(serve.stop().success());
    assert!(spooled_jobs(&dir).is_empty(), "a spelling enqueued a job");
    assert_eq!(
        names_in(&dir.join("photos")),
        ["cat.png", "cat.png@200w_80q.webp"],
        "one stored variant for every spelling"
    );
}

#[test]
fn auto_follows_the_browsers_accept_header() {
    let (_temp, dir) = temp_folder();
    write_original(&dir.join("cat.png"));
    write_original(&dir.join("dog.jpg"));
    let mut serve = Serve::start(&dir, &["--no-worker"]);
    for (path, accept, content_type) in [
        ("/cat.png@160w.auto", CHROME_ACCEPT, "image/avif"),
        ("/cat.png@160w.AUTO", CURL_ACCEPT, "image/png"),
        ("/dog.jpg@160w.auto", CHROME_ACCEPT, "image/avif"),
        ("/dog.jpg@160w.auto", SAFARI16_ACCEPT, "image/webp"),
        ("/dog.jpg@160w.auto", CURL_ACCEPT, "image/jpeg"),
    ] {
        let reply = get(&serve.url(path), &[("accept", accept)]);
        assert_eq!(reply.status, 200, "{path} {accept}");
        assert_eq!(
            reply.header("content-type"),
            Some(content_type),
            "{path} with Accept {accept}"
        );
        assert_eq!(image_size(&reply.body), (160, 120));
    }
    assert!(serve.stop().success());
    let mut keys: Vec<String> = spooled_jobs(&dir)
        .iter()
        .map(|job| job["variant_key"].as_str().expect("key").to_string())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "cat.png@160w.avif",
            "cat.png@160w.png",
            "dog.jpg@160w.avif",
            "dog.jpg@160w.jpg",
            "dog.jpg@160w.webp"
        ],
        ".auto never reaches the store"
    );
}

#[test]
fn signed_guard_and_edgethumb_sign() {
    let (temp, dir) = temp_folder();
    write_original(&dir.join("photos/cat.png"));
    let settings = write_settings(
        temp.path(),
        &format!(r#"{{"guard":"signed","key:2026a":"{SECRET}","key:2026b":"{SECRET}-new"}}"#),
    );
    let settings_arg = settings.to_str().expect("UTF-8 path");

    // `sign`: canonical path, the key id asked for; refuses what it cannot sign.
    let (urls, stderr, ok) = sign(&[
        "--settings",
        settings_arg,
        "--key-id",
        "2026b",
        "http://img.example.com/photos/cat.png@0200w.AUTO?old=1",
        "/photos/cat.png@120w_80q.webp",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(urls.len(), 2);
    assert!(
        urls[0].starts_with("http://img.example.com/photos/cat.png@200w.auto?k=2026b&s="),
        "{}",
        urls[0]
    );
    assert!(urls[1].starts_with("/photos/cat.png@120w_80q.webp?k=2026b&s="));
    let (_, stderr, ok) = sign(&["--settings", settings_arg, "/photos/cat.png@1w"]);
    assert!(!ok && stderr.contains("2026a, 2026b"), "{stderr}");
    let (_, stderr, ok) = sign(&[
        "--settings",
        settings_arg,
        "--key-id",
        "2026a",
        "/photos/cat.png@200x",
    ]);
    assert!(!ok && stderr.contains("200x"), "{stderr}");

    let mut serve = Serve::start(&dir, &["--no-worker", "--viewer-settings", settings_arg]);
    let path = urls[0].trim_start_matches("http://img.example.com");
    let good = get(&serve.url(path), &[("accept", CHROME_ACCEPT)]);
    assert_eq!(good.status, 200, "{}", String::from_utf8_lossy(&good.body));
    assert_eq!(good.header("content-type"), Some("image/avif"));
    assert_eq!(image_size(&good.body), (200, 150));
    // The same signature covers every spelling of the variant.
    let query = path.split_once('?').expect("query").1;
    let respelled = get(
        &serve.url(&format!("/photos/cat.png@200w_0e.auto?{query}")),
        &[("accept", CURL_ACCEPT)],
    );
    assert_eq!(respelled.status, 200);
    assert_eq!(respelled.header("content-type"), Some("image/png"));

    assert_viewer_reject(
        &get(&serve.url(&tamper_signature(path)), &[]),
        403,
        "bad signature",
    );
    assert_viewer_reject(
        &get(
            &serve.url(&format!("/photos/cat.png@201w.auto?{query}")),
            &[],
        ),
        403,
        "bad signature",
    );
    assert_viewer_reject(
        &get(&serve.url("/photos/cat.png@200w.auto"), &[]),
        403,
        "missing signature (k= and s= query parameters)",
    );
    assert_viewer_reject(
        &get(&serve.url(&path.replace("k=2026b", "k=2025z")), &[]),
        403,
        "unknown signing key id",
    );
    // A malformed key is a 400 even without a signature; originals need none.
    let bad = get(&serve.url("/photos/cat.png@200x"), &[]);
    assert_eq!(bad.status, 400);
    assert!(String::from_utf8_lossy(&bad.body).contains("200x"));
    assert_eq!(get(&serve.url("/photos/cat.png"), &[]).status, 200);

    // The page's own variants come signed by serve, and they are accepted.
    let list = get(&serve.url("/_edgethumb/originals"), &[]);
    let json: serde_json::Value = serde_json::from_slice(&list.body).expect("JSON");
    assert_eq!(json["guard"], "signed");
    let original = &json["originals"][0];
    let grid = json["grid"].as_array().expect("grid");
    assert!(!grid.is_empty());
    for params in grid.iter().take(2).chain([&json["list_thumb"]]) {
        let params = params.as_str().expect("params");
        let url = original["urls"][params]
            .as_str()
            .expect("a signed page URL");
        assert!(url.contains("?k=2026b&s="), "{url}");
        let reply = get(&serve.url(url), &[]);
        assert_eq!(
            reply.status,
            200,
            "{url}: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    assert!(serve.stop().success());
}

#[test]
fn list_guard_allows_presets_and_listed_parameters_only() {
    let (temp, dir) = temp_folder();
    write_original(&dir.join("cat.png"));
    let settings = write_settings(
        temp.path(),
        r#"{"guard":"list","preset:thumb":"120h_120w_1c_1e.webp","allow:400w.webp":"1","allow:300w.auto":"1"}"#,
    );
    let mut serve = Serve::start(
        &dir,
        &[
            "--no-worker",
            "--viewer-settings",
            settings.to_str().expect("UTF-8 path"),
        ],
    );
    let thumb = get(&serve.url("/cat.png@thumb"), &[]);
    assert_eq!(
        thumb.status,
        200,
        "{}",
        String::from_utf8_lossy(&thumb.body)
    );
    assert_eq!(thumb.header("content-type"), Some("image/webp"));
    assert_eq!(image_size(&thumb.body), (120, 120));
    let listed = get(&serve.url("/cat.png@0400w.WEBP"), &[]);
    assert_eq!(listed.status, 200);
    assert_eq!(image_size(&listed.body), (400, 300));
    let auto = get(
        &serve.url("/cat.png@300w.auto"),
        &[("accept", CHROME_ACCEPT)],
    );
    assert_eq!(auto.status, 200);
    assert_eq!(auto.header("content-type"), Some("image/avif"));
    assert_viewer_reject(
        &get(&serve.url("/cat.png@401w.webp"), &[]),
        403,
        "variant parameters \"401w.webp\" are not allowed",
    );
    // A preset's spelled-out form is not on the list.
    assert_eq!(
        get(&serve.url("/cat.png@120w_120h_1e_1c.webp"), &[]).status,
        403
    );
    assert_eq!(get(&serve.url("/cat.png@hero"), &[]).status, 400);
    assert_eq!(get(&serve.url("/cat.png"), &[]).status, 200);
    // The page shows the presets and the allow-list, and lists originals by themselves.
    let list = get(&serve.url("/_edgethumb/originals"), &[]);
    let json: serde_json::Value = serde_json::from_slice(&list.body).expect("JSON");
    assert_eq!(json["guard"], "list");
    assert_eq!(
        json["grid"],
        serde_json::json!(["thumb", "300w.auto", "400w.webp"])
    );
    assert!(json["list_thumb"].is_null());
    assert!(serve.stop().success());
    let mut keys: Vec<String> = spooled_jobs(&dir)
        .iter()
        .map(|job| job["variant_key"].as_str().expect("key").to_string())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "cat.png@120w_120h_1e_1c.webp",
            "cat.png@300w.avif",
            "cat.png@400w.webp"
        ]
    );
}

#[test]
fn bad_viewer_settings_stop_serve_at_start() {
    let (temp, dir) = temp_folder();
    let settings = write_settings(temp.path(), r#"{"guard":"signed","key:a":"short"}"#);
    let output = Command::new(BIN)
        .arg("serve")
        .arg(&dir)
        .args(["--addr", "127.0.0.1:0", "--viewer-settings"])
        .arg(&settings)
        .output()
        .expect("run serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("key:a"), "{stderr}");
}

/// URLs `edgethumb sign` prints pass the CloudFront Function (tests/viewer/harness.js, the
/// function in its CloudFront-like sandbox under node) with the same settings in its
/// KeyValueStore; tampered ones do not. `--kvs-import` is what the store is loaded from.
#[test]
fn signed_urls_round_trip_through_the_cloudfront_function() {
    let temp = tempfile::tempdir().expect("tempdir");
    let settings = write_settings(
        temp.path(),
        &format!(r#"{{"guard":"signed","key:k1":"{SECRET}"}}"#),
    );
    let settings_arg = settings.to_str().expect("UTF-8 path");
    let (import, stderr, ok) = sign(&["--settings", settings_arg, "--kvs-import"]);
    assert!(ok, "{stderr}");
    let import: serde_json::Value = serde_json::from_str(&import.join("\n")).expect("JSON");
    let mut kvs = serde_json::Map::new();
    for entry in import["data"].as_array().expect("data") {
        kvs.insert(
            entry["key"].as_str().expect("key").to_string(),
            entry["value"].clone(),
        );
    }
    assert_eq!(kvs.get("guard"), Some(&serde_json::json!("signed")));

    let inputs = [
        "/photos/cat.jpg@0200w.AUTO",
        "https://img.example.com/a%20b/%C3%A9t%C3%A9.png@80q_300w.webp",
        "/x@y/z.jpg@1r_640w.jpg",
    ];
    let mut args = vec!["--settings", settings_arg];
    args.extend(inputs);
    let (signed, stderr, ok) = sign(&args);
    assert!(ok, "{stderr}");
    assert_eq!(signed.len(), inputs.len());

    let mut lines = vec![serde_json::json!({ "kvs": kvs })];
    let mut expected = Vec::new();
    for url in &signed {
        let path = url.trim_start_matches("https://img.example.com");
        let (uri, query) = path.split_once('?').expect("signed query");
        lines.push(serde_json::json!({"uri": uri, "query": query, "accept": CURL_ACCEPT}));
        expected.push(200);
        let tampered = tamper_signature(path);
        let (uri, query) = tampered.split_once('?').expect("query");
        lines.push(serde_json::json!({"uri": uri, "query": query, "accept": CURL_ACCEPT}));
        expected.push(403);
        lines.push(serde_json::json!({"uri": uri, "query": "", "accept": CURL_ACCEPT}));
        expected.push(403);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut child = Command::new("node")
        .arg(root.join("tests/viewer/harness.js"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node must be on the PATH (Node.js >= 20)");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for line in &lines {
            writeln!(stdin, "{line}").expect("write to node");
        }
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read node");
    assert!(child.wait().expect("node exit").success(), "harness failed");
    let replies: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(replies[0]["ok"], true);
    let results = &replies[1..1 + expected.len()];
    for ((line, reply), status) in lines[1..].iter().zip(results).zip(&expected) {
        assert_eq!(reply["status"], *status, "{line} -> {reply}");
    }
    // The accepted ones are rewritten to the canonical key, `.auto` resolved.
    assert_eq!(results[0]["uri"], "/photos/cat.jpg@200w.jpg");
    assert_eq!(results[3]["uri"], "/a%20b/%C3%A9t%C3%A9.png@300w_80q.webp");
    assert_eq!(results[6]["uri"], "/x@y/z.jpg@640w_1r.jpg");
    assert_eq!(results[1]["message"], "bad signature");
}

/// The value of one sample line of a Prometheus text page (0 when absent).
fn sample(page: &str, name_and_labels: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// `/metrics` scrapes as Prometheus text and counts a miss, a hit and an error as what they
/// were (the edge handler's miss counters, the in-process worker's jobs, requests by kind).
#[test]
fn metrics_count_a_miss_a_hit_and_an_error() {
    let (_tmp, dir) = temp_folder();
    write_original(&dir.join("cat.jpg"));
    let serve = Serve::start(&dir, &[]);
    let before = get(&serve.url("/metrics"), &[]);
    assert_eq!(before.status, 200);
    assert!(
        before
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        before.header("content-type")
    );
    assert_eq!(get(&serve.url("/cat.jpg@64w.webp"), &[]).status, 200); // miss
    assert_eq!(get(&serve.url("/cat.jpg"), &[]).status, 200); // hit (the original)
    // Refused by the viewer-request rules before any render, as CloudFront's function would.
    assert_eq!(get(&serve.url("/cat.jpg@64x"), &[]).status, 400);
    assert_eq!(get(&serve.url("/nope.jpg@64w"), &[]).status, 404); // error: no original
    let page = String::from_utf8(get(&serve.url("/metrics"), &[]).body).unwrap();
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(series.starts_with("edgethumb_"), "{line}");
        value.parse::<f64>().unwrap_or_else(|_| panic!("{line}"));
    }
    assert_eq!(
        sample(&page, r#"edgethumb_serve_requests_total{kind="miss"}"#),
        1.0,
        "{page}"
    );
    assert_eq!(
        sample(&page, r#"edgethumb_serve_requests_total{kind="hit"}"#),
        1.0,
        "{page}"
    );
    assert_eq!(
        sample(&page, r#"edgethumb_serve_requests_total{kind="error"}"#),
        1.0,
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            r#"edgethumb_serve_requests_total{kind="viewer-reject"}"#
        ),
        1.0,
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            r#"edgethumb_edge_misses_total{format="webp",statusclass="2xx"}"#
        ),
        1.0,
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            r#"edgethumb_edge_misses_total{format="none",statusclass="4xx"}"#
        ),
        1.0,
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            r#"edgethumb_edge_miss_latency_ms_count{format="webp",statusclass="2xx"}"#
        ),
        1.0
    );
    // The in-process worker writes the canonical variant and counts it (bounded wait).
    let deadline = Instant::now() + WORKER_TIMEOUT;
    loop {
        let page = String::from_utf8(get(&serve.url("/metrics"), &[]).body).unwrap();
        if sample(
            &page,
            r#"edgethumb_worker_jobs_total{format="webp",outcome="written"}"#,
        ) == 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "no written job counted:\n{page}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A solid-colour `width`×`height` PNG.
fn write_solid(path: &Path, width: u32, height: u32, rgb: [u8; 3]) {
    image::RgbImage::from_pixel(width, height, image::Rgb(rgb))
        .save(path)
        .expect("write original");
}

/// The colour at the middle of an encoded image.
fn centre_pixel(bytes: &[u8]) -> [u8; 3] {
    let image = image::load_from_memory(bytes).expect("decodable").to_rgb8();
    image.get_pixel(image.width() / 2, image.height() / 2).0
}

/// Wait (bounded) until `check` holds for the stored variant's state.
fn wait_until(dir: &Path, key: &str, what: &str, check: impl Fn(Option<&ObjectInfo>) -> bool) {
    let rt = runtime();
    let store = rt.block_on(FsStore::open(dir)).expect("open store");
    let deadline = Instant::now() + WORKER_TIMEOUT;
    loop {
        let info = rt.block_on(store.head(key)).expect("head");
        if check(info.as_ref()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key}: {what} not reached within {WORKER_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn replacing_or_deleting_an_original_updates_its_thumbnails() {
    let (_temp, dir) = temp_folder();
    let original = dir.join("photos/cat.png");
    write_original(&original);
    let mut serve = Serve::start(&dir, &[]);
    let url = serve.url("/photos/cat.png@64w.png");
    assert_eq!(get(&url, &[]).status, 200);
    wait_for_variant(&dir, "photos/cat.png@64w.png");
    let hit = get(&url, &[]);
    assert_eq!(hit.header("x-edgethumb"), Some("hit"));
    assert_eq!(image_size(&hit.body), (64, 48));
    let old_etag = hit.header("etag").map(str::to_string);

    // Replaced by a red 400×100 picture: the very next request shows it.
    write_solid(&original, 400, 100, [250, 0, 0]);
    let new_etag = edgethumb::store::md5_etag(&std::fs::read(&original).expect("read"));
    let next = get(&url, &[]);
    assert_eq!(next.status, 200);
    assert_eq!(
        image_size(&next.body),
        (64, 16),
        "a thumbnail of the new picture"
    );
    let [r, g, b] = centre_pixel(&next.body);
    assert!(r > 200 && g < 40 && b < 40, "{:?}", [r, g, b]);
    // The folder's watcher and the worker rewrite the stored copy from the new original.
    wait_until(
        &dir,
        "photos/cat.png@64w.png",
        "the new original's ETag",
        |info| info.and_then(|i| i.metadata.get("original-etag")) == Some(&new_etag),
    );
    let hit = get(&url, &[]);
    assert_eq!(hit.header("x-edgethumb"), Some("hit"));
    assert_ne!(hit.header("etag").map(str::to_string), old_etag);
    assert_eq!(image_size(&hit.body), (64, 16));

    // Deleted: the next request is a 404 and the worker deletes the variant.
    std::fs::remove_file(&original).expect("delete original");
    assert_eq!(get(&url, &[]).status, 404);
    wait_until(&dir, "photos/cat.png@64w.png", "deletion", |info| {
        info.is_none()
    });

    let status = serve.stop();
    assert!(status.success(), "serve exited with {status} after SIGTERM");
}
