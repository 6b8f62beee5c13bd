//! The `CdnInvalidator` port over CloudFront's CreateInvalidation: one request per worker
//! batch (see `edgethumb::cdn::plan` for the paths and the quotas they respect).

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_cloudfront::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_cloudfront::types::{InvalidationBatch, Paths};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use edgethumb::cdn::{CdnError, CdnInvalidator};

/// Invalidations on one distribution.
#[derive(Clone)]
pub struct CloudFrontInvalidator {
    client: aws_sdk_cloudfront::Client,
    distribution: String,
}

impl CloudFrontInvalidator {
    pub fn new(client: aws_sdk_cloudfront::Client, distribution: impl Into<String>) -> Self {
        CloudFrontInvalidator {
            client,
            distribution: distribution.into(),
        }
    }

    fn error<E>(&self, err: &SdkError<E, HttpResponse>) -> CdnError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let message = DisplayErrorContext(err).to_string();
        let distribution = self.distribution.clone();
        if err.code() == Some("TooManyInvalidationsInProgress") {
            return CdnError::Throttled {
                distribution,
                message,
            };
        }
        let retryable = match err {
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => true,
            // Throttling and CloudFront's own failures; not AccessDenied, NoSuchDistribution,
            // InvalidArgument or BatchTooLarge, which the same request meets again.
            _ => err
                .raw_response()
                .is_some_and(|r| matches!(r.status().as_u16(), 429 | 500..=599)),
        };
        CdnError::Backend {
            distribution,
            retryable,
            message,
        }
    }
}

/// A reference CloudFront has not seen: it treats a repeated reference with the same paths
/// as the same request, and with other paths as an error.
fn caller_reference(paths: &[String]) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let digest = edgethumb::store::md5_etag(paths.join("\n").as_bytes());
    format!("edgethumb-{nanos}-{}", digest.trim_matches('"'))
}

#[async_trait]
impl CdnInvalidator for CloudFrontInvalidator {
    fn distribution(&self) -> &str {
        &self.distribution
    }

    async fn invalidate(&self, paths: &[String]) -> Result<String, CdnError> {
        let invalid = |message: String| CdnError::Backend {
            distribution: self.distribution.clone(),
            retryable: false,
            message,
        };
        let quantity = i32::try_from(paths.len()).map_err(|e| invalid(e.to_string()))?;
        let reference = caller_reference(paths);
        let batch = Paths::builder()
            .quantity(quantity)
            .set_items(Some(paths.to_vec()))
            .build()
            .and_then(|paths| {
                InvalidationBatch::builder()
                    .paths(paths)
                    .caller_reference(reference)
                    .build()
            })
            .map_err(|e| invalid(e.to_string()))?;
        let out = self
            .client
            .create_invalidation()
            .distribution_id(&self.distribution)
            .invalidation_batch(batch)
            .send()
            .await
            .map_err(|e| self.error(&e))?;
        Ok(out
            .invalidation()
            .map(|i| i.id().to_string())
            .unwrap_or_default())
    }
}
