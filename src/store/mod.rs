//! The `ObjectStore` port: where originals are read and variants written.
//!
//! Adapters: `edgethumb_aws::S3Store` (AWS S3, any S3-compatible endpoint), `fs` (a
//! directory, the embedded default; feature `local`) and [`memory`] (tests). Handlers are generic over the trait so the very same code runs at
//! the edge, in the worker and in `edgethumb serve`.

#[cfg(feature = "local")]
pub mod fs;
pub mod memory;

use std::collections::BTreeMap;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

/// An object's metadata, as S3 returns it for GET/HEAD.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    /// Quoted, as S3 sends it (e.g. `"9b2cf535f27731c974343645a3985328"`).
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
    /// User metadata (`x-amz-meta-*`), keys lower-case without the prefix.
    pub metadata: BTreeMap<String, String>,
}

/// An object's bytes and metadata.
#[derive(Debug, Clone)]
pub struct Object {
    pub info: ObjectInfo,
    pub body: Bytes,
}

/// What to write with a put.
#[derive(Debug, Clone, Default)]
pub struct PutRequest {
    pub content_type: String,
    pub cache_control: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Object tags, e.g. `createByLambda=1` (written in the same PutObject).
    pub tags: BTreeMap<String, String>,
}

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectInfo>,
    /// Pass back to get the next page; `None` when this is the last one.
    pub continuation: Option<String>,
}

/// Why a store call failed. `retryable` tells the worker whether SQS should redeliver.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// The request itself is invalid (too many tags, bad tag characters...): retrying the
    /// same request cannot help.
    #[error("invalid request for {bucket}/{key}: {reason}")]
    InvalidRequest {
        bucket: String,
        key: String,
        reason: String,
    },
    #[error("access denied to {bucket}/{key}")]
    AccessDenied { bucket: String, key: String },
    #[error("no such bucket {bucket}")]
    NoSuchBucket { bucket: String },
    #[error("object {bucket}/{key} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        bucket: String,
        key: String,
        size: u64,
        limit: u64,
    },
    #[error("{operation} {bucket}/{key} failed (retryable: {retryable}): {message}")]
    Backend {
        operation: &'static str,
        bucket: String,
        key: String,
        retryable: bool,
        message: String,
    },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether trying again later can succeed (throttling, 5xx, timeouts, I/O hiccups).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Backend { retryable, .. } => *retryable,
            StoreError::Io { .. } => true,
            StoreError::InvalidKey { .. }
            | StoreError::InvalidRequest { .. }
            | StoreError::AccessDenied { .. }
            | StoreError::NoSuchBucket { .. }
            | StoreError::TooLarge { .. } => false,
        }
    }
}

/// The object-store port. One value addresses one bucket.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// The bucket name (for logs and job messages).
    fn bucket(&self) -> &str;
    /// A missing key is `Ok(None)`, not an error. Objects larger than `max_bytes` are
    /// refused with [`StoreError::TooLarge`] before their body is read.
    async fn get(&self, key: &str, max_bytes: u64) -> Result<Option<Object>, StoreError>;
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError>;
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        request: PutRequest,
    ) -> Result<ObjectInfo, StoreError>;
    /// Tags of an existing object (`Ok(None)` when missing).
    async fn tags(&self, key: &str) -> Result<Option<BTreeMap<String, String>>, StoreError>;
    /// One page of keys under `prefix`, at most `page_size` (S3 caps it at 1000).
    async fn list_page(
        &self,
        prefix: &str,
        continuation: Option<String>,
        page_size: u32,
    ) -> Result<ListPage, StoreError>;
    /// Deleting a missing key succeeds, as in S3.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
}

/// S3 refuses more tags than this on one object.
pub const MAX_TAGS: usize = 10;
/// S3's largest key, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// S3's largest listing page.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The ETag S3 gives a single-part upload: the body's MD5, hex, in double quotes.
pub fn md5_etag(body: &[u8]) -> String {
    use md5::{Digest, Md5};
    format!("\"{}\"", hex::encode(Md5::digest(body)))
}

/// The key rules every adapter shares (S3's own): non-empty, at most 1024 bytes.
pub fn check_s3_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidKey {
            key: key.to_string(),
            reason: "empty key",
        });
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::InvalidKey {
            key: key.to_string(),
            reason: "longer than 1024 bytes",
        });
    }
    Ok(())
}

/// S3's tag limits, checked up front so every adapter refuses the same requests.
pub fn check_tags(
    bucket: &str,
    key: &str,
    tags: &BTreeMap<String, String>,
) -> Result<(), StoreError> {
    let invalid = |reason: String| StoreError::InvalidRequest {
        bucket: bucket.to_string(),
        key: key.to_string(),
        reason,
    };
    if tags.len() > MAX_TAGS {
        return Err(invalid(format!(
            "{} tags, S3 allows {MAX_TAGS}",
            tags.len()
        )));
    }
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 {
            return Err(invalid(format!("tag key {k:?} must be 1..=128 characters")));
        }
        if v.chars().count() > 256 {
            return Err(invalid(format!("tag {k:?} value over 256 characters")));
        }
    }
    Ok(())
}

/// Page sizes outside S3's 1..=1000 are clamped rather than refused: callers ask for
/// "a page", and a zero would otherwise loop forever.
pub fn clamp_page_size(page_size: u32) -> usize {
    page_size.clamp(1, MAX_PAGE_SIZE) as usize
}
