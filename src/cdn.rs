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
    let mut keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.len() <= MAX_WILDCARD_PATHS_PER_REQUEST {
        return keys.iter().flat_map(|k| original_paths(k)).collect();
    }
    vec![format!("{}*", path_of(common_directory(&keys)))]
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

/// An in-memory CDN that records every request (tests).
#[derive(Debug, Default)]
pub struct MemoryCdn {
    requests: Mutex<Vec<Vec<String>>>,
    fail_with: Mutex<Option<CdnError>>,
}

impl MemoryCdn {
    pub fn new() -> Self {
        MemoryCdn::default()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Vec<String>> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Make the following requests fail with `error` (`None`: succeed again).
    pub fn fail_with(&self, error: Option<CdnError>) {
        *self.fail_with.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }
}

#[async_trait]
impl CdnInvalidator for MemoryCdn {
    fn distribution(&self) -> &str {
        "memory"
    }

    async fn invalidate(&self, paths: &[String]) -> Result<String, CdnError> {
        if let Some(error) = self
            .fail_with
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(error);
        }
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        requests.push(paths.to_vec());
        Ok(format!("memory-{}", requests.len()))
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
