//! The CloudFront origin-response logic shared by the Lambda@Edge addon, the regional
//! `lambda_runtime` binary and `edgethumb serve`.

pub mod budget;
pub mod cloudfront;
pub mod config;
pub mod handler;
pub mod origin;

pub use config::{ConfigError, EdgeConfig};
pub use handler::{EdgeHandler, EdgeOutcome, MissTimings, OriginStores};
pub use origin::{BucketLocation, OriginError, bucket_location};
