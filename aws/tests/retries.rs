//! One retry layer: how many HTTP requests a call to SQS makes when the service fails.
//!
//! The server here is a few lines of `std::net`, not moto: moto can neither fail every
//! request nor fail some entries of a batch. It counts requests and answers each with what
//! the test's function says (SQS's JSON protocol: `X-Amz-Target: AmazonSQS.<Operation>`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)] // test code

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgethumb::enqueue::{plan_keys, send_jobs};
use edgethumb::queue::JobQueue;
use edgethumb_aws::sqs::{ENTRY_ATTEMPTS, SqsQueue};
use edgethumb_aws::{AwsSettings, CallLimits};
use serde_json::{Value, json};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    body: Value,
}

/// `(status, JSON body)` for the n-th request (0-based) and the request itself.
type Answer = dyn Fn(usize, &Seen) -> (u16, String) + Send + Sync;

struct FakeSqs {
    endpoint: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeSqs {
    fn start(answer: impl Fn(usize, &Seen) -> (u16, String) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Answer> = Arc::new(answer);
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (log, answer) = (Arc::clone(&log), Arc::clone(&answer));
                std::thread::spawn(move || serve(stream, &log, answer.as_ref()));
            }
        });
        FakeSqs { endpoint, seen }
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn queue(&self, limits: CallLimits) -> SqsQueue {
        let settings = AwsSettings::new("us-east-1")
            .with_endpoint(&self.endpoint)
            .with_static_credentials("testing", "testing")
            .with_call_limits(limits);
        SqsQueue::new(
            settings.sqs_client().await,
            format!("{}/123456789012/q", self.endpoint),
        )
    }
}

/// Keep-alive HTTP/1.1: read each request (headers, then `Content-Length` bytes), log it,
/// answer it.
fn serve(stream: TcpStream, log: &Mutex<Vec<Seen>>, answer: &Answer) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut target = String::new();
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() && !first {
                break;
            }
            first = false;
            if let Some((name, value)) = trimmed.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "x-amz-target" => target = value.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let seen = Seen {
            target,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        };
        let n = {
            let mut log = log.lock().unwrap();
            log.push(seen.clone());
            log.len() - 1
        };
        let (status, text) = answer(n, &seen);
        let response = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.0\r\n\
             x-amzn-RequestId: r{n}\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// The worker's limits with millisecond waits, so the test does not sleep for seconds.
fn quick(limits: CallLimits) -> CallLimits {
    CallLimits {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        ..limits
    }
}

fn always_500(_: usize, _: &Seen) -> (u16, String) {
    (
        500,
        r#"{"__type":"com.amazonaws.sqs#InternalError","message":"boom"}"#.into(),
    )
}

fn bodies(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!(r#"{{"v":1,"bucket":"b","variant_key":"k{i}.jpg@10w"}}"#))
        .collect()
}

#[tokio::test]
async fn send_makes_exactly_the_sdk_attempts_on_a_failing_service() {
    let server = FakeSqs::start(always_500);
    let queue = server.queue(quick(CallLimits::WORKER)).await;
    let error = queue.send("{}").await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    let requests = server.requests();
    assert_eq!(requests.len() as u32, CallLimits::WORKER.max_attempts);
    assert!(requests.iter().all(|r| r.target == "AmazonSQS.SendMessage"));
}

#[tokio::test]
async fn send_batch_does_not_resend_a_failed_call() {
    let server = FakeSqs::start(always_500);
    let queue = server.queue(quick(CallLimits::WORKER)).await;
    let error = queue.send_batch(&bodies(3)).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    // 3 (the SDK's attempts), not 3 × 4 as when the adapter retried failed calls too.
    assert_eq!(
        server.requests().len() as u32,
        CallLimits::WORKER.max_attempts
    );
}

#[tokio::test]
async fn enqueue_does_not_resend_a_failed_batch() {
    let server = FakeSqs::start(always_500);
    let queue = server.queue(quick(CallLimits::WORKER)).await;
    let plan = plan_keys(["s3://b/photos/cat.jpg@200w.webp", "s3://b/a.png@1w"], None);
    let report = send_jobs(&queue, &plan.jobs, |_, _| {}).await;
    assert_eq!(report.sent, 0);
    assert_eq!(report.failed.len(), 2, "every job reported: {report:?}");
    // Was 36: 3 batch sends in `enqueue` × 4 in the adapter × 3 SDK attempts.
    assert_eq!(
        server.requests().len() as u32,
        CallLimits::WORKER.max_attempts
    );
}

#[tokio::test]
async fn the_edge_makes_fewer_attempts() {
    let server = FakeSqs::start(always_500);
    let queue = server.queue(quick(CallLimits::EDGE)).await;
    assert!(queue.send("{}").await.is_err());
    assert_eq!(server.requests().len(), 2);
    assert_eq!(CallLimits::EDGE.max_attempts, 2);
}

/// Entries of the first SendMessageBatch: "1" and "3" fail by the service's fault, "2" by
/// ours; everything after succeeds.
fn partial_failure(n: usize, seen: &Seen) -> (u16, String) {
    let ids: Vec<String> = seen.body["Entries"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| e["Id"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    let failing = |id: &str| {
        if n > 0 {
            None
        } else if id == "1" || id == "3" {
            Some(
                json!({"Id": id, "SenderFault": false, "Code": "InternalError", "Message": "try again"}),
            )
        } else if id == "2" {
            Some(
                json!({"Id": id, "SenderFault": true, "Code": "InvalidParameterValue", "Message": "bad entry"}),
            )
        } else {
            None
        }
    };
    let failed: Vec<Value> = ids.iter().filter_map(|id| failing(id)).collect();
    let successful: Vec<Value> = ids
        .iter()
        .filter(|id| failing(id).is_none())
        .map(|id| json!({"Id": id, "MessageId": format!("m-{n}-{id}"), "MD5OfMessageBody": "00"}))
        .collect();
    (
        200,
        json!({"Successful": successful, "Failed": failed}).to_string(),
    )
}

#[tokio::test]
async fn send_batch_resends_only_the_entries_the_service_failed() {
    let server = FakeSqs::start(partial_failure);
    let queue = server.queue(quick(CallLimits::WORKER)).await;
    let failed = queue.send_batch(&bodies(5)).await.unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].index, 2);
    assert!(
        failed[0].reason.contains("InvalidParameterValue"),
        "{failed:?}"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let ids = |r: &Seen| -> Vec<String> {
        r.body["Entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["Id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&requests[0]), ["0", "1", "2", "3", "4"]);
    assert_eq!(ids(&requests[1]), ["1", "3"]);
    assert_eq!(
        requests[1].body["Entries"][0]["MessageBody"],
        json!(bodies(5)[1])
    );
}

#[tokio::test]
async fn entries_failing_every_time_are_sent_a_bounded_number_of_times() {
    let server = FakeSqs::start(|_, seen| {
        let ids: Vec<Value> = seen.body["Entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| json!({"Id": e["Id"], "SenderFault": false, "Code": "InternalError"}))
            .collect();
        (200, json!({"Successful": [], "Failed": ids}).to_string())
    });
    let queue = server.queue(quick(CallLimits::WORKER)).await;
    let failed = queue.send_batch(&bodies(2)).await.unwrap();
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|f| f.reason.contains("InternalError")));
    assert_eq!(server.requests().len() as u32, ENTRY_ATTEMPTS);
}
