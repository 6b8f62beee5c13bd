//! The `ObjectStore` contract, written once and run against every adapter: S3 (on moto),
//! the filesystem and memory. Filesystem-only guarantees (path safety, restart durability,
//! crash atomicity) follow the contract.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)] // test code

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use edgethumb::store::fs::FsStore;
use edgethumb::store::memory::MemoryStore;
use edgethumb::store::{ObjectStore, PutRequest, StoreError, md5_etag};

const MAX: u64 = 64 * 1024 * 1024;

fn request(content_type: &str) -> PutRequest {
    PutRequest {
        content_type: content_type.to_string(),
        ..PutRequest::default()
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn round_trip(store: &impl ObjectStore) {
    let body = Bytes::from_static(b"\x89PNG not really a png \x00\xff");
    let put = PutRequest {
        content_type: "image/png".into(),
        cache_control: Some("public, max-age=31536000, immutable".into()),
        metadata: map(&[("edgethumb-version", "0.1.0"), ("Source-ETag", "\"abc\"")]),
        tags: map(&[("createByLambda", "1")]),
    };
    let before = SystemTime::now() - Duration::from_secs(5);
    let written = store
        .put("photos/cat.jpg@200w.png", body.clone(), put)
        .await
        .unwrap();
    assert_eq!(written.etag.as_deref(), Some(md5_etag(&body).as_str()));
    assert_eq!(written.size, body.len() as u64);

    let got = store
        .get("photos/cat.jpg@200w.png", MAX)
        .await
        .unwrap()
        .expect("object exists");
    assert_eq!(got.body, body);
    let info = got.info;
    assert_eq!(info.key, "photos/cat.jpg@200w.png");
    assert_eq!(info.size, body.len() as u64);
    assert_eq!(info.content_type.as_deref(), Some("image/png"));
    assert_eq!(
        info.cache_control.as_deref(),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(info.etag, written.etag);
    // User metadata comes back with lower-case keys, as S3 returns it.
    assert_eq!(
        info.metadata,
        map(&[("edgethumb-version", "0.1.0"), ("source-etag", "\"abc\"")])
    );
    let modified = info.last_modified.expect("last-modified");
    assert!(modified > before, "{modified:?}");

    let head = store
        .head("photos/cat.jpg@200w.png")
        .await
        .unwrap()
        .expect("head");
    assert_eq!(head, info);

    let tags = store.tags("photos/cat.jpg@200w.png").await.unwrap();
    assert_eq!(tags, Some(map(&[("createByLambda", "1")])));
}

async fn missing_keys(store: &impl ObjectStore) {
    assert!(store.get("nope/missing.jpg", MAX).await.unwrap().is_none());
    assert!(store.head("nope/missing.jpg").await.unwrap().is_none());
    assert!(store.tags("nope/missing.jpg").await.unwrap().is_none());
    store.delete("nope/missing.jpg").await.unwrap();
}

async fn overwrite_replaces_everything(store: &impl ObjectStore) {
    let first = PutRequest {
        content_type: "image/jpeg".into(),
        cache_control: Some("max-age=60".into()),
        metadata: map(&[("a", "1"), ("b", "2")]),
        tags: map(&[("createByLambda", "1"), ("x", "y")]),
    };
    store
        .put("k.jpg", Bytes::from_static(b"first"), first)
        .await
        .unwrap();
    let second = PutRequest {
        content_type: "image/webp".into(),
        cache_control: None,
        metadata: map(&[("c", "3")]),
        tags: BTreeMap::new(),
    };
    store
        .put("k.jpg", Bytes::from_static(b"second body"), second)
        .await
        .unwrap();
    let got = store.get("k.jpg", MAX).await.unwrap().unwrap();
    assert_eq!(&got.body[..], b"second body");
    assert_eq!(got.info.content_type.as_deref(), Some("image/webp"));
    assert_eq!(got.info.cache_control, None);
    assert_eq!(got.info.metadata, map(&[("c", "3")]));
    assert_eq!(
        got.info.etag.as_deref(),
        Some(md5_etag(b"second body").as_str())
    );
    assert_eq!(store.tags("k.jpg").await.unwrap(), Some(BTreeMap::new()));
}

async fn size_limit(store: &impl ObjectStore) {
    let body = Bytes::from(vec![7u8; 1000]);
    store
        .put("big.bin", body.clone(), request("application/octet-stream"))
        .await
        .unwrap();
    let err = store.get("big.bin", 999).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::TooLarge {
                size: 1000,
                limit: 999,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_retryable());
    let exact = store.get("big.bin", 1000).await.unwrap().unwrap();
    assert_eq!(exact.body, body);
}

async fn empty_and_unusual_keys(store: &impl ObjectStore) {
    store
        .put("empty.txt", Bytes::new(), request("text/plain"))
        .await
        .unwrap();
    let empty = store.get("empty.txt", MAX).await.unwrap().unwrap();
    assert!(empty.body.is_empty());
    assert_eq!(empty.info.etag.as_deref(), Some(md5_etag(b"").as_str()));

    // Keys as CloudFront hands them over after decoding: spaces, '+', '@', '%', non-ASCII.
    for key in [
        "photos/my cat+dog@2x.jpg@200w.webp",
        "ünïcødé/日本語.png",
        "percent%20literal.jpg",
        "a=b&c.jpg",
        ".hidden-but-valid.jpg",
    ] {
        let body = Bytes::from(key.as_bytes().to_vec());
        store
            .put(key, body.clone(), request("image/jpeg"))
            .await
            .unwrap();
        let got = store
            .get(key, MAX)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{key}"));
        assert_eq!(got.body, body, "{key}");
        assert_eq!(got.info.key, key);
    }
    let listed = list_all(store, "", 1000).await;
    assert!(
        listed.contains(&"ünïcødé/日本語.png".to_string()),
        "{listed:?}"
    );
}

async fn list_all(store: &impl ObjectStore, prefix: &str, page_size: u32) -> Vec<String> {
    let mut keys = Vec::new();
    let mut continuation = None;
    for _ in 0..1000 {
        let page = store
            .list_page(prefix, continuation.take(), page_size)
            .await
            .unwrap();
        assert!(page.objects.len() <= page_size as usize);
        keys.extend(page.objects.into_iter().map(|o| o.key));
        match page.continuation {
            Some(c) => continuation = Some(c),
            None => return keys,
        }
    }
    panic!("listing never ended");
}

async fn listing_pages(store: &impl ObjectStore) {
    // Byte order matters: '-' (0x2d) < '.' (0x2e) < '/' (0x2f) < '0' < 'a'.
    let inside = [
        "p/a-b.jpg",
        "p/a.b.jpg",
        "p/a/b.jpg",
        "p/a/c/d.jpg",
        "p/a0.jpg",
        "p/b.jpg",
        "p/z.jpg",
    ];
    let outside = ["q/a.jpg", "pa.jpg", "o.jpg"];
    for key in inside.iter().chain(outside.iter()).rev() {
        store
            .put(
                key,
                Bytes::from(key.as_bytes().to_vec()),
                request("image/jpeg"),
            )
            .await
            .unwrap();
    }
    let page = store.list_page("p/", None, 3).await.unwrap();
    assert_eq!(page.objects.len(), 3);
    assert!(page.continuation.is_some());
    let first = &page.objects[0];
    assert_eq!(first.key, "p/a-b.jpg");
    assert_eq!(first.size, "p/a-b.jpg".len() as u64);
    assert_eq!(first.etag.as_deref(), Some(md5_etag(b"p/a-b.jpg").as_str()));

    let mut expected: Vec<String> = inside.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(list_all(store, "p/", 3).await, expected);
    assert_eq!(list_all(store, "p/", 1).await, expected);
    assert_eq!(list_all(store, "p/", 1000).await, expected);
    assert_eq!(
        list_all(store, "p/a/", 2).await,
        vec!["p/a/b.jpg", "p/a/c/d.jpg"]
    );
    assert!(list_all(store, "nothing/", 10).await.is_empty());
    let all = list_all(store, "", 4).await;
    assert_eq!(all.len(), inside.len() + outside.len());
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
}

async fn delete_removes(store: &impl ObjectStore) {
    store
        .put("d/x.jpg", Bytes::from_static(b"x"), request("image/jpeg"))
        .await
        .unwrap();
    store
        .put("d/y.jpg", Bytes::from_static(b"y"), request("image/jpeg"))
        .await
        .unwrap();
    store.delete("d/x.jpg").await.unwrap();
    assert!(store.get("d/x.jpg", MAX).await.unwrap().is_none());
    assert!(store.head("d/x.jpg").await.unwrap().is_none());
    assert_eq!(list_all(store, "d/", 10).await, vec!["d/y.jpg"]);
    store.delete("d/x.jpg").await.unwrap();
}

async fn invalid_requests(store: &impl ObjectStore) {
    let err = store
        .put("", Bytes::from_static(b"x"), request("image/jpeg"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidKey { .. }), "{err}");
    let long = "k".repeat(1025);
    let err = store.get(&long, MAX).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidKey { .. }), "{err}");
    let too_many: BTreeMap<String, String> = (0..11)
        .map(|i| (format!("t{i}"), "v".to_string()))
        .collect();
    let put = PutRequest {
        content_type: "image/jpeg".into(),
        tags: too_many,
        ..PutRequest::default()
    };
    let err = store
        .put("tags.jpg", Bytes::from_static(b"x"), put)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidRequest { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(store.head("tags.jpg").await.unwrap().is_none());
}

/// One `#[tokio::test]` per contract check for an adapter. `$make` is an async expression
/// giving `Option<(store, guard)>`: `None` means skipped (already reported), the guard keeps
/// temporary directories alive for the test's duration.
macro_rules! store_contract {
    ($adapter:ident, $make:expr) => {
        mod $adapter {
            use super::*;
            store_contract!(@test $make, round_trip, missing_keys, overwrite_replaces_everything,
                size_limit, empty_and_unusual_keys, listing_pages, delete_removes,
                invalid_requests);
        }
    };
    (@test $make:expr, $($check:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                #[allow(clippy::redundant_closure_call)]
                let Some((store, _guard)) = ($make)(concat!(module_path!(), "::", stringify!($check))).await else {
                    return;
                };
                super::$check(&store).await;
            }
        )+
    };
}

store_contract!(memory, |_test: &'static str| async {
    Some((MemoryStore::new("memory-bucket"), ()))
});

store_contract!(fs, |_test: &'static str| async {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path().join("bucket")).await.unwrap();
    Some((store, dir))
});

store_contract!(s3, |test: &'static str| async move {
    common::moto_store(test).await.map(|s| (s, ()))
});

/// S3-specific: a missing bucket is its own non-retryable error, not a missing key.
#[tokio::test]
async fn s3_missing_bucket_is_an_error() {
    let Some(endpoint) = common::moto_endpoint("s3_missing_bucket_is_an_error") else {
        return;
    };
    let client = common::moto_settings(&endpoint).s3_client().await;
    let store = edgethumb_aws::S3Store::new(client, common::unique_name("et-absent"));
    let err = store.get("k.jpg", MAX).await.unwrap_err();
    assert!(matches!(err, StoreError::NoSuchBucket { .. }), "{err}");
    assert!(!err.is_retryable());
    let err = store
        .put("k.jpg", Bytes::from_static(b"x"), request("image/jpeg"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoSuchBucket { .. }), "{err}");
}

/// S3-specific: an unreachable endpoint is a retryable error naming bucket and key.
#[tokio::test]
async fn s3_unreachable_endpoint_is_retryable() {
    // Port 9 (discard) is closed on 127.0.0.1: connection refused, no server needed.
    let settings = edgethumb_aws::AwsSettings::new("us-east-1")
        .with_endpoint("http://127.0.0.1:9")
        .with_static_credentials("a", "b");
    let store = edgethumb_aws::S3Store::new(settings.s3_client().await, "bkt");
    let err = store.get("some/key.jpg", MAX).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("bkt/some/key.jpg"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Filesystem-only guarantees.

async fn fs_store() -> (FsStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path().join("bucket")).await.unwrap();
    (store, dir)
}

/// Every escaping form, through every operation, is an `InvalidKey` and touches nothing.
#[tokio::test]
async fn fs_refuses_each_escaping_key_form() {
    let (store, dir) = fs_store().await;
    let forms = [
        ("absolute", "/tmp/evil.jpg"),
        ("dot-dot", "../evil.jpg"),
        ("nested dot-dot", "a/../../evil.jpg"),
        ("trailing dot-dot", "a/.."),
        ("dot", "./a.jpg"),
        ("NUL", "a\0.jpg"),
        ("backslash", "..\\evil.jpg"),
        ("empty segment", "a//b.jpg"),
        ("trailing slash", "a/"),
        ("empty", ""),
        ("reserved dir", ".edgethumb/lock"),
        ("reserved sidecar", ".edgethumb/meta/a.jpg.json"),
    ];
    for (why, key) in forms {
        let body = Bytes::from_static(b"evil");
        let results = [
            store.put(key, body, request("image/jpeg")).await.err(),
            store.get(key, MAX).await.err(),
            store.head(key).await.err(),
            store.tags(key).await.err(),
            store.delete(key).await.err(),
        ];
        for (op, result) in ["put", "get", "head", "tags", "delete"].iter().zip(results) {
            assert!(
                matches!(result, Some(StoreError::InvalidKey { .. })),
                "{why} ({key:?}) via {op}: {result:?}"
            );
        }
    }
    // Nothing was written next to the bucket directory.
    let siblings: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(siblings.len(), 1, "{siblings:?}");
    assert!(list_all(&store, "", 1000).await.is_empty());
}

/// A symbolic link inside the root must not become a way out of it.
#[tokio::test]
async fn fs_refuses_paths_through_symlinks() {
    let (store, dir) = fs_store().await;
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), b"secret").unwrap();
    std::os::unix::fs::symlink(&outside, store.root().join("link")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), store.root().join("file-link")).unwrap();
    for key in ["link/secret.txt", "file-link"] {
        let err = store.get(key, MAX).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidKey { .. }), "{key}: {err}");
    }
    let err = store
        .put(
            "link/new.jpg",
            Bytes::from_static(b"x"),
            request("image/jpeg"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidKey { .. }), "{err}");
    assert!(!outside.join("new.jpg").exists());
    assert!(list_all(&store, "", 1000).await.is_empty());
}

#[tokio::test]
async fn fs_metadata_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bucket");
    let put = PutRequest {
        content_type: "image/webp".into(),
        cache_control: Some("max-age=600".into()),
        metadata: map(&[("edgethumb-version", "9")]),
        tags: map(&[("createByLambda", "1")]),
    };
    let written = {
        let store = FsStore::open(&root).await.unwrap();
        store
            .put("a/b.webp", Bytes::from_static(b"webp bytes"), put)
            .await
            .unwrap()
    };
    let store = FsStore::open(&root).await.unwrap();
    let got = store.get("a/b.webp", MAX).await.unwrap().unwrap();
    assert_eq!(&got.body[..], b"webp bytes");
    assert_eq!(got.info.content_type.as_deref(), Some("image/webp"));
    assert_eq!(got.info.cache_control.as_deref(), Some("max-age=600"));
    assert_eq!(got.info.metadata, map(&[("edgethumb-version", "9")]));
    assert_eq!(got.info.etag, written.etag);
    assert_eq!(got.info.last_modified, written.last_modified);
    assert_eq!(
        store.tags("a/b.webp").await.unwrap(),
        Some(map(&[("createByLambda", "1")]))
    );
    // The store's own files never show up as objects.
    assert_eq!(list_all(&store, "", 1000).await, vec!["a/b.webp"]);
    assert!(list_all(&store, ".edgethumb", 1000).await.is_empty());
}

/// Files dropped into the directory by hand (a folder of photos) are objects too.
#[tokio::test]
async fn fs_serves_hand_placed_files() {
    let (store, _dir) = fs_store().await;
    std::fs::create_dir_all(store.root().join("originals")).unwrap();
    std::fs::write(store.root().join("originals/cat.JPG"), b"jpeg bytes").unwrap();
    let got = store.get("originals/cat.JPG", MAX).await.unwrap().unwrap();
    assert_eq!(&got.body[..], b"jpeg bytes");
    assert_eq!(got.info.content_type.as_deref(), Some("image/jpeg"));
    assert_eq!(
        got.info.etag.as_deref(),
        Some(md5_etag(b"jpeg bytes").as_str())
    );
    let head = store.head("originals/cat.JPG").await.unwrap().unwrap();
    assert_eq!(head.etag, got.info.etag);
    assert!(head.last_modified.is_some());
    assert_eq!(
        store.tags("originals/cat.JPG").await.unwrap(),
        Some(BTreeMap::new())
    );
    assert_eq!(
        list_all(&store, "orig", 10).await,
        vec!["originals/cat.JPG"]
    );
}

/// S3 holds `a` and `a/b` side by side; a directory cannot. The store says so with a
/// non-retryable error, and deleting one frees the name for the other.
#[tokio::test]
async fn fs_file_directory_conflicts_are_clear_errors() {
    let (store, _dir) = fs_store().await;
    let put = |key: &'static str| store.put(key, Bytes::from_static(b"x"), request("image/jpeg"));
    put("a").await.unwrap();
    let err = put("a/b").await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidKey { .. }), "{err}");
    assert!(!err.is_retryable());
    store.delete("a").await.unwrap();
    put("a/b/c").await.unwrap();
    let err = put("a").await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidKey { .. }), "{err}");
    store.delete("a/b/c").await.unwrap();
    put("a").await.unwrap();
    assert_eq!(list_all(&store, "", 10).await, vec!["a"]);
}

/// Concurrent writers of one key: the survivor's body and metadata belong together.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fs_concurrent_writers_leave_a_consistent_object() {
    let (store, _dir) = fs_store().await;
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..5u8 {
                let body = Bytes::from(vec![i; 1000 + usize::from(i) * 100 + usize::from(j)]);
                let put = PutRequest {
                    content_type: format!("image/x-{i}"),
                    metadata: map(&[("writer", &i.to_string())]),
                    ..PutRequest::default()
                };
                store.put("same.bin", body, put).await.unwrap();
                let got = store.get("same.bin", MAX).await.unwrap().unwrap();
                let writer = got.body[0];
                assert!(got.body.iter().all(|&b| b == writer));
                assert_eq!(got.info.content_type, Some(format!("image/x-{writer}")));
                assert_eq!(got.info.etag, Some(md5_etag(&got.body)));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

const CRASH_CHILD_ENV: &str = "EDGETHUMB_FS_CRASH_CHILD_ROOT";
const CRASH_KEY: &str = "big/object.bin";

/// The two versions the crash child alternates between: different sizes and bytes, and
/// metadata that names the version, so any mix-up shows.
fn crash_version(n: u8) -> (Bytes, PutRequest) {
    let (byte, len) = if n == 0 {
        (0xAA, 6 * 1024 * 1024 + 1)
    } else {
        (0xBB, 9 * 1024 * 1024)
    };
    let put = PutRequest {
        content_type: format!("application/x-version-{n}"),
        metadata: map(&[("version", &n.to_string())]),
        tags: map(&[("version", &n.to_string())]),
        ..PutRequest::default()
    };
    (Bytes::from(vec![byte; len]), put)
}

/// Not a test: the child process of `fs_kill_mid_write_leaves_old_or_new`, which writes the
/// two versions in a loop until it is killed.
#[test]
#[ignore = "helper process for fs_kill_mid_write_leaves_old_or_new"]
fn fs_crash_child_writer() {
    let Ok(root) = std::env::var(CRASH_CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = FsStore::open(root).await.unwrap();
        for i in 0u64.. {
            let (body, put) = crash_version((i % 2) as u8);
            store.put(CRASH_KEY, body, put).await.unwrap();
        }
    });
}

#[test]
fn fs_kill_mid_write_leaves_old_or_new() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bucket");
    runtime.block_on(async {
        let store = FsStore::open(&root).await.unwrap();
        let (body, put) = crash_version(0);
        store.put(CRASH_KEY, body, put).await.unwrap();
    });
    let exe = std::env::current_exe().unwrap();
    let mut seen = [0u32; 2];
    let mut interrupted = 0;
    for round in 0..8u64 {
        let mut child = std::process::Command::new(&exe)
            .args([
                "fs_crash_child_writer",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_ENV, &root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200 + round * 73));
        assert!(
            child.try_wait().unwrap().is_none(),
            "child writer exited early"
        );
        child.kill().unwrap(); // SIGKILL: no destructor, no flush, no cleanup.
        child.wait().unwrap();
        let leftovers = std::fs::read_dir(root.join(".edgethumb/tmp"))
            .unwrap()
            .count()
            + std::fs::read_dir(root.join(".edgethumb/pending"))
                .unwrap()
                .count();
        if leftovers > 0 {
            interrupted += 1;
        }
        runtime.block_on(async {
            // Reopening finishes a committed write and ignores an uncommitted one.
            let store = FsStore::open(&root).await.unwrap();
            let got = store
                .get(CRASH_KEY, MAX)
                .await
                .unwrap()
                .expect("object survives");
            let n = usize::from(got.body[0] == 0xBB);
            let (expected, put) = crash_version(n as u8);
            assert!(
                got.body == expected,
                "round {round}: torn body ({} bytes)",
                got.body.len()
            );
            assert_eq!(
                got.info.content_type,
                Some(put.content_type),
                "round {round}"
            );
            assert_eq!(got.info.metadata, put.metadata, "round {round}");
            assert_eq!(got.info.etag, Some(md5_etag(&expected)), "round {round}");
            assert_eq!(got.info.size, expected.len() as u64);
            assert_eq!(store.tags(CRASH_KEY).await.unwrap(), Some(put.tags));
            assert_eq!(list_all(&store, "", 10).await, vec![CRASH_KEY]);
            seen[n] += 1;
        });
    }
    eprintln!(
        "crash rounds: version 0 seen {}, version 1 seen {}, {interrupted} kills left temp files",
        seen[0], seen[1]
    );
    // The kills must really have landed mid-write, or this test proves nothing.
    assert!(interrupted > 0, "no kill interrupted a write");
}

/// Under `CI=true` a moto test without its server must fail, not skip: run one of this
/// binary's moto tests in a child process without the endpoint and check it failed.
#[test]
fn a_missing_server_fails_the_run_under_ci() {
    let exe = std::env::current_exe().unwrap();
    let run = |ci: &str| {
        std::process::Command::new(&exe)
            .args([
                "--exact",
                "s3_missing_bucket_is_an_error",
                "--test-threads=1",
            ])
            .env_remove(common::ENDPOINT_ENV)
            .env("CI", ci)
            .output()
            .unwrap()
    };
    let under_ci = run("true");
    let stderr = String::from_utf8_lossy(&under_ci.stderr);
    let stdout = String::from_utf8_lossy(&under_ci.stdout);
    assert!(
        !under_ci.status.success(),
        "passed without a server under CI=true:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("1 failed"), "{stdout}");
    assert!(
        stdout.contains("the S3/SQS server is missing")
            || stderr.contains("the S3/SQS server is missing"),
        "{stdout}\n{stderr}"
    );
    // Outside CI the same test skips with a message and passes.
    let local = run("false");
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stdout)
    );
    assert!(String::from_utf8_lossy(&local.stderr).contains("skipped"));
}
