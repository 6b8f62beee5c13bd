//! Shared AWS configuration: region, optional endpoint, path-style, and client construction.
//!
//! One [`AwsSettings`] builds both the S3 and the SQS client, because every deployment we
//! support (AWS itself, moto in tests, an S3/SQS-compatible server in local mode) serves
//! both behind the same endpoint. Construction is explicit (no hidden environment lookups
//! except the documented ones) because the edge addon has no environment variables at all:
//! its settings are baked into the bundle.
//!
//! Build SDK clients through [`AwsSettings`] (or give them [`shared_http_client`]): with the
//! SDK's default features off, a client configured by hand has no HTTP client at all and
//! every call fails with "No HTTP client was available".
//!
//! The HTTPS client is rustls with *ring* rather than the SDK default (aws-lc-rs): the edge
//! addon is cross-built for glibc 2.17 with zig, and aws-lc-sys is the part of that build
//! that breaks. One client (one connection pool) is shared by every SDK client in the
//! process.
//!
//! Retries: the SDK's standard retry strategy, configured explicitly by [`CallLimits`], is the
//! one retry layer for failed calls (5xx, throttling, timeouts, broken connections). Nothing
//! above it re-sends a call that failed; `SqsQueue::send_batch` only re-sends the *entries*
//! SQS reported as failed inside a call that succeeded. `docs/deploy.md` ("Retries and
//! timeouts") gives the worst cases in attempts and seconds.

use std::sync::OnceLock;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::Credentials;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

/// The standard variable the AWS SDKs and CLI read for a custom endpoint.
pub const ENDPOINT_ENV: &str = "AWS_ENDPOINT_URL";

/// How many times, and for how long, one SDK call (an S3 GetObject, an SQS SendMessage...)
/// may try before it fails: the SDK's standard retry mode (exponential backoff with full
/// jitter) plus its timeouts. Each entry point picks its own: the worker can wait, the edge
/// answers a viewer inside Lambda@Edge's 30 s.
///
/// Worst case of one call: `max_attempts` HTTP requests and at most `operation_timeout`
/// seconds (each attempt at most `attempt_timeout`; the waits between them at most
/// `initial_backoff × 2^(n-1)`, capped at `max_backoff`). The timeouts cover sending the
/// request and receiving the response's headers; a streamed body (an S3 GetObject's) is
/// read after the call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// HTTP requests per call, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Upper bound of the first wait (the actual wait is random in 0..this), doubling after.
    pub initial_backoff: Duration,
    /// No single wait is longer, even when the service asks for more (`x-amz-retry-after`).
    pub max_backoff: Duration,
    /// To open a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// One HTTP request until its response's headers. Above 20 s for the worker: an SQS
    /// long poll holds the request open that long.
    pub attempt_timeout: Duration,
    /// The whole call, retries and waits included.
    pub operation_timeout: Duration,
}

impl CallLimits {
    /// The worker Lambda, `edgethumb work` and `edgethumb enqueue`: off the request path, so
    /// a failing service gets three tries over several seconds before a job is retried by
    /// SQS (or an entry is reported failed).
    pub const WORKER: CallLimits = CallLimits {
        max_attempts: 3,
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(3),
        attempt_timeout: Duration::from_secs(30),
        operation_timeout: Duration::from_secs(90),
    };

    /// Lambda@Edge (and the regional edge Lambda): a viewer is waiting and CloudFront gives
    /// the function 30 s. A miss is one S3 GetObject, then the render and one SQS
    /// SendMessage side by side; each call is bounded at 4 s and 2 attempts, so the fetch
    /// and the enqueue together cost at most 8 s beside the render deadline
    /// (`render_deadline_ms`, 20 s by default). A job that could not be enqueued is not lost:
    /// the next miss enqueues it again.
    pub const EDGE: CallLimits = CallLimits {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(1),
        attempt_timeout: Duration::from_millis(1_800),
        operation_timeout: Duration::from_secs(4),
    };

    /// The SDK's standard retry strategy with these bounds.
    pub fn retry_config(&self) -> RetryConfig {
        RetryConfig::standard()
            .with_max_attempts(self.max_attempts)
            .with_initial_backoff(self.initial_backoff)
            .with_max_backoff(self.max_backoff)
    }

    pub fn timeout_config(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout)
            .operation_attempt_timeout(self.attempt_timeout)
            .operation_timeout(self.operation_timeout)
            .build()
    }

    /// The longest one call can take: the operation timeout, or less when the attempts and
    /// the longest waits between them add up to less.
    pub fn worst_case(&self) -> Duration {
        let attempts = self.max_attempts.max(1);
        let mut waits = Duration::ZERO;
        for retry in 1..attempts {
            let doubled = self
                .initial_backoff
                .saturating_mul(1u32.checked_shl(retry - 1).unwrap_or(u32::MAX));
            waits += doubled.min(self.max_backoff);
        }
        (self.attempt_timeout.saturating_mul(attempts) + waits).min(self.operation_timeout)
    }
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits::WORKER
    }
}

/// Where and how to reach S3 and SQS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    /// e.g. `us-east-1`. Explicit, so the edge never probes IMDS or profiles for it.
    pub region: String,
    /// A custom endpoint for both S3 and SQS (moto, MinIO + ElasticMQ...). `None` means
    /// AWS itself, unless `AWS_ENDPOINT_URL` is set (see [`AwsSettings::resolved_endpoint`]).
    pub endpoint_url: Option<String>,
    /// `http://host/bucket/key` instead of `http://bucket.host/key`. Needed for any endpoint
    /// given as an IP address (moto on `127.0.0.1`); forced on whenever an endpoint is set.
    pub force_path_style: bool,
    /// Fixed credentials instead of the standard chain (env, profile, web identity, ECS
    /// container, IMDS). For tests and S3-compatible servers; Lambda uses the chain (env).
    pub static_credentials: Option<StaticCredentials>,
    /// Retries and timeouts of every call made by the clients built here.
    pub call_limits: CallLimits,
}

/// An access key pair, for [`AwsSettings::static_credentials`].
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for StaticCredentials {
    /// Never print the secret (settings end up in logs).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

impl AwsSettings {
    /// AWS itself in `region`, credentials from the standard chain.
    pub fn new(region: impl Into<String>) -> Self {
        AwsSettings {
            region: region.into(),
            endpoint_url: None,
            force_path_style: false,
            static_credentials: None,
            call_limits: CallLimits::WORKER,
        }
    }

    /// Other retry and timeout bounds than the worker's ([`CallLimits::EDGE`], tests).
    pub fn with_call_limits(mut self, limits: CallLimits) -> Self {
        self.call_limits = limits;
        self
    }

    /// A custom endpoint (also turns on path-style addressing, which every local
    /// S3-compatible server needs).
    pub fn with_endpoint(mut self, endpoint_url: impl Into<String>) -> Self {
        self.endpoint_url = Some(endpoint_url.into());
        self.force_path_style = true;
        self
    }

    pub fn with_static_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.static_credentials = Some(StaticCredentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
        });
        self
    }

    /// The endpoint to use: the configured one, else a non-empty `AWS_ENDPOINT_URL`.
    pub fn resolved_endpoint(&self) -> Option<String> {
        self.resolved_endpoint_with(|name| std::env::var(name).ok())
    }

    fn resolved_endpoint_with(&self, env: impl Fn(&str) -> Option<String>) -> Option<String> {
        self.endpoint_url
            .clone()
            .or_else(|| env(ENDPOINT_ENV))
            .filter(|e| !e.trim().is_empty())
    }

    /// Path-style is forced whenever any custom endpoint is in use, including one that came
    /// from `AWS_ENDPOINT_URL`: virtual-host addressing cannot work against an IP address.
    fn path_style(&self, endpoint: Option<&str>) -> bool {
        self.force_path_style || endpoint.is_some()
    }

    /// The shared SDK configuration. Loading is lazy about credentials: nothing is fetched
    /// until the first request is signed.
    pub async fn sdk_config(&self) -> SdkConfig {
        let endpoint = self.resolved_endpoint();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .retry_config(self.call_limits.retry_config())
            .timeout_config(self.call_limits.timeout_config())
            .http_client(shared_http_client());
        if let Some(endpoint) = &endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        if let Some(creds) = &self.static_credentials {
            loader = loader.credentials_provider(Credentials::new(
                creds.access_key_id.clone(),
                creds.secret_access_key.clone(),
                None,
                None,
                "edgethumb-static",
            ));
        }
        loader.load().await
    }

    /// An S3 client honouring the endpoint and path-style settings.
    pub async fn s3_client(&self) -> aws_sdk_s3::Client {
        let config = self.sdk_config().await;
        self.s3_client_from(&config)
    }

    /// An S3 client from an already loaded [`SdkConfig`] (share one between S3 and SQS).
    pub fn s3_client_from(&self, config: &SdkConfig) -> aws_sdk_s3::Client {
        let path_style = self.path_style(config.endpoint_url());
        let s3_config = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(path_style)
            .build();
        aws_sdk_s3::Client::from_conf(s3_config)
    }

    pub async fn sqs_client(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk_config().await)
    }

    /// A CloudFront client (the worker's invalidations). CloudFront is global: the SDK
    /// signs for us-east-1 whatever the region.
    #[cfg(feature = "worker")]
    pub async fn cloudfront_client(&self) -> aws_sdk_cloudfront::Client {
        aws_sdk_cloudfront::Client::new(&self.sdk_config().await)
    }

    /// Both clients from one configuration load.
    pub async fn clients(&self) -> (aws_sdk_s3::Client, aws_sdk_sqs::Client) {
        let config = self.sdk_config().await;
        (
            self.s3_client_from(&config),
            aws_sdk_sqs::Client::new(&config),
        )
    }
}

/// The process-wide HTTPS client (rustls + ring). Built once so every SDK client shares one
/// connection pool and the system roots are loaded once.
pub fn shared_http_client() -> SharedHttpClient {
    static CLIENT: OnceLock<SharedHttpClient> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                .build_https()
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_precedence() {
        let env = |v: Option<&'static str>| move |_: &str| v.map(String::from);
        let plain = AwsSettings::new("eu-west-1");
        assert_eq!(plain.resolved_endpoint_with(env(None)), None);
        assert_eq!(
            plain.resolved_endpoint_with(env(Some("http://127.0.0.1:5000"))),
            Some("http://127.0.0.1:5000".into())
        );
        assert_eq!(plain.resolved_endpoint_with(env(Some("  "))), None);
        let explicit = AwsSettings::new("eu-west-1").with_endpoint("http://127.0.0.1:1");
        assert!(explicit.force_path_style);
        assert_eq!(
            explicit.resolved_endpoint_with(env(Some("http://other"))),
            Some("http://127.0.0.1:1".into())
        );
        assert!(plain.path_style(Some("http://127.0.0.1:5000")));
        assert!(!plain.path_style(None));
    }

    #[test]
    fn debug_hides_the_secret() {
        let s = AwsSettings::new("us-east-1").with_static_credentials("AKIDEXAMPLE", "s3cr3t");
        let printed = format!("{s:?}");
        assert!(printed.contains("AKIDEXAMPLE"));
        assert!(!printed.contains("s3cr3t"));
    }

    #[tokio::test]
    async fn clients_build_without_network() {
        let settings = AwsSettings::new("us-east-1")
            .with_endpoint("http://127.0.0.1:9")
            .with_static_credentials("a", "b");
        let config = settings.sdk_config().await;
        assert_eq!(config.endpoint_url(), Some("http://127.0.0.1:9"));
        assert_eq!(config.region().map(|r| r.as_ref()), Some("us-east-1"));
        let (s3, sqs) = settings.clients().await;
        for retry in [
            s3.config().retry_config().cloned(),
            sqs.config().retry_config().cloned(),
        ] {
            assert_eq!(retry, Some(CallLimits::WORKER.retry_config()));
        }
        assert_eq!(
            sqs.config()
                .timeout_config()
                .and_then(|t| t.operation_timeout()),
            Some(CallLimits::WORKER.operation_timeout)
        );
    }

    #[test]
    fn worst_cases_are_bounded() {
        // 3 attempts of 30 s and waits of ≤ 1 s and ≤ 2 s, capped by the 90 s operation timeout.
        assert_eq!(CallLimits::WORKER.worst_case(), Duration::from_secs(90));
        // 2 attempts of 1.8 s and one wait of ≤ 0.1 s: 3.7 s, under the 4 s operation timeout.
        assert_eq!(CallLimits::EDGE.worst_case(), Duration::from_millis(3_700));
        let one = CallLimits {
            max_attempts: 1,
            ..CallLimits::EDGE
        };
        assert_eq!(one.worst_case(), Duration::from_millis(1_800));
    }
}
