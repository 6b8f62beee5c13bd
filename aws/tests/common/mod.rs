//! Shared helpers for the integration tests: the moto endpoint (or a plain skip), unique
//! bucket and queue names so tests run in parallel against one server, and adapter
//! constructors.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgethumb_aws::AwsSettings;
use edgethumb_aws::S3Store;
use edgethumb_aws::SqsQueue;
use tokio::sync::OnceCell;

pub const ENDPOINT_ENV: &str = "EDGETHUMB_TEST_ENDPOINT";

/// The moto endpoint from `scripts/test.sh`, or `None` after saying plainly that the
/// calling test is skipped and why. Under `CI=true` (the CI run sets it) a missing server
/// is a failure, never a skip: a CI run that quietly skipped every S3/SQS test would pass
/// while testing none of the adapters.
pub fn moto_endpoint(test: &str) -> Option<String> {
    match std::env::var(ENDPOINT_ENV) {
        Ok(endpoint) if !endpoint.trim().is_empty() => Some(endpoint),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: {ENDPOINT_ENV} is not set and CI=true: the S3/SQS server is missing")
        }
        _ => {
            // Straight to stderr, not eprintln!: the test harness captures the macros'
            // output of passing tests, and a skip must be visible in a plain `cargo test`.
            let _ = writeln!(
                std::io::stderr(),
                "{test}: skipped: {ENDPOINT_ENV} not set (run scripts/test.sh)"
            );
            None
        }
    }
}

/// A name no other test (in this or another process) uses: lower-case, digits and `-`,
/// valid as an S3 bucket and an SQS queue name (≤ 63 characters).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut name = format!("{prefix}-{}-{n}-{nanos:x}", std::process::id());
    name.truncate(63);
    name
}

/// `POST /moto-api/reset`: drop everything moto holds. Tests use unique names and never
/// call this concurrently with each other; it runs once per test binary (binaries run one
/// after another) so moto's memory does not grow over the whole suite.
pub fn reset_moto(endpoint: &str) -> std::io::Result<()> {
    let authority = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| std::io::Error::other(format!("not an http:// endpoint: {endpoint}")))?
        .trim_end_matches('/');
    let mut stream = TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "POST /moto-api/reset HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "moto reset answered: {}",
            response.lines().next().unwrap_or("")
        )))
    }
}

/// Settings for moto: path-style, dummy static credentials (no credential chain probing).
pub fn moto_settings(endpoint: &str) -> AwsSettings {
    AwsSettings::new("us-east-1")
        .with_endpoint(endpoint)
        .with_static_credentials("testing", "testing")
}

static RESET_ONCE: OnceCell<()> = OnceCell::const_new();

async fn reset_once(endpoint: &str) {
    RESET_ONCE
        .get_or_init(|| async {
            reset_moto(endpoint).expect("reset moto");
        })
        .await;
}

/// A fresh bucket on moto, or `None` (skipped) without an endpoint.
pub async fn moto_store(test: &str) -> Option<S3Store> {
    let endpoint = moto_endpoint(test)?;
    reset_once(&endpoint).await;
    let client = moto_settings(&endpoint).s3_client().await;
    let bucket = unique_name("et-bucket");
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket on moto");
    Some(S3Store::new(client, bucket))
}

/// A fresh queue on moto, or `None` (skipped) without an endpoint.
pub async fn moto_queue(test: &str) -> Option<SqsQueue> {
    let endpoint = moto_endpoint(test)?;
    reset_once(&endpoint).await;
    let client = moto_settings(&endpoint).sqs_client().await;
    let name = unique_name("et-queue");
    let url = client
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .expect("create queue on moto")
        .queue_url
        .expect("queue url");
    Some(SqsQueue::new(client, url))
}
pub mod quota_cloudfront;
