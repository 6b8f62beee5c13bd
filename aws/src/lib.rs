//! edgethumb's AWS adapters: the `ObjectStore` port over S3 ([`S3Store`]), the `JobQueue`
//! port over SQS ([`SqsQueue`]), the SDK settings they share ([`AwsSettings`]: region,
//! endpoint, retries, the rustls HTTP client), and the wiring of the core's handlers into
//! the AWS entry points: [`edge`] for the Lambda@Edge addon and the regional edge Lambda
//! (feature `edge`), [`worker`] for the SQS-triggered worker (feature `worker`).
//!
//! The core crate (`edgethumb`) knows nothing of this crate; the local adapters (a
//! directory, a spool queue) live in the core behind its `local` feature.

#[cfg(feature = "worker")]
pub mod cloudfront;
#[cfg(feature = "edge")]
pub mod edge;
pub mod logging;
pub mod s3;
pub mod settings;
pub mod sqs;
#[cfg(feature = "worker")]
pub mod worker;

#[cfg(feature = "worker")]
pub use cloudfront::CloudFrontInvalidator;
pub use logging::init_json_logs;
pub use s3::S3Store;
pub use settings::{AwsSettings, CallLimits, StaticCredentials};
pub use sqs::SqsQueue;
