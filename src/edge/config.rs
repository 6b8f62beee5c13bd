//! `edgethumb.json`: the edge's configuration, baked into the bundle.
//!
//! Lambda@Edge has no environment variables, so the deploy script writes this file beside
//! `index.mjs`. It is read once per container; a missing file, bad JSON, an unknown key or
//! an out-of-range value fails the cold start with a message naming the problem, rather
//! than serving with a silently wrong setting.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::pipeline::Limits;

/// Lambda@Edge rejects generated responses over 1 MB (headers and body).
pub const LAMBDA_EDGE_RESPONSE_LIMIT: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// SQS queue for render jobs.
    pub queue_url: String,
    pub queue_region: String,
    /// Region of the bucket when the origin domain does not say (global endpoint).
    #[serde(default)]
    pub bucket_region: Option<String>,
    /// One endpoint for S3 and SQS (tests run the same bundle against moto).
    #[serde(default)]
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
        if !(16 * 1024..=LAMBDA_EDGE_RESPONSE_LIMIT).contains(&self.response_budget_bytes) {
            return Err(format!(
                "response_budget_bytes {} must be between 16384 and {LAMBDA_EDGE_RESPONSE_LIMIT}",
                self.response_budget_bytes
            ));
        }
        if self.max_source_bytes == 0 || self.max_source_pixels == 0 {
            return Err("max_source_bytes and max_source_pixels must be positive".into());
        }
        if !(1_000..=29_000).contains(&self.render_deadline_ms) {
            return Err("render_deadline_ms must be between 1000 and 29000".into());
        }
        if let Some(endpoint) = &self.endpoint_url
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(format!("endpoint_url {endpoint:?} is not an http(s) URL"));
        }
        Ok(())
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
}
