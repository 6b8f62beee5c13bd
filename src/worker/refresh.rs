//! Bringing an original's variants in line with the original as it is now, after S3 said
//! it was written or deleted.
//!
//! The event only says "look at this key": the worker HEADs the original and acts on what it
//! finds, so late, duplicate and out-of-order events all end in the same state. Only the
//! variants we made (tag `createByLambda=1` and our metadata) are touched; a hand-uploaded
//! `key@…` object is counted and left alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::WorkerConfig;
use super::process::{self, CREATED_TAG, KeyOutcome, MemoryGate, RenderFailure, RenderTask, meta};
use crate::store::{MAX_PAGE_SIZE, ObjectInfo, ObjectStore};
use crate::variant::{Params, VariantKey};

/// What a refresh did to one original's variants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshReport {
    /// The original's ETag now; `None` when it is gone.
    pub original_etag: Option<String>,
    /// Our variants re-rendered from the current original.
    pub rerendered: Vec<String>,
    /// Our variants already rendered from the current original.
    pub current: usize,
    /// Our variants deleted because the original is gone.
    pub deleted: Vec<String>,
    /// `key@…` objects we did not make (no tag or no metadata of ours): left alone.
    pub foreign: Vec<String>,
}

impl RefreshReport {
    /// Whether any variant in the store changed, so the CDN's copies are stale.
    pub fn changed(&self) -> bool {
        !self.rerendered.is_empty() || !self.deleted.is_empty()
    }

    /// Whether the original has variants of ours at all (the CDN may cache them).
    pub fn has_variants(&self) -> bool {
        self.changed() || self.current > 0
    }
}

/// Whether a variant object was written by the worker: the tag the lifecycle rule matches
/// and the metadata a refresh needs.
fn is_ours(info: &ObjectInfo, tags: &BTreeMap<String, String>) -> bool {
    tags.get(CREATED_TAG.0).map(String::as_str) == Some(CREATED_TAG.1)
        && [meta::ORIGINAL_ETAG, meta::PARAMS, meta::VERSION]
            .iter()
            .all(|m| info.metadata.contains_key(*m))
}

/// The variant keys of `original_key` in `store`: the keys under `<original>@` that parse
/// as a variant of exactly this original (`a.jpg@x@200w` belongs to `a.jpg@x`).
pub async fn variant_keys(
    store: &dyn ObjectStore,
    original_key: &str,
) -> Result<Vec<(String, Params)>, RenderFailure> {
    let prefix = format!("{original_key}@");
    let mut keys = Vec::new();
    let mut continuation = None;
    loop {
        let page = store
            .list_page(&prefix, continuation, MAX_PAGE_SIZE)
            .await?;
        for object in page.objects {
            if let Ok(variant) = VariantKey::parse(&object.key)
                && variant.original_key == original_key
            {
                keys.push((object.key, variant.params));
            }
        }
        continuation = page.continuation;
        if continuation.is_none() {
            return Ok(keys);
        }
    }
}

/// Re-render our stale variants of `original_key` (original present) or delete them
/// (original gone). The re-renders run side by side, each in a slot of `cpu` (the batch's
/// render slots), so an original with many variants refreshes as fast as a batch of jobs.
pub async fn refresh(
    store: Arc<dyn ObjectStore>,
    original_key: &str,
    config: &WorkerConfig,
    gate: &dyn MemoryGate,
    cpu: &Semaphore,
) -> Result<RefreshReport, RenderFailure> {
    let original = store.head(original_key).await?;
    let mut report = RefreshReport {
        original_etag: original.as_ref().and_then(|o| o.etag.clone()),
        ..RefreshReport::default()
    };
    // Stale variants of ours, grouped by canonical params so each renders once.
    let mut stale: BTreeMap<String, RenderTask> = BTreeMap::new();
    for (key, params) in variant_keys(store.as_ref(), original_key).await? {
        let (Some(info), Some(tags)) = (store.head(&key).await?, store.tags(&key).await?) else {
            continue; // deleted since the listing
        };
        if !is_ours(&info, &tags) {
            report.foreign.push(key);
            continue;
        }
        if original.is_none() {
            store.delete(&key).await?;
            report.deleted.push(key);
            continue;
        }
        let recorded = info.metadata.get(meta::ORIGINAL_ETAG);
        if recorded.is_some() && recorded == report.original_etag.as_ref() {
            report.current += 1;
            continue;
        }
        stale
            .entry(params.canonical())
            .or_insert_with(|| RenderTask {
                bucket: store.bucket().to_string(),
                original_key: original_key.to_string(),
                params,
                keys: Vec::new(),
            })
            .keys
            .push(key);
    }
    let renders = futures::future::join_all(
        stale
            .values()
            .map(|task| render_in_slot(store.clone(), task, config, gate, cpu)),
    )
    .await;
    for (task, result) in stale.values().zip(renders) {
        let (outcomes, _) = result.map_err(|e| match e {
            // Deleted since the HEAD: its own event comes next; retrying this one finds
            // it gone and deletes the variants.
            RenderFailure::OriginalMissing { bucket, key } => RenderFailure::OriginalChanged {
                bucket,
                key,
                rendered: report.original_etag.clone(),
                now: None,
            },
            other => other,
        })?;
        for (key, outcome) in task.keys.iter().zip(outcomes) {
            match outcome {
                KeyOutcome::Written { .. } => report.rerendered.push(key.clone()),
                KeyOutcome::Current => report.current += 1,
            }
        }
    }
    Ok(report)
}

/// One re-render, once a render slot is free (an `async fn` rather than a closure: the
/// future must be `Send` for every lifetime the batch borrows with).
async fn render_in_slot(
    store: Arc<dyn ObjectStore>,
    task: &RenderTask,
    config: &WorkerConfig,
    gate: &dyn MemoryGate,
    cpu: &Semaphore,
) -> process::RenderResult {
    let Ok(_slot) = cpu.acquire().await else {
        return Err(RenderFailure::NotStarted("worker shutting down"));
    };
    process::render(store, task, config, gate).await
}
