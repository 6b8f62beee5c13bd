//! The `JobQueue` contract, written once and run against every adapter: SQS (on moto), the
//! local spool and memory. Local-only guarantees (durability across a restart, concurrent
//! receivers sharing a spool) follow the contract.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)] // test code

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use edgethumb::job::{Job, JobReason};
use edgethumb::queue::local::LocalQueue;
use edgethumb::queue::memory::MemoryQueue;
use edgethumb::queue::{DEFAULT_MAX_MESSAGE_BYTES, JobQueue, QueueError, ReceivedMessage};

const LONG: Duration = Duration::from_secs(60);

fn job_body(i: usize) -> String {
    Job::new(
        "bucket",
        format!("photos/{i}.jpg@200w.webp"),
        JobReason::Miss,
        None,
    )
    .unwrap()
    .to_json()
}

/// Receive until `n` messages arrived or `within` passed.
async fn receive_n(
    queue: &impl JobQueue,
    n: usize,
    visibility: Duration,
    within: Duration,
) -> Vec<ReceivedMessage> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < n && start.elapsed() < within {
        let batch = queue
            .receive(10, Duration::from_secs(1), visibility)
            .await
            .unwrap();
        assert!(batch.len() <= 10);
        got.extend(batch);
    }
    got
}

async fn send_receive_ack(queue: &impl JobQueue) {
    let body = job_body(1);
    let id = queue.send(&body).await.unwrap();
    assert!(!id.is_empty());
    let got = receive_n(queue, 1, LONG, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let message = &got[0];
    assert_eq!(message.id, id);
    assert_eq!(message.body, body);
    assert_eq!(message.receive_count, 1);
    assert_eq!(
        Job::parse(&message.body).unwrap().original_key,
        "photos/1.jpg"
    );
    // In flight: not delivered again.
    assert!(
        queue
            .receive(10, Duration::ZERO, LONG)
            .await
            .unwrap()
            .is_empty()
    );
    queue.ack(&message.receipt).await.unwrap();
}

async fn ack_deletes(queue: &impl JobQueue) {
    queue.send("ack me").await.unwrap();
    let got = receive_n(queue, 1, Duration::from_secs(1), Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    queue.ack(&got[0].receipt).await.unwrap();
    // Past the visibility timeout, an acked message does not come back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = queue
        .receive(10, Duration::from_secs(1), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

async fn visibility_timeout_redelivers(queue: &impl JobQueue) {
    let id = queue.send("come back").await.unwrap();
    let first = receive_n(queue, 1, Duration::from_secs(1), Duration::from_secs(10)).await;
    assert_eq!(first.len(), 1);
    assert!(
        queue
            .receive(10, Duration::ZERO, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let second = receive_n(queue, 1, LONG, Duration::from_secs(10)).await;
    assert_eq!(second.len(), 1, "not redelivered");
    assert_eq!(second[0].id, id);
    assert_eq!(second[0].body, "come back");
    assert_eq!(second[0].receive_count, 2);
    assert_ne!(second[0].receipt, first[0].receipt);
    queue.ack(&second[0].receipt).await.unwrap();
}

async fn extend_keeps_it_invisible(queue: &impl JobQueue) {
    queue.send("long job").await.unwrap();
    let got = receive_n(queue, 1, Duration::from_secs(1), Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    queue
        .extend(&got[0].receipt, Duration::from_secs(30))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = queue
        .receive(10, Duration::from_millis(500), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        during.is_empty(),
        "extended message redelivered: {during:?}"
    );
    // The receipt is still valid after the extension.
    queue.ack(&got[0].receipt).await.unwrap();
}

async fn batch_of_23(queue: &impl JobQueue) {
    let bodies: Vec<String> = (0..23).map(job_body).collect();
    let failed = queue.send_batch(&bodies).await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    let got = receive_n(queue, 23, LONG, Duration::from_secs(30)).await;
    let received: BTreeSet<String> = got.iter().map(|m| m.body.clone()).collect();
    let sent: BTreeSet<String> = bodies.iter().cloned().collect();
    assert_eq!(got.len(), 23, "duplicates or missing");
    assert_eq!(received, sent);
    let ids: HashSet<&str> = got.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids.len(), 23);
    for message in &got {
        queue.ack(&message.receipt).await.unwrap();
    }
}

async fn oversize_is_refused(queue: &impl JobQueue) {
    let big = "x".repeat(DEFAULT_MAX_MESSAGE_BYTES + 1);
    let err = queue.send(&big).await.unwrap_err();
    assert!(
        matches!(err, QueueError::MessageTooLarge { size, limit }
            if size == DEFAULT_MAX_MESSAGE_BYTES + 1 && limit == DEFAULT_MAX_MESSAGE_BYTES),
        "{err}"
    );
    assert!(!err.is_retryable());
    // Exactly at the limit is fine.
    let at_limit = "y".repeat(DEFAULT_MAX_MESSAGE_BYTES);
    queue.send(&at_limit).await.unwrap();
    let bodies = vec!["small-1".to_string(), big, "small-2".to_string()];
    let failed = queue.send_batch(&bodies).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].index, 1);
    let got = receive_n(queue, 3, LONG, Duration::from_secs(10)).await;
    let mut lens: Vec<usize> = got.iter().map(|m| m.body.len()).collect();
    lens.sort_unstable();
    assert_eq!(lens, vec![7, 7, DEFAULT_MAX_MESSAGE_BYTES]);
}

async fn long_poll_returns_early(queue: &impl JobQueue) {
    let start = Instant::now();
    let empty = queue.receive(10, Duration::ZERO, LONG).await.unwrap();
    assert!(empty.is_empty());
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );

    let start = Instant::now();
    let (got, ()) = tokio::join!(queue.receive(10, Duration::from_secs(5), LONG), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        queue.send("late").await.unwrap();
    });
    let got = got.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(
        got.len(),
        1,
        "long poll missed a message sent while waiting"
    );
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");

    let start = Instant::now();
    let none = queue
        .receive(10, Duration::from_secs(1), LONG)
        .await
        .unwrap();
    assert!(none.is_empty());
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "did not wait: {:?}",
        start.elapsed()
    );
}

/// A delayed message is not received before its delay and is received after it, as a
/// first delivery; a message sent without delay meanwhile is not held up by it.
async fn delayed_send_waits(queue: &impl JobQueue) {
    let sent = Instant::now();
    let id = queue
        .send_delayed("deferred", Duration::from_secs(2))
        .await
        .unwrap();
    queue.send("at once").await.unwrap();
    let early = receive_n(queue, 1, LONG, Duration::from_secs(5)).await;
    assert_eq!(early.len(), 1);
    assert_eq!(early[0].body, "at once");
    queue.ack(&early[0].receipt).await.unwrap();
    // Polled until it comes: never before its delay is over.
    let mut got = Vec::new();
    while got.is_empty() && sent.elapsed() < Duration::from_secs(12) {
        got = queue.receive(10, Duration::ZERO, LONG).await.unwrap();
        if got.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let arrived = sent.elapsed();
    assert_eq!(got.len(), 1, "the delayed message never came");
    assert!(
        arrived >= Duration::from_secs(2),
        "received after {arrived:?}"
    );
    assert_eq!(got[0].id, id);
    assert_eq!(got[0].body, "deferred");
    assert_eq!(got[0].receive_count, 1);
    queue.ack(&got[0].receipt).await.unwrap();
}

async fn invalid_receipt(queue: &impl JobQueue) {
    let err = queue.ack("not-a-receipt").await.unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::InvalidReceipt(_)
                | QueueError::Backend {
                    retryable: false,
                    ..
                }
        ),
        "{err}"
    );
}

/// One `#[tokio::test]` per contract check for an adapter; `$make` gives
/// `Option<(queue, guard)>`, `None` meaning skipped (already reported).
macro_rules! queue_contract {
    ($adapter:ident, $make:expr) => {
        mod $adapter {
            use super::*;
            queue_contract!(@test $make, send_receive_ack, ack_deletes,
                visibility_timeout_redelivers, extend_keeps_it_invisible, batch_of_23,
                oversize_is_refused, long_poll_returns_early, delayed_send_waits,
                invalid_receipt);
        }
    };
    (@test $make:expr, $($check:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                #[allow(clippy::redundant_closure_call)]
                let Some((queue, _guard)) = ($make)(concat!(module_path!(), "::", stringify!($check))).await else {
                    return;
                };
                super::$check(&queue).await;
            }
        )+
    };
}

queue_contract!(memory, |_test: &'static str| async {
    Some((MemoryQueue::new("memory-queue"), ()))
});

queue_contract!(local, |_test: &'static str| async {
    let dir = tempfile::tempdir().unwrap();
    let queue = LocalQueue::open(dir.path().join("spool")).await.unwrap();
    Some((queue, dir))
});

queue_contract!(sqs, |test: &'static str| async move {
    common::moto_queue(test).await.map(|q| (q, ()))
});

#[tokio::test]
async fn local_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    {
        let queue = LocalQueue::open(&spool).await.unwrap();
        queue.send("waiting").await.unwrap();
        queue.send("in flight").await.unwrap();
        let got = queue
            .receive(1, Duration::ZERO, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, "waiting");
        // Dropped without ack: the "process" ends here.
    }
    let queue = LocalQueue::open(&spool).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let got = receive_n(&queue, 2, LONG, Duration::from_secs(5)).await;
    let mut bodies: Vec<(&str, u32)> = got
        .iter()
        .map(|m| (m.body.as_str(), m.receive_count))
        .collect();
    bodies.sort_unstable();
    assert_eq!(bodies, vec![("in flight", 1), ("waiting", 2)]);
    for m in &got {
        queue.ack(&m.receipt).await.unwrap();
    }
    assert_eq!(queue.counts().await.unwrap(), (0, 0));
}

/// A delay is a file like every other state: it survives a restart and still holds.
#[tokio::test]
async fn local_delay_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let sent = Instant::now();
    {
        let queue = LocalQueue::open(&spool).await.unwrap();
        queue
            .send_delayed("deferred", Duration::from_millis(800))
            .await
            .unwrap();
    }
    let queue = LocalQueue::open(&spool).await.unwrap();
    assert!(
        queue
            .receive(10, Duration::ZERO, LONG)
            .await
            .unwrap()
            .is_empty()
    );
    let got = receive_n(&queue, 1, LONG, Duration::from_secs(5)).await;
    assert!(sent.elapsed() >= Duration::from_millis(800));
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].body.as_str(), got[0].receive_count),
        ("deferred", 1)
    );
}

/// Separate `LocalQueue` values share nothing in memory, so this is the same race as
/// separate processes: the rename must be the only lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_concurrent_receivers_never_share_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let sender = LocalQueue::open(&spool).await.unwrap();
    let bodies: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    assert!(sender.send_batch(&bodies).await.unwrap().is_empty());
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let queue = LocalQueue::open(&spool).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = queue
                    .receive(3, Duration::from_millis(200), LONG)
                    .await
                    .unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|m| m.body));
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 200, "a message was delivered twice or lost");
    assert_eq!(unique.len(), 200);
}

/// A stale receipt (from before a redelivery) must not ack the redelivered message.
#[tokio::test]
async fn local_stale_receipt_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let queue = LocalQueue::open(dir.path().join("spool")).await.unwrap();
    queue.send("x").await.unwrap();
    let first = queue
        .receive(1, Duration::ZERO, Duration::from_millis(100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = queue.receive(1, Duration::ZERO, LONG).await.unwrap();
    assert_eq!(second.len(), 1);
    assert!(matches!(
        queue.ack(&first[0].receipt).await,
        Err(QueueError::InvalidReceipt(_))
    ));
    assert!(matches!(
        queue.extend(&first[0].receipt, LONG).await,
        Err(QueueError::InvalidReceipt(_))
    ));
    queue.ack(&second[0].receipt).await.unwrap();
}

/// SQS-specific: a missing queue is a non-retryable error; for a batch that means an
/// error (nothing could be sent), not a list of failures.
#[tokio::test]
async fn sqs_missing_queue_is_an_error() {
    let Some(endpoint) = common::moto_endpoint("sqs_missing_queue_is_an_error") else {
        return;
    };
    let client = common::moto_settings(&endpoint).sqs_client().await;
    let url = format!(
        "{endpoint}/123456789012/{}",
        common::unique_name("et-absent")
    );
    let queue = edgethumb_aws::SqsQueue::new(client, url);
    let err = queue.send("x").await.unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::Backend {
                retryable: false,
                ..
            }
        ),
        "{err}"
    );
    let err = queue
        .send_batch(&["a".into(), "b".into()])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::Backend {
                retryable: false,
                ..
            }
        ),
        "{err}"
    );
}
