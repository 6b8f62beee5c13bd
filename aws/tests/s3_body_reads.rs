//! GetObject bodies that fail after the response head arrived (issue 18's chaos runs).
//!
//! The SDK's retries end once `send()` returns; the body is read afterwards, so a connection
//! cut in the middle of it reaches `S3Store::get` as a read error. These tests stand up a
//! tiny HTTP server on 127.0.0.1 that answers each connection from a script (cut the body
//! short, or send it whole), so the exact failure happens on cue, which moto cannot do.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)] // test code

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgethumb::store::{ObjectStore, StoreError};
use edgethumb_aws::{AwsSettings, S3Store};

const BODY_LEN: usize = 4000;

fn body() -> Vec<u8> {
    (0..BODY_LEN).map(|i| (i * 7 % 251) as u8).collect()
}

#[derive(Clone, Copy, Debug)]
enum Answer {
    /// Head with the full Content-Length, half the body, then close (FIN).
    Truncated,
    /// Chunked framing (complete as such) with a Content-Length header announcing more.
    ShortChunked,
    Whole,
}

/// Serves one answer per connection: `script[n]` for the n-th, the last one after that.
/// Stops after 30 connections or when dropped.
struct ScriptedS3 {
    url: String,
    requests: Arc<AtomicUsize>,
}

impl ScriptedS3 {
    fn start(script: Vec<Answer>) -> ScriptedS3 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let script = Arc::new(Mutex::new(script));
        std::thread::spawn(move || {
            for stream in listener.incoming().take(30) {
                let Ok(stream) = stream else { break };
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let answer = {
                    let script = script.lock().unwrap();
                    script[n.min(script.len() - 1)]
                };
                serve(stream, answer);
            }
        });
        ScriptedS3 { url, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn serve(mut stream: TcpStream, answer: Answer) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let body = body();
    let common = "Content-Type: application/octet-stream\r\nETag: \"abc\"\r\nConnection: close\r\n";
    match answer {
        Answer::Truncated => {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\n{common}Content-Length: {BODY_LEN}\r\n\r\n"
            );
            let _ = stream.write_all(&body[..BODY_LEN / 2]);
        }
        Answer::ShortChunked => {
            let half = BODY_LEN / 2;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\n{common}Content-Length: {BODY_LEN}\r\nTransfer-Encoding: chunked\r\n\r\n{half:x}\r\n"
            );
            let _ = stream.write_all(&body[..half]);
            let _ = stream.write_all(b"\r\n0\r\n\r\n");
        }
        Answer::Whole => {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\n{common}Content-Length: {BODY_LEN}\r\n\r\n"
            );
            let _ = stream.write_all(&body);
        }
    }
    let _ = stream.flush();
    // Dropping the stream closes it: after a short body, that is the cut.
}

async fn store(server: &ScriptedS3) -> S3Store {
    let client = AwsSettings::new("us-east-1")
        .with_endpoint(&server.url)
        .with_static_credentials("test", "test")
        .s3_client()
        .await;
    S3Store::new(client, "bucket")
}

/// Regression: a GetObject whose body was cut used to fail the read at once (the SDK had
/// already returned), so one reset failed an edge miss (502) or a worker job.
#[tokio::test]
async fn a_body_cut_short_is_read_again_and_the_whole_object_returned() {
    let server = ScriptedS3::start(vec![Answer::Truncated, Answer::Whole]);
    let store = store(&server).await;
    let object = store
        .get("photos/cat.jpg", 1 << 20)
        .await
        .expect("the second GET succeeds")
        .expect("the object exists");
    assert_eq!(object.body.as_ref(), body().as_slice());
    assert_eq!(object.info.size, BODY_LEN as u64);
    assert_eq!(server.requests(), 2);
}

/// A body that keeps being cut ends in a retryable error, never in a short object.
#[tokio::test]
async fn a_body_always_cut_short_is_a_retryable_error_never_a_short_object() {
    for answer in [Answer::Truncated, Answer::ShortChunked] {
        let server = ScriptedS3::start(vec![answer]);
        let store = store(&server).await;
        match store.get("photos/cat.jpg", 1 << 20).await {
            Err(error @ StoreError::Backend { .. }) => {
                assert!(error.is_retryable(), "{answer:?}: {error}");
            }
            Ok(Some(object)) => panic!(
                "{answer:?}: a short body passed for the object: {} of {BODY_LEN} bytes",
                object.body.len()
            ),
            other => panic!("{answer:?}: {other:?}"),
        }
        assert!(server.requests() >= 3, "{answer:?}: {}", server.requests());
    }
}
