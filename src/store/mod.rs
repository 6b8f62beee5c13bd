//! The `ObjectStore` port: where originals are read and variants written.
//!
//! Adapters: [`s3`] (AWS S3, any S3-compatible endpoint) and [`fs`] (a directory, the
//! embedded default). Handlers are generic over the trait so the very same code runs at
//! the edge, in the worker and in `edgethumb serve`.

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
