//! The HTTP side of `serve`: what CloudFront in front of S3 with the origin-response
//! trigger would answer.
//!
//! A request is first looked up in the store, as CloudFront asks S3. A hit is answered as S3
//! answers through CloudFront (stored content type, cache-control, ETag, Last-Modified,
//! conditional requests). A miss becomes a CloudFront origin-response event with S3's 404 and
//! goes through [`EdgeHandler::handle`], the very code Lambda@Edge runs, so what a developer
//! sees locally is what the edge does, errors included.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use serde::Serialize;
use tracing::{debug, warn};

use super::keys::request_key;
use edgethumb::edge::cloudfront::{
    self, CfConfig, CfPayload, Event, Origin, Record, Request, S3OriginConfig,
};
use edgethumb::edge::{BucketLocation, EdgeConfig, EdgeHandler, EdgeOutcome, OriginStores};
use edgethumb::metrics::{self, MetricsSink, Observation, Registry};
use edgethumb::queue::JobQueue;
use edgethumb::store::{Object, ObjectInfo, ObjectStore, StoreError};
use edgethumb::variant::VariantKey;
use edgethumb::viewer::{ViewerGuard, ViewerOutcome};
use edgethumb::worker::process::meta;

/// The `/` page: plain HTML and JS, no build step, compiled into the binary.
const PAGE_HTML: &str = include_str!("page.html");

/// Largest object served from the store. Objects are read whole (the store port has no
/// streaming read), so this bounds the memory one request can take.
pub const MAX_SERVED_BYTES: u64 = 256 * 1024 * 1024;

/// Bounds on the misses rendered at once (about the number of cores).
const MIN_MISS_RENDERS: usize = 2;
const MAX_MISS_RENDERS: usize = 16;

/// Misses that may wait for a render slot, per slot. Beyond that a miss is shed at once.
const MISS_WAITERS_PER_RENDER: usize = 4;
/// How long a miss waits for a render slot before it is shed. A render of a typical photo
/// takes well under a second on one core, so a miss that waited this long is behind a
/// backlog the machine will not clear soon: answering 503 now lets the client come back
/// (`Retry-After`) instead of holding its connection and our memory in an unbounded line.
const MISS_MAX_WAIT: Duration = Duration::from_secs(2);

/// Originals listed on the page at most; the page is for browsing, not an inventory.
const MAX_LISTED_ORIGINALS: usize = 2000;
/// Keys scanned at most when listing, so a huge bucket cannot stall the page.
const MAX_SCANNED_KEYS: usize = 100_000;

/// Source formats the pipeline decodes; other files in the folder are not offered.
const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "gif"];

/// The variants the page shows for each original (its grid) without a `list` guard. Every
/// one is a real request: the first a miss rendered by the edge handler, later ones hits.
const PAGE_GRID: [&str; 11] = [
    "160w.jpg",
    "160w.webp",
    "160w.png",
    "320w.jpg",
    "320w.webp",
    "320w.avif",
    "320w.png",
    "640w.jpg",
    "640w.webp",
    "200w_200h_1e_1c.webp",
    "200w_200h_1e_1c.jpg",
];
/// The small square beside each original in the page's list.
const PAGE_LIST_THUMB: &str = "96w_96h_1e_1c.webp";
/// Grid cells at most with a `list` guard (its presets, then its allow-list).
const MAX_LISTED_GRID: usize = 24;

/// `serve` has one bucket: whatever origin the event names, it is this store.
#[derive(Clone)]
pub struct SingleOrigin(pub Arc<dyn ObjectStore>);

impl OriginStores for SingleOrigin {
    fn store_for(&self, _location: &BucketLocation) -> Arc<dyn ObjectStore> {
        self.0.clone()
    }
}

/// Everything a request needs.
pub struct App {
    store: Arc<dyn ObjectStore>,
    /// The viewer-request rules CloudFront's function applies before the cache lookup
    /// (canonical key, `.auto`, the guard); [`ViewerGuard::Open`] without `--viewer-settings`.
    guard: ViewerGuard,
    handler: EdgeHandler<Arc<dyn JobQueue>, SingleOrigin>,
    origin: Origin,
    error_cache_control: String,
    next_request: AtomicU64,
    /// Misses rendered at once. Lambda@Edge gives every request its own container; here one
    /// process shares the machine, so a burst of misses (a page of new thumbnails, or a
    /// flood) queues instead of holding one decoded original per request in memory.
    miss_permits: tokio::sync::Semaphore,
    /// Misses admitted at once (rendering or waiting for a `miss_permits` slot): the waiting
    /// line is bounded in length as well as in time ([`MISS_MAX_WAIT`]).
    miss_admitted: tokio::sync::Semaphore,
    /// Seconds a shed miss tells the client to wait (`Retry-After`).
    retry_after_seconds: u32,
    /// The counters behind `/metrics`: the edge handler's misses, the in-process worker's
    /// jobs, and every request by kind.
    metrics: Arc<Registry>,
}

impl App {
    /// `bucket` is the name the jobs carry; it is used as a path-style origin
    /// (`s3.amazonaws.com` + `/<bucket>`), the one S3 domain form whose bucket part keeps any
    /// spelling, so it must not contain `/`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        queue: Arc<dyn JobQueue>,
        config: EdgeConfig,
        bucket: &str,
        guard: ViewerGuard,
    ) -> App {
        let origin = Origin {
            s3: Some(S3OriginConfig {
                domain_name: "s3.amazonaws.com".into(),
                path: format!("/{bucket}"),
                region: config.bucket_region.clone(),
                auth_method: Some("origin-access-control".into()),
                extra: Default::default(),
            }),
            custom: None,
        };
        let error_cache_control = config.error_cache_control.clone();
        let retry_after_seconds = config.retry_after_seconds;
        let renders = edgethumb::available_cores().clamp(MIN_MISS_RENDERS, MAX_MISS_RENDERS);
        let metrics = Arc::new(Registry::new());
        App {
            handler: EdgeHandler::new(config, queue, SingleOrigin(store.clone()))
                .with_metrics(metrics.clone()),
            metrics,
            store,
            guard,
            origin,
            error_cache_control,
            next_request: AtomicU64::new(1),
            miss_permits: tokio::sync::Semaphore::new(renders),
            miss_admitted: tokio::sync::Semaphore::new(renders * (1 + MISS_WAITERS_PER_RENDER)),
            retry_after_seconds,
        }
    }

    /// The registry the in-process worker records its jobs in.
    pub fn metrics(&self) -> Arc<Registry> {
        self.metrics.clone()
    }

    /// The origin-response event CloudFront would send the trigger after S3 answered 404.
    /// `path` is the URI as the viewer-request rules left it (canonical for a variant).
    fn miss_event(&self, method: &Method, path: &str) -> Event {
        let n = self.next_request.fetch_add(1, Ordering::Relaxed);
        let mut response_headers = cloudfront::Headers::new();
        cloudfront::header(&mut response_headers, "Content-Type", "application/xml");
        cloudfront::header(&mut response_headers, "Server", "AmazonS3");
        Event {
            records: vec![Record {
                cf: CfPayload {
                    config: CfConfig {
                        distribution_domain_name: "localhost".into(),
                        distribution_id: "EDGETHUMBSERVE".into(),
                        event_type: "origin-response".into(),
                        request_id: format!("serve-{n}"),
                    },
                    request: Request {
                        client_ip: String::new(),
                        headers: cloudfront::Headers::new(),
                        method: method.as_str().to_string(),
                        querystring: String::new(),
                        uri: path.to_string(),
                        origin: Some(self.origin.clone()),
                        extra: Default::default(),
                    },
                    response: Some(cloudfront::Response {
                        status: "404".into(),
                        status_description: Some("Not Found".into()),
                        headers: response_headers,
                        body: None,
                        body_encoding: None,
                    }),
                },
            }],
        }
    }

    fn error(&self, status: StatusCode, message: &str) -> Response {
        let mut response = (status, format!("{message}\n")).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Ok(value) = HeaderValue::from_str(&self.error_cache_control) {
            headers.insert(header::CACHE_CONTROL, value);
        }
        headers.insert(X_EDGETHUMB, HeaderValue::from_static("error"));
        response
    }

    /// A miss shed because the renders are saturated: 503 with `Retry-After` and
    /// `no-store`, as the edge answers a render it cannot do now (CloudFront must not cache
    /// it, and the client should come back).
    fn busy(&self, why: &str) -> Response {
        let mut response = self.error(StatusCode::SERVICE_UNAVAILABLE, why);
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(self.retry_after_seconds),
        );
        headers.insert(X_EDGETHUMB, HeaderValue::from_static("busy"));
        response
    }
}

/// Which path answered: `hit` (the store), `miss` (the edge handler), `error`,
/// `pass-through` (S3's own 404), `viewer-reject` (the viewer-request rules: 400/403).
const X_EDGETHUMB: &str = "x-edgethumb";
const SERVER_TIMING: &str = "server-timing";

/// The routes. `/_edgethumb/*` is reserved for the page's own API; everything else is an
/// object key.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/_edgethumb/originals", get(originals))
        .route("/metrics", get(metrics_page))
        .fallback(object)
        .with_state(app)
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE_HTML,
    )
        .into_response()
}

/// One original as the page lists it.
#[derive(Debug, Serialize)]
struct OriginalEntry {
    key: String,
    size: u64,
    last_modified: Option<String>,
    /// With a `signed` guard: the signed URL of each grid variant and of the list
    /// thumbnail, by parameter string (a site's own pages link signed URLs the same way).
    #[serde(skip_serializing_if = "Option::is_none")]
    urls: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Serialize)]
struct OriginalsList {
    bucket: String,
    /// The viewer guard's mode: `none`, `signed` or `list`.
    guard: &'static str,
    /// Parameter strings (or preset names) the page shows for each original.
    grid: Vec<String>,
    /// Parameters of the list thumbnail; `null` with a `list` guard (the page then shows
    /// the original itself, which passes every guard).
    list_thumb: Option<&'static str>,
    originals: Vec<OriginalEntry>,
    /// More originals exist than are listed (the listing is capped).
    truncated: bool,
}

/// What the page shows under `guard`: its grid and list thumbnail.
fn page_variants(guard: &ViewerGuard) -> (&'static str, Vec<String>, Option<&'static str>) {
    let default_grid = || PAGE_GRID.iter().map(|p| p.to_string()).collect();
    match guard {
        ViewerGuard::Open => ("none", default_grid(), Some(PAGE_LIST_THUMB)),
        ViewerGuard::Signed { .. } => ("signed", default_grid(), Some(PAGE_LIST_THUMB)),
        ViewerGuard::List { presets, allow } => {
            let grid = presets
                .keys()
                .chain(allow.iter())
                .take(MAX_LISTED_GRID)
                .cloned()
                .collect();
            ("list", grid, None)
        }
    }
}

/// The URL path of `key@params`, encoded as the viewer-request rules re-encode keys.
fn variant_path(key: &str, params: &str) -> String {
    format!(
        "/{}",
        edgethumb::viewer::encode_key(&format!("{key}@{params}"))
    )
}

/// Signed URLs of the page's variants of one original, with the signing key the page uses
/// (the last key id in sort order: during a rotation, name the new key after the old one).
fn signed_page_urls(
    guard: &ViewerGuard,
    key: &str,
    grid: &[String],
    list_thumb: Option<&str>,
) -> Option<std::collections::BTreeMap<String, String>> {
    let ViewerGuard::Signed { keys } = guard else {
        return None;
    };
    let (id, secret) = keys.iter().next_back()?;
    let urls = grid
        .iter()
        .map(String::as_str)
        .chain(list_thumb)
        .filter_map(|params| {
            edgethumb::viewer::sign_url(&variant_path(key, params), id, secret.as_bytes())
                .ok()
                .map(|url| (params.to_string(), url))
        })
        .collect();
    Some(urls)
}

/// Whether a listed key is an original the page should offer.
fn is_listed_original(key: &str) -> bool {
    if key.contains('@') || super::keys::check_key(key).is_err() {
        return false;
    }
    key.rsplit_once('.').is_some_and(|(_, ext)| {
        IMAGE_EXTENSIONS
            .iter()
            .any(|known| ext.eq_ignore_ascii_case(known))
    })
}

async fn originals(State(app): State<Arc<App>>) -> Response {
    let (guard, grid, list_thumb) = page_variants(&app.guard);
    let mut listed = Vec::new();
    let mut scanned = 0usize;
    let mut continuation = None;
    let mut truncated = false;
    loop {
        let page = match app
            .store
            .list_page("", continuation, edgethumb::store::MAX_PAGE_SIZE)
            .await
        {
            Ok(page) => page,
            Err(error) => {
                warn!(event = "serve.list_failed", error = %error);
                return app.error(StatusCode::BAD_GATEWAY, &format!("listing failed: {error}"));
            }
        };
        scanned += page.objects.len();
        for info in page.objects {
            if !is_listed_original(&info.key) {
                continue;
            }
            if listed.len() == MAX_LISTED_ORIGINALS {
                truncated = true;
                break;
            }
            listed.push(OriginalEntry {
                last_modified: info.last_modified.map(httpdate::fmt_http_date),
                urls: signed_page_urls(&app.guard, &info.key, &grid, list_thumb),
                key: info.key,
                size: info.size,
            });
        }
        continuation = page.continuation;
        if continuation.is_none() || truncated {
            break;
        }
        if scanned >= MAX_SCANNED_KEYS {
            truncated = true;
            break;
        }
    }
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    let body = OriginalsList {
        bucket: app.store.bucket().to_string(),
        guard,
        grid,
        list_thumb,
        originals: listed,
        truncated,
    };
    let mut response = axum::Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The counters in the Prometheus text format (the same catalogue as the CloudWatch
/// metrics of a deployed stack: src/metrics.rs).
async fn metrics_page(State(app): State<Arc<App>>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        app.metrics.render(),
    )
        .into_response()
}

/// Any other path: an object key, served from the store or rendered on a miss; counted by
/// kind (the `x-edgethumb` answer: hit, miss, error, busy, viewer-reject, pass-through).
async fn object(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    request_headers: HeaderMap,
) -> Response {
    let response = answer_object(&app, method, uri, request_headers).await;
    let kind = response
        .headers()
        .get(X_EDGETHUMB)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("other")
        .to_string();
    app.metrics.record(
        &Observation::new("serve")
            .dimension("Kind", kind)
            .count(&metrics::SERVE_REQUESTS, true),
    );
    response
}

async fn answer_object(
    app: &App,
    method: Method,
    uri: Uri,
    request_headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    if method != Method::GET && method != Method::HEAD {
        let mut response = app.error(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    // Hostile paths are refused before anything else reads them.
    if let Err(refusal) = request_key(uri.path()) {
        return with_total_timing(key_refusal(app, &refusal), started);
    }
    // What the viewer-request function does before CloudFront's cache lookup: one
    // canonical URI per variant (so one stored object and one job), `.auto` resolved from
    // `Accept`, the guard; the query string goes no further.
    let accept = request_headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let path = match app
        .guard
        .evaluate(uri.path(), uri.query().unwrap_or(""), accept)
    {
        ViewerOutcome::PassThrough => uri.path().to_string(),
        ViewerOutcome::Rewrite { uri } => uri,
        ViewerOutcome::Reject { status, message } => {
            debug!(
                event = "serve.viewer_reject",
                status,
                message = message.as_str()
            );
            return with_total_timing(viewer_reject(status, &message), started);
        }
    };
    let key = match request_key(&path) {
        Ok(key) => key,
        Err(refusal) => return with_total_timing(key_refusal(app, &refusal), started),
    };
    let response = match is_stale_variant(app, &key).await {
        // Rendered from a replaced or deleted original: answered as a miss (a fresh render
        // from the current original, or its 404), whose job rewrites the stored copy.
        Ok(true) => miss(app, &method, &path).await,
        Ok(false) => match lookup(app, &key, &request_headers).await {
            Ok(Some(hit)) => hit,
            Ok(None) => miss(app, &method, &path).await,
            Err(error) => store_error(app, &key, &error),
        },
        Err(error) => store_error(app, &key, &error),
    };
    with_total_timing(response, started)
}

fn key_refusal(app: &App, refusal: &super::keys::KeyRefusal) -> Response {
    let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
    app.error(status, &refusal.to_string())
}

/// The answer the viewer-request function generates (viewer-request.js `reject`): the
/// status, the message as a text body, never cached.
fn viewer_reject(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    let mut response = (status, message.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_EDGETHUMB, HeaderValue::from_static("viewer-reject"));
    response
}

/// A store failure on the hit path, as CloudFront would show S3's answer.
fn store_error(app: &App, key: &str, error: &StoreError) -> Response {
    let status = match error {
        StoreError::InvalidKey { .. } | StoreError::InvalidRequest { .. } => {
            StatusCode::BAD_REQUEST
        }
        StoreError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        StoreError::AccessDenied { .. } => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_GATEWAY,
    };
    warn!(event = "serve.store_failed", key, error = %error);
    app.error(status, &error.to_string())
}

/// Whether `key` is a variant we wrote from an original that has since been replaced or
/// deleted. Deployed, S3's event makes the worker rewrite it and invalidate CloudFront; a
/// folder only tells `watch` at its next poll, so each request checks (two HEADs) and the
/// next request after a replacement already shows the new picture. Objects without our
/// `original-etag` (hand-made `key@…` files) are served as they are.
async fn is_stale_variant(app: &App, key: &str) -> Result<bool, StoreError> {
    let Ok(variant) = VariantKey::parse(key) else {
        return Ok(false);
    };
    let Some(info) = app.store.head(key).await? else {
        return Ok(false);
    };
    let Some(recorded) = info.metadata.get(meta::ORIGINAL_ETAG) else {
        return Ok(false);
    };
    let original = app.store.head(&variant.original_key).await?;
    let stale = original.and_then(|o| o.etag).as_ref() != Some(recorded);
    if stale {
        debug!(event = "serve.stale_variant", key);
    }
    Ok(stale)
}

/// The hit path: `Ok(None)` when the key is not in the store.
async fn lookup(
    app: &App,
    key: &str,
    request_headers: &HeaderMap,
) -> Result<Option<Response>, StoreError> {
    let fetch_started = Instant::now();
    let conditional = request_headers.contains_key(header::IF_NONE_MATCH)
        || request_headers.contains_key(header::IF_MODIFIED_SINCE);
    if conditional {
        // Answer 304 from the metadata alone, without reading the body.
        let Some(info) = app.store.head(key).await? else {
            return Ok(None);
        };
        if not_modified(request_headers, &info) {
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            object_headers(response.headers_mut(), &info);
            response.headers_mut().remove(header::CONTENT_LENGTH);
            response.headers_mut().remove(header::CONTENT_TYPE);
            timing(response.headers_mut(), "store", fetch_started.elapsed());
            debug!(event = "serve.not_modified", key);
            return Ok(Some(response));
        }
    }
    let Some(object) = app.store.get(key, MAX_SERVED_BYTES).await? else {
        return Ok(None);
    };
    let fetch = fetch_started.elapsed();
    debug!(event = "serve.hit", key, bytes = object.body.len());
    Ok(Some(hit_response(object, fetch)))
}

fn hit_response(object: Object, fetch: Duration) -> Response {
    let Object { info, body } = object;
    let mut response = Response::new(Body::from(body));
    object_headers(response.headers_mut(), &info);
    timing(response.headers_mut(), "store", fetch);
    response
}

/// The headers S3 sends for an object (and CloudFront forwards).
fn object_headers(headers: &mut HeaderMap, info: &ObjectInfo) {
    let content_type = info
        .content_type
        .as_deref()
        .unwrap_or("binary/octet-stream");
    let mut set = |name: HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(header::CONTENT_TYPE, content_type);
    set(header::CONTENT_LENGTH, &info.size.to_string());
    if let Some(cache_control) = &info.cache_control {
        set(header::CACHE_CONTROL, cache_control);
    }
    if let Some(etag) = &info.etag {
        set(header::ETAG, etag);
    }
    if let Some(modified) = info.last_modified {
        set(header::LAST_MODIFIED, &httpdate::fmt_http_date(modified));
    }
    for (name, value) in &info.metadata {
        if let Ok(name) = HeaderName::from_bytes(format!("x-amz-meta-{name}").as_bytes()) {
            set(name, value);
        }
    }
    headers.insert(X_EDGETHUMB, HeaderValue::from_static("hit"));
}

/// RFC 9110 §13.1.2/§13.1.3: If-None-Match wins over If-Modified-Since; weak comparison.
fn not_modified(request_headers: &HeaderMap, info: &ObjectInfo) -> bool {
    if let Some(if_none_match) = request_headers.get(header::IF_NONE_MATCH) {
        let (Ok(list), Some(etag)) = (if_none_match.to_str(), info.etag.as_deref()) else {
            return false;
        };
        let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_string();
        let ours = opaque(etag);
        return list
            .split(',')
            .any(|candidate| candidate.trim() == "*" || opaque(candidate) == ours);
    }
    let since = request_headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    match (since, info.last_modified) {
        (Some(since), Some(modified)) => whole_seconds(modified) <= since,
        _ => false,
    }
}

/// HTTP dates have one-second resolution; compare at that resolution.
fn whole_seconds(time: SystemTime) -> SystemTime {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs())
}

/// The miss path: the edge handler, given what CloudFront would give it.
async fn miss(app: &App, method: &Method, path: &str) -> Response {
    let event = app.miss_event(method, path);
    // Load shedding: a bounded line (miss_admitted), a bounded wait in it (MISS_MAX_WAIT),
    // then 503 + Retry-After. Waiting without bound would let a flood of misses hold every
    // connection (and its request) open for as long as the backlog lasts. The semaphores
    // are never closed, so acquiring fails only by being full or by the timeout.
    let Ok(_admitted) = app.miss_admitted.try_acquire() else {
        debug!(event = "serve.miss_shed", reason = "line full");
        return app.busy("busy: too many thumbnails rendering, try again shortly");
    };
    let Ok(Ok(_permit)) = tokio::time::timeout(MISS_MAX_WAIT, app.miss_permits.acquire()).await
    else {
        debug!(event = "serve.miss_shed", reason = "waited too long");
        return app.busy("busy: too many thumbnails rendering, try again shortly");
    };
    match app.handler.handle(&event).await {
        // A real 404 (no `@` in the key): S3's answer goes back to the client.
        EdgeOutcome::PassThrough => {
            let mut response = app.error(StatusCode::NOT_FOUND, "NoSuchKey: no such object");
            response
                .headers_mut()
                .insert(X_EDGETHUMB, HeaderValue::from_static("pass-through"));
            response
        }
        EdgeOutcome::Generated { response, timings } => {
            let mut response = generated_response(response);
            // The handler writes `Server-Timing` while building the response, before its
            // total is known; the returned timings are complete.
            if response.headers().contains_key(SERVER_TIMING)
                && let Ok(value) = HeaderValue::from_str(&timings.server_timing())
            {
                response.headers_mut().insert(SERVER_TIMING, value);
            }
            response
        }
    }
}

/// A Lambda@Edge generated response as CloudFront turns it into HTTP.
fn generated_response(generated: cloudfront::Response) -> Response {
    let status = generated
        .status
        .parse::<u16>()
        .ok()
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let body = match (generated.body, generated.body_encoding.as_deref()) {
        (None, _) => Vec::new(),
        (Some(body), Some("base64")) => {
            match base64::engine::general_purpose::STANDARD.decode(body.as_bytes()) {
                Ok(bytes) => bytes,
                Err(error) => {
                    // CloudFront answers 502 when a trigger returns an invalid body.
                    warn!(event = "serve.invalid_generated_body", error = %error);
                    return (StatusCode::BAD_GATEWAY, "invalid generated body\n").into_response();
                }
            }
        }
        (Some(body), _) => body.into_bytes(),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, values) in generated.headers {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        for value in values {
            if let Ok(value) = HeaderValue::from_str(&value.value) {
                headers.append(name.clone(), value);
            }
        }
    }
    response
}

/// Add one metric to `Server-Timing`, keeping a single header line.
fn timing(headers: &mut HeaderMap, name: &str, duration: Duration) {
    let entry = format!("{name};dur={:.1}", duration.as_secs_f64() * 1000.0);
    let combined = match headers.get(SERVER_TIMING).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing}, {entry}"),
        _ => entry,
    };
    if let Ok(value) = HeaderValue::from_str(&combined) {
        headers.insert(SERVER_TIMING, value);
    }
}

/// Every response says how long `serve` took in all (the handler's own steps come first).
fn with_total_timing(mut response: Response, started: Instant) -> Response {
    let has_total = response
        .headers()
        .get_all(SERVER_TIMING)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("total;")));
    if !has_total {
        timing(response.headers_mut(), "total", started.elapsed());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(etag: &str, modified_secs: u64) -> ObjectInfo {
        ObjectInfo {
            key: "k".into(),
            size: 3,
            etag: Some(etag.into()),
            last_modified: Some(
                SystemTime::UNIX_EPOCH + Duration::from_millis(modified_secs * 1000 + 700),
            ),
            ..Default::default()
        }
    }

    fn headers(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn if_none_match_compares_weakly_and_lists() {
        let object = info("\"abc\"", 1000);
        for value in ["\"abc\"", "W/\"abc\"", "\"x\", \"abc\"", "*"] {
            assert!(
                not_modified(&headers(&[(header::IF_NONE_MATCH, value)]), &object),
                "{value}"
            );
        }
        for value in ["\"abd\"", "abc", ""] {
            assert!(
                !not_modified(&headers(&[(header::IF_NONE_MATCH, value)]), &object),
                "{value}"
            );
        }
    }

    #[test]
    fn if_none_match_wins_over_if_modified_since() {
        let object = info("\"abc\"", 1000);
        let since = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(5000));
        let map = headers(&[
            (header::IF_NONE_MATCH, "\"other\""),
            (header::IF_MODIFIED_SINCE, &since),
        ]);
        assert!(!not_modified(&map, &object));
    }

    #[test]
    fn if_modified_since_at_second_resolution() {
        let object = info("\"abc\"", 1000);
        let at = |secs| httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert!(not_modified(
            &headers(&[(header::IF_MODIFIED_SINCE, &at(1000))]),
            &object
        ));
        assert!(!not_modified(
            &headers(&[(header::IF_MODIFIED_SINCE, &at(999))]),
            &object
        ));
        assert!(!not_modified(
            &headers(&[(header::IF_MODIFIED_SINCE, "garbage")]),
            &object
        ));
    }

    fn test_app() -> App {
        let store: Arc<dyn ObjectStore> =
            Arc::new(edgethumb::store::memory::MemoryStore::new("bucket"));
        let queue: Arc<dyn JobQueue> = Arc::new(edgethumb::queue::memory::MemoryQueue::new("q"));
        let config = super::super::edge_config("q", "local").unwrap();
        App::new(
            store,
            queue,
            config,
            "bucket",
            edgethumb::viewer::ViewerGuard::Open,
        )
    }

    fn miss_uri() -> String {
        "/photos/none.jpg@20w.webp".to_string()
    }

    fn assert_shed(response: &Response) {
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(response.headers()[X_EDGETHUMB], "busy");
    }

    /// Regression (issue 18): with every render slot taken, a miss used to wait on the
    /// semaphore for as long as the backlog lasted. It must be shed with 503 + Retry-After
    /// after a bounded wait.
    #[tokio::test(start_paused = true)]
    async fn a_miss_waits_a_bounded_time_for_a_render_slot_then_is_shed() {
        let app = test_app();
        let slots = u32::try_from(app.miss_permits.available_permits()).unwrap();
        let held = app.miss_permits.acquire_many(slots).await.unwrap();
        let started = tokio::time::Instant::now();
        let response = tokio::time::timeout(
            Duration::from_secs(600),
            miss(&app, &Method::GET, &miss_uri()),
        )
        .await
        .expect("a miss must not wait without bound for a render slot");
        assert_shed(&response);
        assert!(started.elapsed() >= MISS_MAX_WAIT);
        assert!(started.elapsed() < MISS_MAX_WAIT + Duration::from_secs(1));
        // Once a slot is free, misses are rendered again (here: no original, so 404).
        drop(held);
        let response = miss(&app, &Method::GET, &miss_uri()).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    /// The line of misses waiting for a slot is bounded in length: past it, a miss is shed
    /// at once, without waiting at all.
    #[tokio::test(start_paused = true)]
    async fn a_miss_beyond_the_waiting_line_is_shed_at_once() {
        let app = test_app();
        let admitted = u32::try_from(app.miss_admitted.available_permits()).unwrap();
        let renders = app.miss_permits.available_permits();
        assert!(admitted as usize > renders, "some misses may wait");
        let _line = app.miss_admitted.acquire_many(admitted).await.unwrap();
        let started = tokio::time::Instant::now();
        let response = miss(&app, &Method::GET, &miss_uri()).await;
        assert_shed(&response);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[test]
    fn listed_originals_are_images_without_at() {
        assert!(is_listed_original("photos/cat.jpg"));
        assert!(is_listed_original("a/B.JPEG"));
        assert!(!is_listed_original("photos/cat.jpg@200w.webp"));
        assert!(!is_listed_original(".edgethumb/queue/1.json"));
        assert!(!is_listed_original("notes.txt"));
        assert!(!is_listed_original("noext"));
    }

    #[test]
    fn generated_base64_body_is_decoded_with_headers() {
        let mut headers = cloudfront::Headers::new();
        cloudfront::header(&mut headers, "Content-Type", "image/webp");
        cloudfront::header(&mut headers, "X-Edgethumb", "miss");
        let response = generated_response(cloudfront::Response {
            status: "200".into(),
            status_description: Some("OK".into()),
            headers,
            body: Some(base64::engine::general_purpose::STANDARD.encode(b"RIFF")),
            body_encoding: Some("base64".into()),
        });
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "image/webp");
        assert_eq!(response.headers()["x-edgethumb"], "miss");
    }

    #[test]
    fn generated_bad_status_or_body_is_502() {
        let bad_status = generated_response(cloudfront::Response {
            status: "abc".into(),
            status_description: None,
            headers: Default::default(),
            body: None,
            body_encoding: None,
        });
        assert_eq!(bad_status.status(), StatusCode::BAD_GATEWAY);
        let bad_body = generated_response(cloudfront::Response {
            status: "200".into(),
            status_description: None,
            headers: Default::default(),
            body: Some("!!not base64!!".into()),
            body_encoding: Some("base64".into()),
        });
        assert_eq!(bad_body.status(), StatusCode::BAD_GATEWAY);
    }
}
