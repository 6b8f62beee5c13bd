//! `edgethumb enqueue` (the real binary) against moto's S3 and SQS (started by
//! `scripts/test.sh`; skipped, saying so, without `EDGETHUMB_TEST_ENDPOINT`).
//!
//! A bucket holds originals, variants the worker wrote (tagged `createByLambda=1`), an
//! untagged key with `@` (a hand upload) and keys outside the prefix; `--existing` must
//! enqueue exactly the tagged variants under the prefix, each once, with reason `manual`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)] // test code

#[path = "../../aws/tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};
use std::time::Duration;

use bytes::Bytes;
use edgethumb::job::{Job, JobReason};
use edgethumb::queue::JobQueue;
use edgethumb::store::{ObjectStore, PutRequest};
use edgethumb_aws::S3Store;
use edgethumb_aws::SqsQueue;

const BIN: &str = env!("CARGO_BIN_EXE_edgethumb");

async fn put(store: &S3Store, key: &str, tagged: bool) {
    let mut tags = BTreeMap::new();
    if tagged {
        tags.insert("createByLambda".to_string(), "1".to_string());
    }
    store
        .put(
            key,
            Bytes::from_static(b"not really an image"),
            PutRequest {
                content_type: "image/jpeg".into(),
                tags,
                ..PutRequest::default()
            },
        )
        .await
        .expect("put on moto");
}

fn enqueue(endpoint: &str, queue: &SqsQueue, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("enqueue")
        .args(args)
        .args(["--queue-url", queue.queue_url(), "--endpoint-url", endpoint])
        .args(["--region", "us-east-1"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("run edgethumb enqueue")
}

/// Every job on the queue (acked, so the queue ends empty).
async fn drain(queue: &SqsQueue) -> Vec<Job> {
    let mut jobs = Vec::new();
    loop {
        let messages = queue
            .receive(10, Duration::from_millis(500), Duration::from_secs(60))
            .await
            .expect("receive");
        if messages.is_empty() {
            return jobs;
        }
        for message in messages {
            jobs.push(Job::parse(&message.body).expect("a valid job"));
            queue.ack(&message.receipt).await.expect("ack");
        }
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_enqueues_exactly_the_tagged_variants() {
    let test = "enqueue_moto::existing_enqueues_exactly_the_tagged_variants";
    let Some(endpoint) = common::moto_endpoint(test) else {
        return;
    };
    let (Some(store), Some(queue)) = (
        common::moto_store(test).await,
        common::moto_queue(test).await,
    ) else {
        return;
    };
    let bucket = store.bucket().to_string();
    put(&store, "photos/cat.jpg", false).await;
    put(&store, "photos/dog.jpg", false).await;
    put(&store, "photos/upload@home.jpg", false).await; // `@` but not ours
    put(&store, "photos/dog.jpg@100w_1e.jpg", false).await; // untagged `@` key
    put(&store, "other/cat.jpg@200w.webp", true).await; // outside the prefix
    let mut expected = BTreeSet::new();
    // 23 variants: more than two batches of 10.
    for width in 1..=21 {
        let key = format!("photos/cat.jpg@{}w.webp", width * 10);
        put(&store, &key, true).await;
        expected.insert(key);
    }
    for key in [
        "photos/dog.jpg@200w_200h_1e.jpg",
        "photos/sub/dir/x.png@50p.png",
    ] {
        put(&store, key, true).await;
        expected.insert(key.to_string());
    }
    let prefix = format!("s3://{bucket}/photos/");

    // Dry run: lists, sends nothing.
    let dry = enqueue(
        &endpoint,
        &queue,
        &["--prefix", &prefix, "--existing", "--dry-run"],
    );
    assert!(dry.status.success(), "{}", stderr(&dry));
    let listed = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(listed.lines().count(), expected.len(), "{listed}");
    assert!(drain(&queue).await.is_empty(), "--dry-run sent something");

    let output = enqueue(&endpoint, &queue, &["--prefix", &prefix, "--existing"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!("{} sent", expected.len())),
        "{}",
        stderr(&output)
    );
    let jobs = drain(&queue).await;
    let sent: Vec<String> = jobs.iter().map(|j| j.variant_key.clone()).collect();
    let unique: BTreeSet<String> = sent.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        sent.len(),
        "a variant was sent twice: {sent:?}"
    );
    assert_eq!(unique, expected);
    for job in &jobs {
        assert_eq!(job.reason, JobReason::Manual);
        assert_eq!(job.bucket, bucket);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_and_explicit_keys_and_invalid_input() {
    let test = "enqueue_moto::variants_and_explicit_keys_and_invalid_input";
    let Some(endpoint) = common::moto_endpoint(test) else {
        return;
    };
    let (Some(store), Some(queue)) = (
        common::moto_store(test).await,
        common::moto_queue(test).await,
    ) else {
        return;
    };
    let bucket = store.bucket().to_string();
    put(&store, "photos/a.jpg", false).await;
    put(&store, "photos/b.png", false).await;
    put(&store, "photos/a.jpg@200w.webp", true).await;

    // Pre-warming: the variants of every original (not of the variant) under the prefix.
    let prefix = format!("s3://{bucket}/photos/");
    let output = enqueue(
        &endpoint,
        &queue,
        &[
            "--prefix",
            &prefix,
            "--variants",
            "200w_200h_1e.webp,800w.jpg",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let keys: BTreeSet<String> = drain(&queue)
        .await
        .into_iter()
        .map(|j| j.variant_key)
        .collect();
    let expected: BTreeSet<String> = [
        "photos/a.jpg@200w_200h_1e.webp",
        "photos/a.jpg@800w.jpg",
        "photos/b.png@200w_200h_1e.webp",
        "photos/b.png@800w.jpg",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(keys, expected);

    // Explicit URLs, with invalid ones reported (not sent) and a failing exit status.
    let good = format!("s3://{bucket}/photos/a.jpg@300w.webp");
    let bad_params = format!("s3://{bucket}/photos/a.jpg@300x.webp");
    let no_params = format!("s3://{bucket}/photos/a.jpg");
    let output = enqueue(&endpoint, &queue, &[&good, &bad_params, &no_params]);
    assert!(
        !output.status.success(),
        "invalid input must fail the command"
    );
    let err = stderr(&output);
    assert!(err.contains("300x") && err.contains("2 invalid"), "{err}");
    let sent: Vec<String> = drain(&queue)
        .await
        .into_iter()
        .map(|j| j.variant_key)
        .collect();
    assert_eq!(sent, ["photos/a.jpg@300w.webp"]);

    // Keys from a file.
    let temp = tempfile::tempdir().expect("tempdir");
    let list = temp.path().join("keys.txt");
    std::fs::write(
        &list,
        format!("# reprocess\n{good}\n\ns3://{bucket}/photos/b.png@64w.png\n"),
    )
    .expect("write list");
    let output = enqueue(
        &endpoint,
        &queue,
        &["--from", list.to_str().expect("utf-8")],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(drain(&queue).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_queue_fails_with_every_entry_reported() {
    let test = "enqueue_moto::an_unreachable_queue_fails_with_every_entry_reported";
    let Some(endpoint) = common::moto_endpoint(test) else {
        return;
    };
    let Some(queue) = common::moto_queue(test).await else {
        return;
    };
    let missing = SqsQueue::new(
        queue.client().clone(),
        format!("{}-does-not-exist", queue.queue_url()),
    );
    let output = enqueue(
        &endpoint,
        &missing,
        &[
            "s3://b/photos/a.jpg@100w.jpg",
            "s3://b/photos/a.jpg@200w.jpg",
        ],
    );
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("0 sent") && err.contains("2 failed"), "{err}");
}
