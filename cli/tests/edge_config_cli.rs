//! `edgethumb edge-config generate / check`: the deploy scripts' way to write and check
//! `edgethumb.json`, with the edge's own `EdgeConfig` (keys and bounds stated once).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)] // test code

use std::io::Write;
use std::process::{Command, Output, Stdio};

use edgethumb::edge::EdgeConfig;
use edgethumb::edge::config::{LAMBDA_EDGE_RESPONSE_LIMIT, MIN_RESPONSE_BUDGET};

fn edgethumb(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgethumb"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refusal may come before stdin is read: a broken pipe is not the test's failure.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

const OUTPUTS: &str = r#"[{"OutputKey": "QueueUrl", "OutputValue": "https://sqs.us-east-1.amazonaws.com/1/q"},
    {"OutputKey": "QueueRegion", "OutputValue": "us-east-1"},
    {"OutputKey": "BucketRegion", "OutputValue": "us-west-2"}]"#;

#[test]
fn generate_writes_what_the_edge_reads_and_check_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("settings.json");
    std::fs::write(&settings, r#"{"response_budget_bytes": 500000}"#).unwrap();
    let out = dir.path().join("edgethumb.json");
    let result = edgethumb(
        &[
            "edge-config",
            "generate",
            "--outputs",
            "-",
            "--settings",
            settings.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        OUTPUTS,
    );
    assert!(result.status.success(), "{result:?}");
    let config = EdgeConfig::from_file(&out).unwrap();
    assert_eq!(config.queue_url, "https://sqs.us-east-1.amazonaws.com/1/q");
    assert_eq!(config.bucket_region.as_deref(), Some("us-west-2"));
    assert_eq!(config.response_budget_bytes, 500_000);
    let check = edgethumb(&["edge-config", "check", out.to_str().unwrap()], "");
    assert!(check.status.success(), "{check:?}");
}

#[test]
fn check_applies_the_edges_bounds() {
    let with_budget = |budget: usize| {
        format!(r#"{{"queue_url": "u", "queue_region": "r", "response_budget_bytes": {budget}}}"#)
    };
    for (budget, ok) in [
        (MIN_RESPONSE_BUDGET - 1, false),
        (MIN_RESPONSE_BUDGET, true),
        (LAMBDA_EDGE_RESPONSE_LIMIT, true),
        (LAMBDA_EDGE_RESPONSE_LIMIT + 1, false),
    ] {
        let result = edgethumb(
            &["edge-config", "check", "-", "--name", "baked.json"],
            &with_budget(budget),
        );
        assert_eq!(result.status.success(), ok, "{budget}: {result:?}");
        if !ok {
            let stderr = String::from_utf8_lossy(&result.stderr);
            assert!(
                stderr.contains("baked.json")
                    && stderr.contains(&format!(
                        "must be between {MIN_RESPONSE_BUDGET} and {LAMBDA_EDGE_RESPONSE_LIMIT}"
                    )),
                "{stderr}"
            );
        }
    }
    let typo = edgethumb(
        &["edge-config", "check", "-"],
        r#"{"queue_url": "u", "queue_region": "r", "queue_ulr": "x"}"#,
    );
    assert!(!typo.status.success());
    assert!(String::from_utf8_lossy(&typo.stderr).contains("queue_ulr"));
}

#[test]
fn generate_refuses_settings_that_belong_to_the_stack() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("settings.json");
    std::fs::write(&settings, r#"{"queue_url": "elsewhere"}"#).unwrap();
    let out = dir.path().join("edgethumb.json");
    let result = edgethumb(
        &[
            "edge-config",
            "generate",
            "--outputs",
            "-",
            "--settings",
            settings.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        OUTPUTS,
    );
    assert!(!result.status.success());
    assert!(String::from_utf8_lossy(&result.stderr).contains("queue_url cannot be set"));
    assert!(!out.exists());
}
