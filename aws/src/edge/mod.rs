//! The edge handler wired to S3 and SQS, shared by the two AWS entry points: the
//! Lambda@Edge addon (`edge/src/lib.rs`, config from the bundle's `edgethumb.json`) and the
//! regional `lambda_runtime` binary (`edge/src/main.rs`, config from the environment).
//!
//! Everything here happens once per container (cold start) except `handle_*`, so the
//! clients, the per-region S3 client cache and the runtime are reused by every event.

mod adapters;

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tracing::{error, warn};

use edgethumb::edge::EdgeHandler;
use edgethumb::edge::cloudfront::{Headers, Response, header};
use edgethumb::edge::config::{ConfigError, EdgeConfig};
use edgethumb::metrics::{EmfStdout, MetricsSink, Observation};

pub use adapters::{AwsEdgeAdapters, RegionCache, S3OriginStores};

use crate::sqs::SqsQueue;

/// Environment variable naming the config file (regional deployment, local runs).
pub const CONFIG_PATH_ENV: &str = "EDGETHUMB_CONFIG";
/// Environment variable holding the config JSON itself (regional deployment).
pub const CONFIG_JSON_ENV: &str = "EDGETHUMB_CONFIG_JSON";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no edge configuration: set {CONFIG_PATH_ENV} (a path) or {CONFIG_JSON_ENV} (JSON)")]
    NoConfig,
}

/// The edge handler over S3 and SQS.
pub struct EdgeService {
    handler: EdgeHandler<SqsQueue, S3OriginStores>,
}

impl EdgeService {
    /// Build the clients for this config. No network I/O: credentials and connections are
    /// resolved by the first request, so a cold start pays only for what it uses.
    ///
    /// Metrics go out as CloudWatch EMF lines on stdout; this container's cold start is
    /// the first of them.
    pub async fn from_config(config: EdgeConfig) -> Self {
        let started = std::time::Instant::now();
        let AwsEdgeAdapters { queue, stores } = AwsEdgeAdapters::new(&config).await;
        let metrics: Arc<dyn MetricsSink> = Arc::new(EmfStdout);
        metrics.record(
            &Observation::new("edge")
                .count(&edgethumb::metrics::EDGE_COLD_STARTS, true)
                .duration(&edgethumb::metrics::EDGE_INIT_TIME, started.elapsed()),
        );
        EdgeService {
            handler: EdgeHandler::new(config, queue, stores).with_metrics(metrics),
        }
    }

    pub async fn from_config_file(path: &Path) -> Result<Self, ServiceError> {
        Ok(Self::from_config(EdgeConfig::from_file(path)?).await)
    }

    /// `EDGETHUMB_CONFIG` (a path) or else `EDGETHUMB_CONFIG_JSON` (the JSON itself).
    pub async fn from_env() -> Result<Self, ServiceError> {
        if let Some(path) = std::env::var_os(CONFIG_PATH_ENV) {
            return Self::from_config_file(&PathBuf::from(path)).await;
        }
        match std::env::var(CONFIG_JSON_ENV) {
            Ok(json) => Ok(Self::from_config(EdgeConfig::from_json(&json, CONFIG_JSON_ENV)?).await),
            Err(_) => Err(ServiceError::NoConfig),
        }
    }

    pub fn config(&self) -> &EdgeConfig {
        self.handler.config()
    }

    /// The generated response's JSON, or `None` for "return CloudFront's response as it
    /// is". An event we cannot parse is passed through (and logged): whatever CloudFront
    /// got from S3 is a better answer than an error we made up.
    pub async fn handle_json(&self, event_json: &str) -> Option<String> {
        match self.handler.handle_json(event_json).await {
            Ok(generated) => generated,
            Err(e) => {
                warn!(event = "edge.unparsable_event", error = %e, "passing the response through");
                None
            }
        }
    }

    /// The Lambda response for an event given as a JSON value: the generated response, or
    /// the event's own `Records[0].cf.response` untouched.
    pub async fn handle_value(&self, event: Value) -> Value {
        let generated = match serde_json::to_string(&event) {
            Ok(text) => self.handle_json(&text).await,
            Err(_) => None,
        };
        if let Some(text) = generated {
            match serde_json::from_str(&text) {
                Ok(value) => return value,
                Err(e) => error!(event = "edge.bad_generated_response", error = %e),
            }
        }
        event
            .pointer("/Records/0/cf/response")
            .cloned()
            .unwrap_or(Value::Null)
    }
}

/// The Tokio runtime for the edge: one I/O worker is enough for one event at a time (a
/// Lambda container never runs two), rendering runs on the blocking pool, and fewer threads
/// start faster.
pub fn edge_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(8)
        .thread_name("edgethumb")
        .enable_all()
        .build()
}

pub use crate::logging::init_json_logs;

/// The response for a handler that panicked: 500, not cached, and logged, because a panic
/// must never reach CloudFront as a crashed function (which it would answer with a 502
/// and, worse, count against the function's error rate).
pub fn panic_response(payload: &(dyn Any + Send)) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    error!(event = "edge.panic", panic = message.as_str());
    let mut headers = Headers::new();
    header(&mut headers, "Content-Type", "text/plain; charset=utf-8");
    header(&mut headers, "Cache-Control", "no-store");
    header(&mut headers, "X-Edgethumb", "error");
    let response = Response {
        status: "500".into(),
        status_description: Some("Internal Server Error".into()),
        headers,
        body: Some("internal error\n".into()),
        body_encoding: Some("text".into()),
    };
    serde_json::to_string(&response).unwrap_or_else(|_| {
        r#"{"status":"500","statusDescription":"Internal Server Error","headers":{}}"#.into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service whose endpoint answers nothing: these cases never reach S3 or SQS.
    async fn offline_service() -> EdgeService {
        let config = EdgeConfig::from_json(
            r#"{"queue_url": "http://127.0.0.1:9/1/q", "queue_region": "us-east-1",
                "endpoint_url": "http://127.0.0.1:9"}"#,
            "test",
        )
        .unwrap();
        EdgeService::from_config(config).await
    }

    fn sample(name: &str) -> Value {
        let path = format!(
            "{}/../events/origin-response-{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn values_pass_through_untouched_or_become_the_generated_response() {
        let service = offline_service().await;
        let hit = sample("hit-200");
        let expected = hit["Records"][0]["cf"]["response"].clone();
        assert_eq!(service.handle_value(hit).await, expected);
        let bad = service.handle_value(sample("invalid-params")).await;
        assert_eq!(bad["status"], "400", "{bad}");
        assert_eq!(bad["bodyEncoding"], "text");
    }

    #[tokio::test]
    async fn an_unparsable_event_is_passed_through() {
        let service = offline_service().await;
        assert_eq!(service.handle_json("{\"Records\": 7}").await, None);
        assert_eq!(service.handle_json("not json").await, None);
        let odd = serde_json::json!({"Records": [{"cf": {"response": {"status": "404"}}}]});
        assert_eq!(
            service.handle_value(odd).await,
            serde_json::json!({"status": "404"})
        );
    }

    #[tokio::test]
    async fn config_from_the_environment_names_both_variables_when_missing() {
        // Only asserts the message; the variables are not set in the test environment.
        if std::env::var_os(CONFIG_PATH_ENV).is_none()
            && std::env::var_os(CONFIG_JSON_ENV).is_none()
        {
            let err = EdgeService::from_env().await.err().unwrap().to_string();
            assert!(
                err.contains(CONFIG_PATH_ENV) && err.contains(CONFIG_JSON_ENV),
                "{err}"
            );
        }
    }

    #[test]
    fn panic_response_is_a_valid_uncached_500() {
        let payload: Box<dyn Any + Send> = Box::new("boom");
        let r: Response = serde_json::from_str(&panic_response(payload.as_ref())).unwrap();
        assert_eq!(r.status, "500");
        assert_eq!(r.headers["cache-control"][0].value, "no-store");
        let payload: Box<dyn Any + Send> = Box::new(String::from("owned"));
        let r: Response = serde_json::from_str(&panic_response(payload.as_ref())).unwrap();
        assert_eq!(r.status, "500");
    }
}
