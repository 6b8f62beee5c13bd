//! An in-memory [`ObjectStore`], for unit tests of handler logic.
//!
//! It follows the same contract as the S3 and filesystem adapters (the contract suite in
//! `tests/store_contract.rs` runs against it too), so a handler tested against it behaves
//! the same against the real ones. It is not durable and not meant for production.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ListPage, Object, ObjectInfo, ObjectStore, PutRequest, StoreError, md5_etag};

#[derive(Debug, Clone)]
struct Stored {
    info: ObjectInfo,
    body: Bytes,
    tags: BTreeMap<String, String>,
}

/// A bucket held in a map. Cloning is not supported on purpose: share it with `Arc`.
#[derive(Debug)]
pub struct MemoryStore {
    bucket: String,
    objects: Mutex<BTreeMap<String, Stored>>,
}

impl MemoryStore {
    pub fn new(bucket: impl Into<String>) -> Self {
        MemoryStore {
            bucket: bucket.into(),
            objects: Mutex::new(BTreeMap::new()),
        }
    }

    /// Number of objects stored (for assertions in tests).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// A poisoned lock only means another test thread panicked; the map itself is
    /// still consistent (every mutation is a single insert/remove), so keep going.
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Stored>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_key(&self, key: &str) -> Result<(), StoreError> {
        super::check_s3_key(key)
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn get(&self, key: &str, max_bytes: u64) -> Result<Option<Object>, StoreError> {
        self.check_key(key)?;
        let objects = self.lock();
        let Some(stored) = objects.get(key) else {
            return Ok(None);
        };
        if stored.info.size > max_bytes {
            return Err(StoreError::TooLarge {
                bucket: self.bucket.clone(),
                key: key.to_string(),
                size: stored.info.size,
                limit: max_bytes,
            });
        }
        Ok(Some(Object {
            info: stored.info.clone(),
            body: stored.body.clone(),
        }))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        self.check_key(key)?;
        Ok(self.lock().get(key).map(|s| s.info.clone()))
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        request: PutRequest,
    ) -> Result<ObjectInfo, StoreError> {
        self.check_key(key)?;
        super::check_tags(&self.bucket, key, &request.tags)?;
        let info = ObjectInfo {
            key: key.to_string(),
            size: body.len() as u64,
            content_type: Some(request.content_type),
            cache_control: request.cache_control,
            etag: Some(md5_etag(&body)),
            last_modified: Some(SystemTime::now()),
            metadata: request
                .metadata
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        };
        let stored = Stored {
            info: info.clone(),
            body,
            tags: request.tags,
        };
        self.lock().insert(key.to_string(), stored);
        Ok(info)
    }

    async fn tags(&self, key: &str) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        self.check_key(key)?;
        Ok(self.lock().get(key).map(|s| s.tags.clone()))
    }

    async fn list_page(
        &self,
        prefix: &str,
        continuation: Option<String>,
        page_size: u32,
    ) -> Result<ListPage, StoreError> {
        let page_size = super::clamp_page_size(page_size);
        let objects = self.lock();
        let start = continuation.unwrap_or_default();
        let mut page = ListPage::default();
        let candidates = objects
            .range::<str, _>((
                std::ops::Bound::Excluded(start.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .filter(|(k, _)| k.starts_with(prefix));
        for (key, stored) in candidates {
            if page.objects.len() == page_size {
                page.continuation = page.objects.last().map(|o: &ObjectInfo| o.key.clone());
                break;
            }
            debug_assert_eq!(key, &stored.info.key);
            page.objects.push(stored.info.clone());
        }
        Ok(page)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check_key(key)?;
        self.lock().remove(key);
        Ok(())
    }
}
