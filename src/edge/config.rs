//! `edgethumb.json`: the edge's configuration, baked into the bundle.
//!
//! Lambda@Edge has no environment variables, so the deploy script writes this file beside
//! `index.mjs`. It is read once per container; a missing file, bad JSON, an unknown key or
//! an out-of-range value fails the cold start with a message naming the problem, rather
//! than serving with a silently wrong setting.
//!
//! This struct is the one statement of the file's keys and bounds: `edgethumb edge-config
//! generate` writes a deployment's file from the stack's outputs with
//! [`EdgeConfig::for_stack`], and `edgethumb edge-config check` (run by
//! `scripts/check_deploy.py`) validates one with [`EdgeConfig::from_json`], the very parser
//! the edge runs at its cold start.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::edge::budget;
use crate::pipeline::Limits;

/// Lambda@Edge rejects generated responses over 1 MB (headers and body).
pub const LAMBDA_EDGE_RESPONSE_LIMIT: usize = 1_000_000;

/// Smallest `response_budget_bytes`: below it no useful thumbnail fits.
pub const MIN_RESPONSE_BUDGET: usize = 16 * 1024;

/// Keys a deployment takes from its stack's outputs (key, output name), never from the
/// settings file.
pub const FROM_STACK: &[(&str, &str)] = &[
    ("queue_url", "QueueUrl"),
    ("queue_region", "QueueRegion"),
    ("bucket_region", "BucketRegion"),
];
/// Keys only tests set (the same bundle against moto).
pub const TEST_ONLY: &[&str] = &["endpoint_url"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// SQS queue for render jobs.
    pub queue_url: String,
    pub queue_region: String,
    /// Region of the bucket when the origin domain does not say (global endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_region: Option<String>,
    /// One endpoint for S3 and SQS (tests run the same bundle against moto).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Largest serialised response we hand CloudFront.
    #[serde(default = "default_budget")]
    pub response_budget_bytes: usize,
    /// Cache-Control of the provisional copy rendered at the edge.
    #[serde(default = "default_provisional_cache_control")]
    pub provisional_cache_control: String,
    /// Cache-Control of error responses, short so a fixed URL recovers quickly.
    #[serde(default = "default_error_cache_control")]
    pub error_cache_control: String,
    /// Seconds a client should wait after a 503 (over the budget) before retrying.
    #[serde(default = "default_retry_after")]
    pub retry_after_seconds: u32,
    #[serde(default = "default_max_source_bytes")]
    pub max_source_bytes: u64,
    #[serde(default = "default_max_source_pixels")]
    pub max_source_pixels: u64,
    /// Time after which no further re-encode is attempted (Lambda@Edge's limit is 30 s).
    #[serde(default = "default_deadline_ms")]
    pub render_deadline_ms: u64,
    /// Largest output (pixels) the edge encodes as AVIF; bigger `.avif` misses get the
    /// provisional copy as WebP and the worker writes the AVIF. 0: always WebP at the edge.
    #[serde(default = "default_avif_max_pixels")]
    pub avif_max_pixels: u64,
}

fn default_budget() -> usize {
    // Headroom for what CloudFront adds when it serialises the object itself.
    LAMBDA_EDGE_RESPONSE_LIMIT - 8 * 1024
}
fn default_provisional_cache_control() -> String {
    "public, max-age=300".into()
}
fn default_error_cache_control() -> String {
    "public, max-age=10".into()
}
fn default_retry_after() -> u32 {
    5
}
fn default_max_source_bytes() -> u64 {
    Limits::default().max_bytes
}
fn default_max_source_pixels() -> u64 {
    Limits::default().max_pixels
}
fn default_deadline_ms() -> u64 {
    20_000
}
fn default_avif_max_pixels() -> u64 {
    crate::edge::budget::DEFAULT_AVIF_MAX_PIXELS
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read edge config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid edge config {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid edge config {path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl EdgeConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_json(&text, &shown)
    }

    /// Parse and validate; `origin` names the source in error messages.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: EdgeConfig =
            serde_json::from_str(text).map_err(|source| ConfigError::Parse {
                path: origin.to_string(),
                source,
            })?;
        config.validate().map_err(|reason| ConfigError::Invalid {
            path: origin.to_string(),
            reason,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.queue_url.trim().is_empty() {
            return Err("queue_url is empty".into());
        }
        if self.queue_region.trim().is_empty() {
            return Err("queue_region is empty".into());
        }
        if !(MIN_RESPONSE_BUDGET..=LAMBDA_EDGE_RESPONSE_LIMIT).contains(&self.response_budget_bytes)
        {
            return Err(format!(
                "response_budget_bytes {} must be between {MIN_RESPONSE_BUDGET} and \
                 {LAMBDA_EDGE_RESPONSE_LIMIT} (Lambda@Edge's limit for a generated response, \
                 headers included)",
                self.response_budget_bytes
            ));
        }
        if self.max_source_bytes == 0 || self.max_source_pixels == 0 {
            return Err("max_source_bytes and max_source_pixels must be positive".into());
        }
        if !(1_000..=29_000).contains(&self.render_deadline_ms) {
            return Err("render_deadline_ms must be between 1000 and 29000".into());
        }
        if self.avif_max_pixels > budget::MAX_AVIF_MAX_PIXELS {
            return Err(format!(
                "avif_max_pixels must be at most {} (the largest output the grammar allows)",
                budget::MAX_AVIF_MAX_PIXELS
            ));
        }
        if let Some(endpoint) = &self.endpoint_url
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(format!("endpoint_url {endpoint:?} is not an http(s) URL"));
        }
        Ok(())
    }

    /// A deployment's config: the stack's outputs for [`FROM_STACK`]'s keys, then the
    /// settings file's tuning (any other key of this struct but [`TEST_ONLY`]'s), checked as
    /// the edge will check it. `outputs` is what `aws cloudformation describe-stacks` (the
    /// whole answer, or its `Outputs`) or `sam list stack-outputs --output json` prints, or
    /// a plain `{"QueueUrl": ...}` object. `origin` names the settings in error messages.
    pub fn for_stack(outputs: &Value, settings: &Value, origin: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            path: origin.to_string(),
            reason,
        };
        let stack = outputs_by_key(outputs).map_err(|reason| invalid(reason.into()))?;
        let settings = match settings {
            Value::Object(map) => map.clone(),
            Value::Null => Map::new(),
            _ => return Err(invalid("the settings are not a JSON object".into())),
        };
        let fixed: Vec<&str> = FROM_STACK
            .iter()
            .map(|(key, _)| *key)
            .chain(TEST_ONLY.iter().copied())
            .filter(|key| settings.contains_key(*key))
            .collect();
        if !fixed.is_empty() {
            return Err(invalid(format!(
                "{} cannot be set in the settings: the stack gives the queue and regions, and \
                 endpoint_url is for tests",
                fixed.join(", ")
            )));
        }
        let mut missing: Vec<&str> = FROM_STACK
            .iter()
            .map(|(_, output)| *output)
            .filter(|output| stack.get(*output).is_none_or(|v| v.is_empty()))
            .collect();
        missing.sort_unstable();
        if !missing.is_empty() {
            return Err(invalid(format!(
                "stack outputs lack {}; is this the edgethumb stack?",
                missing.join(", ")
            )));
        }
        let mut config = settings;
        for (key, output) in FROM_STACK {
            if let Some(value) = stack.get(*output) {
                config.insert((*key).to_string(), Value::String(value.clone()));
            }
        }
        Self::from_json(&Value::Object(config).to_string(), origin)
    }

    /// The file as written: every key, defaults included, so the file says what the edge
    /// runs with. Parses back to the same config.
    pub fn to_json_pretty(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_pixels: self.max_source_pixels,
            max_bytes: self.max_source_bytes,
        }
    }

    pub fn render_deadline(&self) -> Duration {
        Duration::from_millis(self.render_deadline_ms)
    }
}

/// Stack outputs as `{name: value}`, from any of the shapes the AWS tools print.
fn outputs_by_key(
    outputs: &Value,
) -> Result<std::collections::BTreeMap<String, String>, &'static str> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let outputs = match outputs.pointer("/Stacks/0") {
        Some(stack) => stack.get("Outputs").unwrap_or(&Value::Null),
        None => outputs,
    };
    match outputs {
        Value::Array(list) => list
            .iter()
            .map(|o| match (o.get("OutputKey"), o.get("OutputValue")) {
                (Some(k), Some(v)) => Ok((text(k), text(v))),
                _ => Err("a stack output lacks OutputKey or OutputValue"),
            })
            .collect(),
        Value::Object(map) => Ok(map.iter().map(|(k, v)| (k.clone(), text(v))).collect()),
        Value::Null => Ok(Default::default()),
        _ => Err("stack outputs are neither a list of OutputKey/OutputValue nor an object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        r#"{"queue_url": "https://sqs.us-east-1.amazonaws.com/1/q", "queue_region": "us-east-1"}"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = EdgeConfig::from_json(MINIMAL, "t").unwrap();
        assert!(c.response_budget_bytes < LAMBDA_EDGE_RESPONSE_LIMIT);
        assert_eq!(c.limits(), Limits::default());
        assert_eq!(c.endpoint_url, None);
        assert_eq!(c.avif_max_pixels, budget::DEFAULT_AVIF_MAX_PIXELS);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let text = r#"{"queue_url": "u", "queue_region": "r", "queue_ulr": "typo"}"#;
        let err = EdgeConfig::from_json(text, "edgethumb.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("queue_ulr"), "{err}");
        assert!(err.contains("edgethumb.json"), "{err}");
    }

    #[test]
    fn invalid_values_are_refused() {
        for (text, needle) in [
            (r#"{"queue_url": "", "queue_region": "r"}"#, "queue_url"),
            (r#"{"queue_region": "r"}"#, "queue_url"),
            (
                r#"{"queue_url": "u", "queue_region": "r", "response_budget_bytes": 2000000}"#,
                "response_budget_bytes",
            ),
            (
                r#"{"queue_url": "u", "queue_region": "r", "endpoint_url": "ftp://x"}"#,
                "endpoint_url",
            ),
            (
                r#"{"queue_url": "u", "queue_region": "r", "max_source_bytes": 0}"#,
                "max_source",
            ),
            (
                r#"{"queue_url": "u", "queue_region": "r", "avif_max_pixels": 16777217}"#,
                "avif_max_pixels",
            ),
            ("not json", "invalid"),
        ] {
            let err = EdgeConfig::from_json(text, "t").unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = EdgeConfig::from_file(Path::new("/nonexistent/edgethumb.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/edgethumb.json"), "{err}");
    }

    fn outputs() -> Value {
        serde_json::json!([
            {"OutputKey": "DistributionDomainName", "OutputValue": "d1.cloudfront.net"},
            {"OutputKey": "QueueUrl", "OutputValue": "https://sqs.us-east-1.amazonaws.com/1/q"},
            {"OutputKey": "QueueRegion", "OutputValue": "us-east-1"},
            {"OutputKey": "BucketRegion", "OutputValue": "eu-west-1"},
        ])
    }

    #[test]
    fn for_stack_takes_the_queue_from_the_stack_and_tuning_from_the_settings() {
        let settings =
            serde_json::json!({"response_budget_bytes": 900_000, "render_deadline_ms": 15_000});
        let c = EdgeConfig::for_stack(&outputs(), &settings, "s.json").unwrap();
        assert_eq!(c.queue_url, "https://sqs.us-east-1.amazonaws.com/1/q");
        assert_eq!(c.queue_region, "us-east-1");
        assert_eq!(c.bucket_region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.response_budget_bytes, 900_000);
        assert_eq!(c.render_deadline_ms, 15_000);
        assert_eq!(c.endpoint_url, None);
        // Written in full, and read back the same by the edge's own parser.
        let text = c.to_json_pretty();
        assert!(!text.contains("endpoint_url"), "{text}");
        assert_eq!(EdgeConfig::from_json(&text, "t").unwrap(), c);
        // Other shapes of the same outputs.
        let described = serde_json::json!({"Stacks": [{"Outputs": outputs()}]});
        assert_eq!(
            EdgeConfig::for_stack(&described, &settings, "s.json").unwrap(),
            c
        );
        let plain = serde_json::json!({"QueueUrl": "u", "QueueRegion": "r", "BucketRegion": "b"});
        assert_eq!(
            EdgeConfig::for_stack(&plain, &Value::Null, "s")
                .unwrap()
                .queue_url,
            "u"
        );
    }

    #[test]
    fn for_stack_refuses_what_the_edge_would_refuse() {
        for (settings, needle) in [
            (serde_json::json!({"queue_ulr": "x"}), "queue_ulr"),
            (
                serde_json::json!({"queue_url": "x"}),
                "queue_url cannot be set",
            ),
            (
                serde_json::json!({"endpoint_url": "http://127.0.0.1:1"}),
                "endpoint_url cannot be set",
            ),
            (
                serde_json::json!({"response_budget_bytes": MIN_RESPONSE_BUDGET - 1}),
                "must be between 16384 and 1000000",
            ),
            (
                serde_json::json!({"response_budget_bytes": LAMBDA_EDGE_RESPONSE_LIMIT + 1}),
                "response_budget_bytes 1000001",
            ),
            (
                serde_json::json!({"response_budget_bytes": "990000"}),
                "invalid type",
            ),
            (
                serde_json::json!({"render_deadline_ms": 30_000}),
                "render_deadline_ms",
            ),
            (serde_json::json!([1]), "not a JSON object"),
        ] {
            let err = EdgeConfig::for_stack(&outputs(), &settings, "s.json")
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{settings}: {err}");
            assert!(err.contains("s.json"), "{err}");
        }
        let err = EdgeConfig::for_stack(
            &serde_json::json!([{"OutputKey": "Something", "OutputValue": "else"}]),
            &Value::Null,
            "s",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("lack BucketRegion, QueueRegion, QueueUrl"),
            "{err}"
        );
    }

    #[test]
    fn the_bounds_are_inclusive() {
        for budget in [MIN_RESPONSE_BUDGET, LAMBDA_EDGE_RESPONSE_LIMIT] {
            let text = format!(
                r#"{{"queue_url": "u", "queue_region": "r", "response_budget_bytes": {budget}}}"#
            );
            assert!(EdgeConfig::from_json(&text, "t").is_ok(), "{budget}");
        }
    }
}
