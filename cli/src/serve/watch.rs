//! The served folder's stand-in for S3 event notifications: a polling check that notices
//! originals replaced or deleted in the folder and puts the S3 event message S3 would have
//! sent on the local queue, so the in-process worker refreshes or deletes their variants
//! exactly as the deployed worker does.
//!
//! Polling rather than an OS watcher: one listing per interval (the folder's files'
//! size and modification time, no reads), no platform-specific dependency, and it sees
//! changes made while a watcher would have been re-arming. Requests do not wait for it:
//! `app` checks a variant against its original before serving it (see
//! `app::is_stale_variant`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{info, warn};

use edgethumb::queue::JobQueue;
use edgethumb::store::{MAX_PAGE_SIZE, ObjectStore, StoreError};
use edgethumb::variant::VariantKey;
use edgethumb::worker::message::storage_event_body;

/// How often the folder is listed.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// What a file looked like at the last listing.
type Seen = HashMap<String, (u64, Option<SystemTime>)>;

/// The originals in the store now (variants and `serve`'s own state are not originals).
async fn originals(store: &dyn ObjectStore) -> Result<Seen, StoreError> {
    let mut seen = Seen::new();
    let mut continuation = None;
    loop {
        let page = store.list_page("", continuation, MAX_PAGE_SIZE).await?;
        for object in page.objects {
            if VariantKey::parse(&object.key).is_err() && !object.key.starts_with('.') {
                seen.insert(object.key, (object.size, object.last_modified));
            }
        }
        continuation = page.continuation;
        if continuation.is_none() {
            return Ok(seen);
        }
    }
}

/// The event messages for what changed between two listings: a file whose size or time
/// changed, or that is new, was written; a file no longer listed was deleted.
fn events(bucket: &str, before: &Seen, now: &Seen) -> Vec<String> {
    let mut out = Vec::new();
    for (key, state) in now {
        if before.get(key) != Some(state) {
            out.push(storage_event_body("ObjectCreated:Put", bucket, key));
        }
    }
    for key in before.keys().filter(|k| !now.contains_key(*k)) {
        out.push(storage_event_body("ObjectRemoved:Delete", bucket, key));
    }
    out
}

/// List every `interval` until `stop` turns true; queue an event per changed original.
pub async fn run(
    store: Arc<dyn ObjectStore>,
    queue: Arc<dyn JobQueue>,
    bucket: String,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // The first listing is the baseline: a change made while `serve` was stopped is still
    // caught per request by `app`, and the variant is rewritten by the job that miss sends.
    let mut before = match originals(store.as_ref()).await {
        Ok(seen) => seen,
        Err(error) => {
            warn!(event = "serve.watch_failed", error = %error);
            Seen::new()
        }
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let now = match originals(store.as_ref()).await {
            Ok(seen) => seen,
            Err(error) => {
                warn!(event = "serve.watch_failed", error = %error);
                continue;
            }
        };
        let bodies = events(&bucket, &before, &now);
        if bodies.is_empty() {
            continue;
        }
        let mut all_sent = true;
        for chunk in bodies.chunks(edgethumb::queue::MAX_BATCH) {
            match queue.send_batch(chunk).await {
                Ok(failed) if failed.is_empty() => {}
                Ok(failed) => {
                    warn!(event = "serve.watch_enqueue_failed", entries = failed.len());
                    all_sent = false;
                }
                Err(error) => {
                    warn!(event = "serve.watch_enqueue_failed", error = %error);
                    all_sent = false;
                }
            }
        }
        info!(
            event = "serve.originals_changed",
            changes = bodies.len(),
            all_sent,
            "queued as S3 events: the worker refreshes or deletes their variants"
        );
        // On a failed send the old listing stays, so the next pass sends the events again
        // (the worker acts on the current state, so a repeat is harmless).
        if all_sent {
            before = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgethumb::worker::message::Message;

    fn seen(entries: &[(&str, u64)]) -> Seen {
        entries
            .iter()
            .map(|(k, size)| (k.to_string(), (*size, None)))
            .collect()
    }

    #[test]
    fn changed_new_and_deleted_files_become_events() {
        let before = seen(&[("a.jpg", 1), ("b.jpg", 2), ("c.jpg", 3)]);
        let now = seen(&[("a.jpg", 1), ("b.jpg", 20), ("d e.jpg", 4)]);
        let mut got: Vec<(String, String)> = events("bucket", &before, &now)
            .iter()
            .map(|body| match Message::parse(body).unwrap() {
                Message::Storage(changes) => {
                    (changes[0].event_name.clone(), changes[0].key.clone())
                }
                other => panic!("{other:?}"),
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("ObjectCreated:Put".to_string(), "b.jpg".to_string()),
                ("ObjectCreated:Put".into(), "d e.jpg".into()),
                ("ObjectRemoved:Delete".into(), "c.jpg".into()),
            ]
        );
        assert!(events("bucket", &now, &now).is_empty());
    }
}
