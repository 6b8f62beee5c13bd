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

use std::sync::OnceLock;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::Credentials;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

/// The standard variable the AWS SDKs and CLI read for a custom endpoint.
pub const ENDPOINT_ENV: &str = "AWS_ENDPOINT_URL";

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
        }
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
        let (_s3, _sqs) = settings.clients().await;
    }
}
