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

use edgethumb::store::ObjectStore;
use edgethumb::store::fs::FsStore;

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

fn image_size(bytes: &[u8]) -> (u32, u32) {
    let image = image::load_from_memory(bytes).expect("decodable image");
    (image.width(), image.height())
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
