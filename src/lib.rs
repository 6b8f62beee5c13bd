//! edgethumb: on-the-fly image thumbnails for CloudFront, the core.
//!
//! The grammar, geometry, pipeline and job message, the `ObjectStore` and `JobQueue` ports,
//! and the handlers built on them (the origin-response miss, the worker). It knows nothing
//! of the AWS SDK, HTTP servers or command lines: the S3/SQS adapters live in
//! `edgethumb-aws` (`aws/`), the CLI and `serve` in `edgethumb-cli` (`cli/`), the Lambda
//! entry points in `edge/` and `worker/`. Features choose what an entry point builds: `edge`,
//! `worker`, `local` (see Cargo.toml). This file only declares and re-exports.

pub mod cdn;
#[cfg(feature = "edge")]
pub mod edge;
pub mod enqueue;
pub mod geometry;
pub mod host;
pub mod job;
#[cfg(feature = "local")]
mod local_files;
pub mod metrics;
pub mod pipeline;
pub mod queue;
pub mod store;
pub mod variant;
#[cfg(feature = "viewer")]
pub mod viewer;
#[cfg(feature = "worker")]
pub mod worker;

pub use geometry::{Crop, Plan, plan};
pub use host::available_cores;
pub use variant::{
    OutputFormat, Params, RequestedParams, ResizeMode, VariantError, VariantKey, VariantRequest,
};

/// The edgethumb version, recorded in worker output metadata so re-renders after an
/// encoder change are not mistaken for duplicates.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
