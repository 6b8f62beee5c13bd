//! edgethumb: on-the-fly image thumbnails for CloudFront.
//!
//! The library holds all the logic; the Lambda entry points (`edge/`, `worker/`) and the
//! `edgethumb` CLI only wire adapters to handlers. This file only declares and re-exports.

pub mod aws;
pub mod edge;
pub mod enqueue;
pub mod geometry;
pub mod job;
pub mod logging;
pub mod pipeline;
pub mod queue;
pub mod serve;
pub mod store;
pub mod variant;
pub mod viewer;
pub mod worker;

pub use geometry::{Crop, Plan, plan};
pub use variant::{
    OutputFormat, Params, RequestedParams, ResizeMode, VariantError, VariantKey, VariantRequest,
};

/// The edgethumb version, recorded in worker output metadata so re-renders after an
/// encoder change are not mistaken for duplicates.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
