//! The `CdnInvalidator` port: telling the CDN that its cached copies of some paths are stale,
//! after the worker re-rendered or deleted the variants of a replaced or deleted original.
//!
//! Adapters: `edgethumb_aws::CloudFrontInvalidator` (CreateInvalidation) and [`MemoryCdn`]
//! (tests). Also here: how an object key becomes an invalidation path, and how a batch's
//! paths are kept inside CloudFront's invalidation quotas ([`plan`]).

use std::sync::Mutex;

use async_trait::async_trait;

/// CloudFront: "you can have invalidation requests for up to 3,000 files per distribution in
/// progress at one time" (Developer Guide, "Concurrent invalidation request maximum").
pub const MAX_PATHS_IN_PROGRESS: usize = 3_000;
/// CloudFront: "If you're using the * wildcard, you can have requests for up to 15
/// invalidation paths in progress at one time" (independent of the 3,000 files).
pub const MAX_WILDCARD_PATHS_IN_PROGRESS: usize = 15;
/// Wildcard paths one request of ours may carry. A request over the per-distribution
/// maximum could never succeed; a third of it leaves room for two other batches (worker
/// invocations) invalidating at the same time.
pub const MAX_WILDCARD_PATHS_PER_REQUEST: usize = MAX_WILDCARD_PATHS_IN_PROGRESS / 3;
/// File paths one request of ours may carry, by the same reasoning.
pub const MAX_PATHS_PER_REQUEST: usize = MAX_PATHS_IN_PROGRESS / 3;

/// Why an invalidation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CdnError {
    /// `TooManyInvalidationsInProgress`: the quotas above are full; a later try succeeds.
    #[error("too many invalidations in progress on distribution {distribution}: {message}")]
    Throttled {
        distribution: String,
        message: String,
    },
    #[error(
        "invalidation on distribution {distribution} failed (retryable: {retryable}): {message}"
    )]
    Backend {
        distribution: String,
        retryable: bool,
        message: String,
    },
}

impl CdnError {
    /// Whether trying the same invalidation later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            CdnError::Throttled { .. } => true,
            CdnError::Backend { retryable, .. } => *retryable,
        }
    }
}

/// The CDN port. One value addresses one distribution.
#[async_trait]
pub trait CdnInvalidator: Send + Sync {
    /// The distribution id (for logs).
    fn distribution(&self) -> &str;
    /// Invalidate `paths` (already encoded, see [`path_of`]) in one request; the
    /// invalidation's id.
    async fn invalidate(&self, paths: &[String]) -> Result<String, CdnError>;
}

/// The bytes CloudFront wants percent-encoded in an invalidation path: "If the path includes
/// non-ASCII characters or unsafe characters as defined in RFC 1738, URL-encode those
/// characters. Don't URL-encode any other characters" (Developer Guide, "Invalidation
/// paths"). RFC 1738's unsafe set, the control characters, and `?` (a literal `?` would
/// start a query string) and `*` (a literal `*` would be read as a wildcard).
fn must_encode(byte: u8) -> bool {
    !byte.is_ascii() || byte.is_ascii_control() || b" <>\"#%{}|\\^~[]`?*".contains(&byte)
}

/// The invalidation path of object `key`: `/` then the key, encoded as CloudFront expects
/// (`a b/ü%.jpg` → `/a%20b/%C3%BC%25.jpg`).
pub fn path_of(key: &str) -> String {
    let mut path = String::with_capacity(key.len() + 1);
    path.push('/');
    for &byte in key.as_bytes() {
        if must_encode(byte) {
            path.push_str(&format!("%{byte:02X}"));
        } else {
            path.push(char::from(byte));
        }
    }
    path
}

/// The paths that cover an original and every variant of it: `/key` and `/key@*`.
pub fn original_paths(key: &str) -> [String; 2] {
    let path = path_of(key);
    let variants = format!("{path}@*");
    [path, variants]
}

/// One request's paths for the originals `keys` (changed in one worker batch).
///
/// Each original gets `/key` and `/key@*`. When the batch holds more originals than
/// [`MAX_WILDCARD_PATHS_PER_REQUEST`] (a bulk upload, with a large `WorkerBatchSize`), the
/// request instead carries one wildcard of the originals' longest common directory (e.g.
/// `/photos/2024/*`, at worst `/*`): it invalidates more than needed, which only costs cache
/// misses, but stays one wildcard path whatever the batch size.
pub fn plan(keys: &[String]) -> Vec<String> {
    Coverage::new(keys.iter().cloned(), std::iter::empty()).paths()
}

/// What one invalidation must cover: originals (each `/key` and `/key@*`) and directories
/// (`/dir*`, what a collapsed plan keeps of many originals), always within the per-request
/// budget. Unions of coverages are how deferred invalidations merge: a directory keeps what
/// [`plan`] made of the originals it stands for, so a merge covers everything its parts
/// covered and is never coarser than one plan of all their originals would be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    originals: std::collections::BTreeSet<String>,
    /// Each ends in `/`, or is empty (the whole distribution).
    directories: std::collections::BTreeSet<String>,
}

impl Coverage {
    /// `directories` must each end in `/` or be empty; others are read as their directory.
    pub fn new(
        originals: impl IntoIterator<Item = String>,
        directories: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut coverage = Coverage {
            originals: originals.into_iter().collect(),
            directories: directories
                .into_iter()
                .map(|d| match d.rfind('/') {
                    Some(slash) => d[..=slash].to_string(),
                    None => String::new(),
                })
                .collect(),
        };
        coverage.normalise();
        coverage
    }

    pub fn is_empty(&self) -> bool {
        self.originals.is_empty() && self.directories.is_empty()
    }

    pub fn originals(&self) -> impl Iterator<Item = &str> {
        self.originals.iter().map(String::as_str)
    }

    pub fn directories(&self) -> impl Iterator<Item = &str> {
        self.directories.iter().map(String::as_str)
    }

    /// Everything `other` covers, added to this.
    pub fn merge(&mut self, other: &Coverage) {
        self.originals.extend(other.originals.iter().cloned());
        self.directories.extend(other.directories.iter().cloned());
        self.normalise();
    }

    /// The same paths' worth as one directory: the originals' and directories' longest common
    /// directory (a message too big to carry every key carries this instead).
    pub fn collapsed(&self) -> Coverage {
        if self.is_empty() {
            return Coverage::default();
        }
        let all: Vec<&str> = self.originals().chain(self.directories()).collect();
        Coverage {
            originals: Default::default(),
            directories: [common_directory(&all).to_string()].into(),
        }
    }

    /// Whether an invalidation of [`Coverage::paths`] makes `key`'s cached copies stale.
    pub fn covers(&self, key: &str) -> bool {
        self.originals.contains(key) || self.directories.iter().any(|d| key.starts_with(d.as_str()))
    }

    /// The request's paths: `/key` and `/key@*` per original, `/dir*` per directory.
    pub fn paths(&self) -> Vec<String> {
        self.originals
            .iter()
            .flat_map(|k| original_paths(k))
            .chain(self.directories.iter().map(|d| format!("{}*", path_of(d))))
            .collect()
    }

    /// Drop what a directory already covers; collapse to one directory when more entries
    /// than [`MAX_WILDCARD_PATHS_PER_REQUEST`] are left (each entry is one wildcard).
    fn normalise(&mut self) {
        let directories: Vec<String> = self.directories.iter().cloned().collect();
        let covered_by_other = |d: &String| {
            directories
                .iter()
                .any(|other| other.len() < d.len() && d.starts_with(other.as_str()))
        };
        self.directories.retain(|d| !covered_by_other(d));
        let directories = &self.directories;
        self.originals
            .retain(|k| !directories.iter().any(|d| k.starts_with(d.as_str())));
        if self.originals.len() + self.directories.len() > MAX_WILDCARD_PATHS_PER_REQUEST {
            *self = self.collapsed();
        }
    }
}

/// The longest common prefix of `keys` that ends in `/` (empty when they share none).
fn common_directory<'a>(keys: &[&'a str]) -> &'a str {
    let Some(first) = keys.first() else {
        return "";
    };
    let mut len = first.len();
    for key in &keys[1..] {
        len = first
            .bytes()
            .zip(key.bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
    }
    match first[..len].rfind('/') {
        Some(slash) => &first[..=slash],
        None => "",
    }
}

/// Wildcard paths in `paths` (for quota accounting and tests).
pub fn wildcard_count(paths: &[String]) -> usize {
    paths.iter().filter(|p| p.ends_with('*')).count()
}

/// CloudFront's per-distribution limits on invalidations in progress, as [`MemoryCdn`]
/// enforces them (tests): a request that would take the paths in progress over either
/// limit is refused with [`CdnError::Throttled`], like `TooManyInvalidationsInProgress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InProgressQuotas {
    /// File (non-wildcard) paths in progress at once: [`MAX_PATHS_IN_PROGRESS`].
    pub file_paths: usize,
    /// Wildcard paths in progress at once: [`MAX_WILDCARD_PATHS_IN_PROGRESS`].
    pub wildcard_paths: usize,
    /// When an accepted invalidation stops counting against the quotas.
    pub completion: Completion,
}

/// When a [`MemoryCdn`] invalidation completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Only when the test says so ([`MemoryCdn::complete_all`]).
    Manual,
    /// After this many later calls, accepted or not.
    AfterCalls(usize),
    /// After this long on tokio's clock (CloudFront: usually a minute or two), so a test
    /// with a paused clock plays a bulk upload's minutes in no time.
    After(std::time::Duration),
}

impl InProgressQuotas {
    /// CloudFront's limits.
    pub fn cloudfront(completion: Completion) -> Self {
        InProgressQuotas {
            file_paths: MAX_PATHS_IN_PROGRESS,
            wildcard_paths: MAX_WILDCARD_PATHS_IN_PROGRESS,
            completion,
        }
    }
}

/// An accepted invalidation not yet completed.
#[derive(Debug, Clone)]
struct InProgress {
    files: usize,
    wildcards: usize,
    until_call: Option<usize>,
    until: Option<tokio::time::Instant>,
}

impl InProgress {
    fn done(&self, calls: usize, now: tokio::time::Instant) -> bool {
        self.until_call.is_some_and(|until| calls > until) || self.until.is_some_and(|t| now >= t)
    }
}

#[derive(Debug, Default)]
struct MemoryCdnState {
    requests: Vec<Vec<String>>,
    fail_with: Option<CdnError>,
    quotas: Option<InProgressQuotas>,
    in_progress: Vec<InProgress>,
    calls: usize,
    throttled: usize,
    /// Most (file, wildcard) paths in progress at once, over the whole run.
    peak: (usize, usize),
}

/// An in-memory CDN that records every accepted request (tests), and can fail on demand or
/// enforce CloudFront's in-progress quotas.
#[derive(Debug, Default)]
pub struct MemoryCdn {
    state: Mutex<MemoryCdnState>,
}

impl MemoryCdn {
    pub fn new() -> Self {
        MemoryCdn::default()
    }

    /// A CDN that refuses requests over `quotas`, as CloudFront does.
    pub fn with_quotas(quotas: InProgressQuotas) -> Self {
        let cdn = MemoryCdn::default();
        cdn.lock().quotas = Some(quotas);
        cdn
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryCdnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every accepted request so far, in order.
    pub fn requests(&self) -> Vec<Vec<String>> {
        self.lock().requests.clone()
    }

    /// Requests so far, accepted or not.
    pub fn calls(&self) -> usize {
        self.lock().calls
    }

    /// Requests refused for the quotas.
    pub fn throttled(&self) -> usize {
        self.lock().throttled
    }

    /// The most (file, wildcard) paths that were in progress at once.
    pub fn peak_in_progress(&self) -> (usize, usize) {
        self.lock().peak
    }

    /// Every invalidation in progress completes now.
    pub fn complete_all(&self) {
        self.lock().in_progress.clear();
    }

    /// Make the following requests fail with `error` (`None`: succeed again).
    pub fn fail_with(&self, error: Option<CdnError>) {
        self.lock().fail_with = error;
    }
}

#[async_trait]
impl CdnInvalidator for MemoryCdn {
    fn distribution(&self) -> &str {
        "memory"
    }

    async fn invalidate(&self, paths: &[String]) -> Result<String, CdnError> {
        let mut state = self.lock();
        state.calls += 1;
        let calls = state.calls;
        let now = tokio::time::Instant::now();
        state.in_progress.retain(|i| !i.done(calls, now));
        if let Some(error) = state.fail_with.clone() {
            return Err(error);
        }
        if let Some(quotas) = state.quotas {
            let wildcards = wildcard_count(paths);
            let files = paths.len() - wildcards;
            let busy_files: usize = state.in_progress.iter().map(|i| i.files).sum();
            let busy_wildcards: usize = state.in_progress.iter().map(|i| i.wildcards).sum();
            if busy_files + files > quotas.file_paths
                || busy_wildcards + wildcards > quotas.wildcard_paths
            {
                state.throttled += 1;
                return Err(CdnError::Throttled {
                    distribution: "memory".into(),
                    message: format!(
                        "TooManyInvalidationsInProgress: {busy_files} file and {busy_wildcards} wildcard paths in progress"
                    ),
                });
            }
            let (until_call, until) = match quotas.completion {
                Completion::Manual => (None, None),
                Completion::AfterCalls(n) => (Some(calls + n), None),
                Completion::After(d) => (None, Some(now + d)),
            };
            state.in_progress.push(InProgress {
                files,
                wildcards,
                until_call,
                until,
            });
            let peak = (busy_files + files, busy_wildcards + wildcards);
            state.peak = (state.peak.0.max(peak.0), state.peak.1.max(peak.1));
        }
        state.requests.push(paths.to_vec());
        Ok(format!("memory-{}", state.requests.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_encode_what_cloudfront_wants_encoded_and_nothing_else() {
        assert_eq!(path_of("photos/cat.jpg"), "/photos/cat.jpg");
        assert_eq!(path_of("a b/ü%.jpg"), "/a%20b/%C3%BC%25.jpg");
        // RFC 1738 "unsafe", plus ? and *.
        assert_eq!(path_of("x~y#z?.jpg"), "/x%7Ey%23z%3F.jpg");
        assert_eq!(path_of("star*.jpg"), "/star%2A.jpg");
        // Safe and reserved-but-allowed characters stay as they are.
        assert_eq!(
            path_of("a+b=c,d;e(f)!$&'@g:h.jpg"),
            "/a+b=c,d;e(f)!$&'@g:h.jpg"
        );
        assert_eq!(
            original_paths("photos/my cat.jpg"),
            ["/photos/my%20cat.jpg", "/photos/my%20cat.jpg@*"]
        );
    }

    #[test]
    fn a_small_batch_gets_each_original_and_its_variants() {
        let keys = vec!["b.jpg".to_string(), "a b.jpg".into(), "b.jpg".into()];
        assert_eq!(
            plan(&keys),
            ["/a%20b.jpg", "/a%20b.jpg@*", "/b.jpg", "/b.jpg@*"]
        );
        assert!(plan(&[]).is_empty());
    }

    #[test]
    fn a_bulk_batch_collapses_to_one_wildcard_of_the_common_directory() {
        let keys: Vec<String> = (0..=MAX_WILDCARD_PATHS_PER_REQUEST)
            .map(|i| format!("photos/2024/ü/{i}.jpg"))
            .collect();
        let paths = plan(&keys);
        assert_eq!(paths, ["/photos/2024/%C3%BC/*"]);
        let keys: Vec<String> = (0..=MAX_WILDCARD_PATHS_PER_REQUEST)
            .map(|i| format!("{i}/x.jpg"))
            .collect();
        assert_eq!(plan(&keys), ["/*"]);
        // A common prefix that is not a whole directory is not used.
        let keys: Vec<String> = (0..=MAX_WILDCARD_PATHS_PER_REQUEST)
            .map(|i| format!("photos/cat{i}.jpg"))
            .collect();
        assert_eq!(plan(&keys), ["/photos/*"]);
    }

    #[test]
    fn every_plan_fits_the_per_request_budget() {
        for n in 0..40 {
            let keys: Vec<String> = (0..n).map(|i| format!("d/{i}.jpg")).collect();
            let paths = plan(&keys);
            assert!(
                wildcard_count(&paths) <= MAX_WILDCARD_PATHS_PER_REQUEST,
                "{n}"
            );
            assert!(paths.len() <= MAX_PATHS_PER_REQUEST, "{n}");
        }
    }

    #[test]
    fn coverages_merge_into_the_same_plan_as_their_originals() {
        let keys = |r: std::ops::Range<usize>, dir: &str| -> Vec<String> {
            r.map(|i| format!("{dir}{i}.jpg")).collect()
        };
        // Two small sets merge originals by originals while they fit.
        let mut a = Coverage::new(keys(0..2, "p/"), []);
        a.merge(&Coverage::new(keys(2..4, "p/"), []));
        assert_eq!(a.paths(), plan(&keys(0..4, "p/")));
        // A collapsed set merged with more originals plans like all the originals at once.
        let many = keys(0..20, "bulk/a/");
        let mut b = Coverage::new(many.clone(), []);
        assert_eq!(b.paths(), ["/bulk/a/*"]);
        b.merge(&Coverage::new(["bulk/b/1.jpg".to_string()], []));
        // Two entries: the directory and the original, each precise.
        assert_eq!(b.paths(), ["/bulk/b/1.jpg", "/bulk/b/1.jpg@*", "/bulk/a/*"]);
        // Two collapsed sets stay two directories: never coarser than one plan of them all.
        let mut c = Coverage::new(many.clone(), []);
        c.merge(&Coverage::new(keys(0..6, "bulk/c/"), []));
        assert_eq!(c.paths(), ["/bulk/a/*", "/bulk/c/*"]);
        // Over five entries, the union collapses to what one plan of every original gives.
        let mut all = many.clone();
        all.extend(keys(0..5, "bulk/c/"));
        let mut e = Coverage::new(many, []);
        e.merge(&Coverage::new(keys(0..5, "bulk/c/"), []));
        assert_eq!(e.paths(), plan(&all));
        assert_eq!(e.paths(), ["/bulk/*"]);
        assert!(all.iter().all(|k| e.covers(k) && c.covers(k)));
        // What a directory covers is not listed again.
        let d = Coverage::new(["x/y/1.jpg".to_string()], ["x/".to_string(), "x/y/".into()]);
        assert_eq!(d.paths(), ["/x/*"]);
        assert!(d.covers("x/y/1.jpg") && d.covers("x/z.jpg") && !d.covers("y.jpg"));
        assert_eq!(
            Coverage::new(["a b.jpg".to_string()], [])
                .collapsed()
                .paths(),
            ["/*"]
        );
    }

    #[tokio::test]
    async fn the_memory_cdn_enforces_the_in_progress_quotas() {
        let cdn = MemoryCdn::with_quotas(InProgressQuotas {
            file_paths: 4,
            wildcard_paths: 3,
            completion: Completion::Manual,
        });
        let wild = |n: usize| (0..n).map(|i| format!("/d{i}/*")).collect::<Vec<_>>();
        let files = |n: usize| (0..n).map(|i| format!("/f{i}")).collect::<Vec<_>>();
        cdn.invalidate(&wild(2)).await.unwrap();
        cdn.invalidate(&files(4)).await.unwrap();
        let err = cdn.invalidate(&wild(2)).await.unwrap_err();
        assert!(matches!(err, CdnError::Throttled { .. }), "{err}");
        assert!(
            cdn.invalidate(&files(1)).await.is_err(),
            "files are full too"
        );
        cdn.invalidate(&wild(1)).await.unwrap();
        assert_eq!(cdn.peak_in_progress(), (4, 3));
        cdn.complete_all();
        cdn.invalidate(&wild(3)).await.unwrap();
        assert_eq!(
            (cdn.calls(), cdn.throttled(), cdn.requests().len()),
            (6, 2, 4)
        );

        // Completion by calls: in progress for the next call, done after it.
        let cdn = MemoryCdn::with_quotas(InProgressQuotas {
            file_paths: 10,
            wildcard_paths: 1,
            completion: Completion::AfterCalls(1),
        });
        cdn.invalidate(&wild(1)).await.unwrap();
        assert!(cdn.invalidate(&wild(1)).await.is_err());
        cdn.invalidate(&wild(1)).await.unwrap();
    }

    #[tokio::test]
    async fn the_memory_cdn_records_requests_and_can_fail() {
        let cdn = MemoryCdn::new();
        assert_eq!(cdn.invalidate(&["/a".into()]).await.unwrap(), "memory-1");
        cdn.fail_with(Some(CdnError::Throttled {
            distribution: "memory".into(),
            message: "busy".into(),
        }));
        let err = cdn.invalidate(&["/b".into()]).await.unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(cdn.requests(), vec![vec!["/a".to_string()]]);
    }
}
