//! The job message: what the edge (or `enqueue`) sends and the worker consumes.
//!
//! Versioned JSON (`"v": 1`), documented in `docs/job.md`. It carries everything the
//! worker needs and nothing it can derive.

use serde::{Deserialize, Serialize};

/// Why a job was enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobReason {
    Miss,
    Manual,
    SourceChanged,
}

/// Version 1 of the job message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Always 1 for this struct.
    pub v: u32,
    pub bucket: String,
    /// The variant key as requested (the key the worker writes).
    pub variant_key: String,
    pub original_key: String,
    /// Canonical parameter spelling, e.g. `200w_200h_1e.webp`.
    pub params: String,
    pub reason: JobReason,
    /// RFC 3339 UTC time the job was created.
    pub enqueued_at: String,
    /// The original's ETag when the enqueuer knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_etag: Option<String>,
}
