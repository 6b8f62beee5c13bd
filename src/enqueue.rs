//! Manual reprocessing: turn `s3://bucket/key@params` arguments, key lists and prefix
//! listings into jobs (reason `manual`) and send them in batches.
//!
//! Planning and sending are separate so `--dry-run` shows exactly what would be sent, and so
//! every input ends up in exactly one bucket of the summary: sent, failed to send, invalid,
//! or skipped (with why). Nothing is dropped silently: an invalid key is reported and never
//! sent (the worker would only dead-letter it), and an entry the queue refused after the
//! adapter's retries is reported with the queue's reason.

use std::collections::BTreeSet;

use futures::StreamExt;

use crate::job::{Job, JobReason};
use crate::queue::{JobQueue, MAX_BATCH};
use crate::store::{ObjectStore, StoreError};
use crate::variant::{Params, VariantKey};

/// The tag the worker writes on every variant; only tagged objects are re-enqueued by
/// `--existing`, so hand-uploaded files that happen to contain `@` are left alone.
pub const CREATED_BY_TAG: (&str, &str) = ("createByLambda", "1");

/// Object tags read at once when checking `--existing` candidates.
const TAG_CONCURRENCY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("{0:?} is not an s3://bucket/prefix URL")]
    BadPrefix(String),
    #[error("listing s3://{bucket}/{prefix} failed: {source}")]
    List {
        bucket: String,
        prefix: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("invalid --variants entry {entry:?}: {reason}")]
    BadVariantSpec { entry: String, reason: String },
}

/// `s3://bucket/key`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub key: String,
}

impl S3Location {
    /// Parse `s3://bucket/key`. The key may be empty (a prefix URL).
    pub fn parse(url: &str) -> Option<S3Location> {
        let rest = url.strip_prefix("s3://")?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || bucket.contains(char::is_whitespace) {
            return None;
        }
        Some(S3Location {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// One job ready to send, with how it was named (for reports).
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedJob {
    pub url: String,
    pub job: Job,
}

/// An input that will not be sent, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub input: String,
    pub reason: String,
}

/// What planning produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    pub jobs: Vec<PlannedJob>,
    /// Invalid inputs (bad URL, bad params, unreadable tags): reported, not sent, and they
    /// make the command fail.
    pub invalid: Vec<Refused>,
    /// Inputs deliberately left out (duplicates, untagged `@` keys): reported as counts.
    pub skipped: Vec<Refused>,
}

impl Plan {
    fn push(&mut self, seen: &mut BTreeSet<(String, String)>, planned: PlannedJob) {
        let identity = (planned.job.bucket.clone(), planned.job.variant_key.clone());
        if seen.insert(identity) {
            self.jobs.push(planned);
        } else {
            self.skipped.push(Refused {
                input: planned.url,
                reason: "duplicate".into(),
            });
        }
    }

    fn invalid(&mut self, input: impl Into<String>, reason: impl Into<String>) {
        self.invalid.push(Refused {
            input: input.into(),
            reason: reason.into(),
        });
    }
}

fn manual_job(bucket: &str, key: &str, original_etag: Option<String>) -> Result<Job, String> {
    if key.len() > crate::store::MAX_KEY_BYTES {
        return Err("key longer than 1024 bytes".into());
    }
    if key.chars().any(char::is_control) {
        return Err("key contains a control character".into());
    }
    Job::new(bucket, key, JobReason::Manual, original_etag).map_err(|e| e.to_string())
}

/// Jobs for explicit variant names: `s3://bucket/key@params` URLs, or bare keys when a
/// default bucket is given. Blank lines and `#` comments (from key files) are ignored.
pub fn plan_keys<I, S>(inputs: I, default_bucket: Option<&str>) -> Plan
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut plan = Plan::default();
    let mut seen = BTreeSet::new();
    for input in inputs {
        let input = input.as_ref().trim();
        if input.is_empty() || input.starts_with('#') {
            continue;
        }
        let location = if input.starts_with("s3://") {
            match S3Location::parse(input) {
                Some(location) if !location.key.is_empty() => location,
                _ => {
                    plan.invalid(input, "not an s3://bucket/key@params URL");
                    continue;
                }
            }
        } else if let Some(bucket) = default_bucket {
            S3Location {
                bucket: bucket.to_string(),
                key: input.to_string(),
            }
        } else {
            plan.invalid(
                input,
                "a bare key needs --bucket (or give s3://bucket/key@params)",
            );
            continue;
        };
        match manual_job(&location.bucket, &location.key, None) {
            Ok(job) => plan.push(
                &mut seen,
                PlannedJob {
                    url: location.url(),
                    job,
                },
            ),
            Err(reason) => plan.invalid(input, reason),
        }
    }
    plan
}

/// Parse `--variants 200w_200h.webp,800w.jpg` into parameter strings, refusing bad ones up
/// front (one bad entry would otherwise be reported once per original).
pub fn parse_variant_specs(list: &str) -> Result<Vec<String>, EnqueueError> {
    let mut specs = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let spec = entry.strip_prefix('@').unwrap_or(entry);
        spec.parse::<Params>()
            .map_err(|e| EnqueueError::BadVariantSpec {
                entry: entry.to_string(),
                reason: e.to_string(),
            })?;
        if !specs.iter().any(|s| s == spec) {
            specs.push(spec.to_string());
        }
    }
    if specs.is_empty() {
        return Err(EnqueueError::BadVariantSpec {
            entry: list.to_string(),
            reason: "no variants given".into(),
        });
    }
    Ok(specs)
}

/// Every key under `prefix`, page by page.
async fn list_all(
    store: &dyn ObjectStore,
    prefix: &str,
) -> Result<Vec<crate::store::ObjectInfo>, EnqueueError> {
    let mut objects = Vec::new();
    let mut continuation = None;
    loop {
        let page = store
            .list_page(prefix, continuation, crate::store::MAX_PAGE_SIZE)
            .await
            .map_err(|source| EnqueueError::List {
                bucket: store.bucket().to_string(),
                prefix: prefix.to_string(),
                source: Box::new(source),
            })?;
        objects.extend(page.objects);
        match page.continuation {
            Some(next) => continuation = Some(next),
            None => return Ok(objects),
        }
    }
}

/// `--prefix ... --existing`: the variants the worker wrote under `prefix` (keys with `@`
/// tagged `createByLambda=1`), to render again.
pub async fn plan_existing(store: &dyn ObjectStore, prefix: &str) -> Result<Plan, EnqueueError> {
    let bucket = store.bucket().to_string();
    let candidates: Vec<String> = list_all(store, prefix)
        .await?
        .into_iter()
        .map(|info| info.key)
        .filter(|key| key.contains('@'))
        .collect();
    let tagged = futures::stream::iter(candidates)
        .map(|key| async move {
            let tags = store.tags(&key).await;
            (key, tags)
        })
        .buffered(TAG_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let mut plan = Plan::default();
    let mut seen = BTreeSet::new();
    for (key, tags) in tagged {
        let url = format!("s3://{bucket}/{key}");
        match tags {
            // Deleted between the listing and now: nothing to re-render.
            Ok(None) => plan.skipped.push(Refused {
                input: url,
                reason: "deleted since listed".into(),
            }),
            Ok(Some(tags))
                if tags.get(CREATED_BY_TAG.0).map(String::as_str) != Some(CREATED_BY_TAG.1) =>
            {
                plan.skipped.push(Refused {
                    input: url,
                    reason: "not tagged createByLambda=1".into(),
                })
            }
            Ok(Some(_)) => match manual_job(&bucket, &key, None) {
                Ok(job) => plan.push(&mut seen, PlannedJob { url, job }),
                Err(reason) => plan.invalid(url, reason),
            },
            Err(error) => plan.invalid(url, format!("cannot read tags: {error}")),
        }
    }
    Ok(plan)
}

/// `--prefix ... --variants a,b`: those variants of every original (key without `@`) under
/// `prefix`, to pre-warm them. The original's ETag goes in the job, as the edge does.
pub async fn plan_variants(
    store: &dyn ObjectStore,
    prefix: &str,
    specs: &[String],
) -> Result<Plan, EnqueueError> {
    let bucket = store.bucket().to_string();
    let mut plan = Plan::default();
    let mut seen = BTreeSet::new();
    for info in list_all(store, prefix).await? {
        if info.key.contains('@') || info.key.ends_with('/') {
            continue;
        }
        for spec in specs {
            let key = format!("{}@{spec}", info.key);
            let url = format!("s3://{bucket}/{key}");
            match manual_job(&bucket, &key, info.etag.clone()) {
                Ok(job) => plan.push(&mut seen, PlannedJob { url, job }),
                Err(reason) => plan.invalid(url, reason),
            }
        }
    }
    Ok(plan)
}

/// What sending produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SendReport {
    pub sent: usize,
    /// Entries the queue still refused after retries, with its reason.
    pub failed: Vec<Refused>,
}

/// Send `jobs` in batches of 10. `progress(done, total)` is called after each batch.
pub async fn send_jobs(
    queue: &dyn JobQueue,
    jobs: &[PlannedJob],
    mut progress: impl FnMut(usize, usize),
) -> SendReport {
    let mut report = SendReport::default();
    let mut done = 0;
    for chunk in jobs.chunks(MAX_BATCH) {
        let bodies: Vec<String> = chunk.iter().map(|p| p.job.to_json()).collect();
        // No retry here: the adapter has already retried the call (the SDK's retry
        // configuration) and the entries it reported failed. Sending the batch again would
        // multiply those attempts, and a failed entry is reported, never dropped.
        let failures = match queue.send_batch(&bodies).await {
            Ok(failures) => failures,
            Err(error) => (0..chunk.len())
                .map(|index| crate::queue::FailedEntry {
                    index,
                    reason: error.to_string(),
                })
                .collect(),
        };
        let mut failed_here = BTreeSet::new();
        for failure in failures {
            if let Some(planned) = chunk.get(failure.index)
                && failed_here.insert(failure.index)
            {
                report.failed.push(Refused {
                    input: planned.url.clone(),
                    reason: failure.reason,
                });
            }
        }
        report.sent += chunk.len() - failed_here.len();
        done += chunk.len();
        progress(done, jobs.len());
    }
    report
}

/// The variant key a planned job renders, parsed (for `--dry-run` listings).
pub fn describe(planned: &PlannedJob) -> String {
    match VariantKey::parse(&planned.job.variant_key) {
        Ok(variant) => format!("{} ({})", planned.url, variant.params.canonical()),
        Err(_) => planned.url.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::memory::MemoryQueue;
    use crate::store::PutRequest;
    use crate::store::memory::MemoryStore;
    use std::collections::BTreeMap;

    #[test]
    fn s3_urls_parse() {
        assert_eq!(
            S3Location::parse("s3://b/photos/cat.jpg@200w.webp"),
            Some(S3Location {
                bucket: "b".into(),
                key: "photos/cat.jpg@200w.webp".into()
            })
        );
        assert_eq!(S3Location::parse("s3://b").unwrap().key, "");
        assert_eq!(S3Location::parse("s3://b/").unwrap().key, "");
        assert_eq!(S3Location::parse("s3:///k"), None);
        assert_eq!(S3Location::parse("http://b/k"), None);
    }

    #[test]
    fn keys_are_validated_and_deduplicated() {
        let plan = plan_keys(
            [
                "s3://b/photos/cat.jpg@200w.webp",
                "# a comment",
                "",
                "s3://b/photos/cat.jpg@200w.webp",
                "s3://b/photos/cat.jpg",
                "s3://b/photos/cat.jpg@0w",
                "s3://b/photos/cat.jpg@200x",
                "s3://b/",
                "photos/dog.jpg@100w",
                "not-a-url",
            ],
            None,
        );
        assert_eq!(plan.jobs.len(), 1);
        assert_eq!(plan.jobs[0].job.reason, JobReason::Manual);
        assert_eq!(plan.jobs[0].job.bucket, "b");
        assert_eq!(plan.skipped.len(), 1);
        assert_eq!(plan.invalid.len(), 6, "{:?}", plan.invalid);
        let with_bucket = plan_keys(["photos/dog.jpg@100w"], Some("d"));
        assert_eq!(with_bucket.jobs[0].url, "s3://d/photos/dog.jpg@100w");
    }

    #[test]
    fn hostile_keys_are_invalid_not_panics() {
        let huge = format!("s3://b/{}@1w", "a".repeat(5000));
        let plan = plan_keys(
            [
                huge.as_str(),
                "s3://b/a\0b.jpg@1w",
                "s3://b/@1w",
                "s3://b/x@",
            ],
            None,
        );
        assert!(plan.jobs.is_empty());
        assert_eq!(plan.invalid.len(), 4);
    }

    #[test]
    fn variant_specs_are_checked_up_front() {
        assert_eq!(
            parse_variant_specs("200w_200h.webp, 800w.jpg,,@800w.jpg").unwrap(),
            vec!["200w_200h.webp", "800w.jpg"]
        );
        assert!(parse_variant_specs("200w,9999w").is_err());
        assert!(parse_variant_specs(" , ").is_err());
    }

    async fn put(store: &MemoryStore, key: &str, tagged: bool) {
        let mut tags = BTreeMap::new();
        if tagged {
            tags.insert("createByLambda".to_string(), "1".to_string());
        }
        store
            .put(
                key,
                bytes::Bytes::from_static(b"x"),
                PutRequest {
                    content_type: "image/jpeg".into(),
                    tags,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn existing_takes_only_tagged_variants_under_the_prefix() {
        let store = MemoryStore::new("b");
        put(&store, "photos/cat.jpg", false).await;
        put(&store, "photos/cat.jpg@200w.webp", true).await;
        put(&store, "photos/cat.jpg@100w.jpg", true).await;
        put(&store, "photos/upload@home.jpg", false).await;
        put(&store, "other/cat.jpg@200w.webp", true).await;
        let plan = plan_existing(&store, "photos/").await.unwrap();
        let keys: Vec<&str> = plan
            .jobs
            .iter()
            .map(|j| j.job.variant_key.as_str())
            .collect();
        assert_eq!(
            keys,
            ["photos/cat.jpg@100w.jpg", "photos/cat.jpg@200w.webp"]
        );
        assert_eq!(plan.skipped.len(), 1);
        assert!(plan.invalid.is_empty());
    }

    #[tokio::test]
    async fn variants_expand_over_originals() {
        let store = MemoryStore::new("b");
        put(&store, "photos/a.jpg", false).await;
        put(&store, "photos/b.png", false).await;
        put(&store, "photos/a.jpg@200w.webp", true).await;
        let specs = parse_variant_specs("200w.webp,50p.jpg").unwrap();
        let plan = plan_variants(&store, "photos/", &specs).await.unwrap();
        let keys: Vec<&str> = plan
            .jobs
            .iter()
            .map(|j| j.job.variant_key.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "photos/a.jpg@200w.webp",
                "photos/a.jpg@50p.jpg",
                "photos/b.png@200w.webp",
                "photos/b.png@50p.jpg"
            ]
        );
        assert!(plan.jobs.iter().all(|j| j.job.original_etag.is_some()));
    }

    #[tokio::test]
    async fn sends_in_batches_and_reports_refused_entries() {
        let queue = MemoryQueue::new("q").with_max_message_bytes(400);
        let mut inputs: Vec<String> = (0..23)
            .map(|i| format!("s3://b/photos/{i}.jpg@200w.webp"))
            .collect();
        // Long enough to go over the queue's 400-byte limit once serialised.
        inputs.push(format!("s3://b/photos/{}.jpg@200w.webp", "x".repeat(300)));
        let plan = plan_keys(&inputs, None);
        assert_eq!(plan.jobs.len(), 24);
        let mut calls = Vec::new();
        let report = send_jobs(&queue, &plan.jobs, |done, total| calls.push((done, total))).await;
        assert_eq!(calls, [(10, 24), (20, 24), (24, 24)]);
        assert_eq!(report.sent, 23);
        assert_eq!(report.failed.len(), 1);
        assert!(report.failed[0].input.contains("xxx"));
        assert_eq!(queue.len(), 23);
        for body in queue.bodies() {
            assert_eq!(Job::parse(&body).unwrap().reason, JobReason::Manual);
        }
    }
}
