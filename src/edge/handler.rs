//! The origin-response handler: pass hits through, render misses.
//!
//! Generic over the ports, so the Lambda@Edge addon (S3 + SQS), the regional
//! `lambda_runtime` binary and `edgethumb serve` (filesystem + local queue) share it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use md5::{Digest, Md5};
use percent_encoding::percent_decode_str;
use tracing::{info, warn};

use super::budget::{self, BudgetError};
use super::cloudfront::{Event, Headers, Response, header};
use super::config::EdgeConfig;
use super::origin::{BucketLocation, bucket_location};
use crate::job::{Job, JobReason};
use crate::metrics::{self, MetricsSink, NoMetrics, Observation};
use crate::pipeline::{self, EncodeSpec, PipelineError, Profile};
use crate::queue::JobQueue;
use crate::store::{ObjectStore, StoreError};
use crate::variant::{DEFAULT_QUALITY, VariantKey};

/// Gives the store for the bucket an origin points at. The S3 implementation caches one
/// client per region, so this is cheap per request.
pub trait OriginStores: Send + Sync {
    fn store_for(&self, location: &BucketLocation) -> Arc<dyn ObjectStore>;
}

impl<F> OriginStores for F
where
    F: Fn(&BucketLocation) -> Arc<dyn ObjectStore> + Send + Sync,
{
    fn store_for(&self, location: &BucketLocation) -> Arc<dyn ObjectStore> {
        self(location)
    }
}

/// How long each step of a miss took, for logs and `Server-Timing`, and whether its job
/// reached the queue.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MissTimings {
    pub fetch: Duration,
    pub render: Duration,
    pub enqueue: Duration,
    pub total: Duration,
    /// `Some(true)` once the queue accepted the job, `Some(false)` if sending it failed,
    /// `None` if the miss ended before a job could be sent (bad URL, original unavailable).
    pub job_sent: Option<bool>,
}

impl MissTimings {
    pub fn server_timing(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "fetch;dur={:.1}, render;dur={:.1}, enqueue;dur={:.1}, total;dur={:.1}",
            ms(self.fetch),
            ms(self.render),
            ms(self.enqueue),
            ms(self.total)
        )
    }
}

/// What a miss did besides its timings, for the metrics.
#[derive(Debug, Clone, Default)]
struct MissFacts {
    /// Output format's extension when an image was returned.
    format: Option<&'static str>,
    output_bytes: usize,
    reencoded: bool,
    over_budget: bool,
    enqueue_failed: bool,
}

/// What to do with CloudFront's response.
#[derive(Debug, Clone, PartialEq)]
pub enum EdgeOutcome {
    /// Return CloudFront's response unchanged (a hit, or a real 404).
    PassThrough,
    /// Return this generated response instead.
    Generated {
        response: Response,
        timings: MissTimings,
    },
}

/// Why a miss could not be served as an image; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
enum MissError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("original {0:?} not found")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Undecodable(String),
    #[error("origin error: {0}")]
    Origin(String),
    #[error("{0}")]
    OverBudget(String),
    /// The render ran out of time or memory: not the request's fault, worth a retry.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl MissError {
    fn status(&self) -> (u16, &'static str) {
        match self {
            MissError::BadRequest(_) => (400, "Bad Request"),
            MissError::NotFound(_) => (404, "Not Found"),
            MissError::TooLarge(_) => (413, "Payload Too Large"),
            MissError::Unsupported(_) => (415, "Unsupported Media Type"),
            MissError::Undecodable(_) => (422, "Unprocessable Content"),
            MissError::Origin(_) => (502, "Bad Gateway"),
            MissError::OverBudget(_) | MissError::Unavailable(_) => (503, "Service Unavailable"),
            MissError::Internal(_) => (500, "Internal Server Error"),
        }
    }
}

impl From<PipelineError> for MissError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::TooManyBytes { .. } | PipelineError::TooManyPixels { .. } => {
                MissError::TooLarge(e.to_string())
            }
            PipelineError::UnsupportedFormat(_) => MissError::Unsupported(e.to_string()),
            PipelineError::Corrupt { .. } => MissError::Undecodable(e.to_string()),
            PipelineError::OutOfMemory { .. } | PipelineError::DeadlineExceeded { .. } => {
                MissError::Unavailable(e.to_string())
            }
            PipelineError::Encode { .. } | PipelineError::Internal(_) => {
                MissError::Internal(e.to_string())
            }
        }
    }
}

impl From<StoreError> for MissError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TooLarge { .. } => MissError::TooLarge(e.to_string()),
            StoreError::InvalidKey { .. } => MissError::BadRequest(e.to_string()),
            // Throttling, 5xx, a reset or short body: the next try may well succeed, so
            // answer as for any transient failure (503, Retry-After, no-store) rather than
            // with a 502 that CloudFront would cache as an error.
            _ if e.is_retryable() => MissError::Unavailable(format!("origin unavailable: {e}")),
            _ => MissError::Origin(e.to_string()),
        }
    }
}

/// The metrics of one miss (docs/operations.md): low-cardinality dimensions only.
fn miss_observation(response: &Response, timings: &MissTimings, facts: &MissFacts) -> Observation {
    Observation::new("edge")
        .dimension("StatusClass", metrics::status_class(&response.status))
        .dimension("Format", facts.format.unwrap_or("none"))
        .count(&metrics::EDGE_MISSES, true)
        .duration(&metrics::EDGE_MISS_LATENCY, timings.total)
        .duration(&metrics::EDGE_FETCH_TIME, timings.fetch)
        .duration(&metrics::EDGE_RENDER_TIME, timings.render)
        .duration(&metrics::EDGE_ENQUEUE_TIME, timings.enqueue)
        .value(&metrics::EDGE_OUTPUT_BYTES, facts.output_bytes as f64)
        .count(&metrics::EDGE_REENCODED, facts.reencoded)
        .count(&metrics::EDGE_OVER_BUDGET, facts.over_budget)
        .count(&metrics::EDGE_ENQUEUE_FAILURES, facts.enqueue_failed)
}

/// How long past the render deadline the handler waits for the render task before it
/// answers 503 anyway (the pipeline's own deadline checks normally answer first).
const RENDER_GRACE: Duration = Duration::from_millis(250);

/// Wait for a render task at most `allowed + grace`; past that, a 503 (the task is left to
/// finish or hit its own deadline check in the background: a blocking thread cannot be
/// cancelled, but the response must not wait for it).
async fn await_bounded<T>(
    task: tokio::task::JoinHandle<Result<T, MissError>>,
    allowed: Duration,
    grace: Duration,
) -> Result<T, MissError> {
    match tokio::time::timeout(allowed + grace, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(MissError::Internal(format!("render task failed: {join}"))),
        Err(_) => Err(MissError::Unavailable(format!(
            "rendering did not finish within its deadline of {} ms",
            allowed.as_millis()
        ))),
    }
}

/// The origin-response handler.
pub struct EdgeHandler<Q, O> {
    config: EdgeConfig,
    queue: Q,
    stores: O,
    metrics: Arc<dyn MetricsSink>,
}

/// The request key (without the leading `/`) if the URI names a variant.
fn decoded_key(uri: &str) -> Result<String, MissError> {
    let raw = uri.strip_prefix('/').unwrap_or(uri);
    percent_decode_str(raw)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| MissError::BadRequest(format!("URI {uri:?} is not valid UTF-8 once decoded")))
}

impl<Q: JobQueue, O: OriginStores> EdgeHandler<Q, O> {
    pub fn new(config: EdgeConfig, queue: Q, stores: O) -> Self {
        EdgeHandler {
            config,
            queue,
            stores,
            metrics: Arc::new(NoMetrics),
        }
    }

    /// Where each miss's observation goes (EMF on Lambda, a registry in `serve`).
    pub fn with_metrics(mut self, metrics: Arc<dyn MetricsSink>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn config(&self) -> &EdgeConfig {
        &self.config
    }

    /// Handle an origin-response event given as JSON; `Ok(None)` means "return
    /// CloudFront's response unchanged" (the caller still holds it, byte for byte).
    pub async fn handle_json(&self, event_json: &str) -> Result<Option<String>, serde_json::Error> {
        let event: Event = serde_json::from_str(event_json)?;
        match self.handle(&event).await {
            EdgeOutcome::PassThrough => Ok(None),
            EdgeOutcome::Generated { response, .. } => serde_json::to_string(&response).map(Some),
        }
    }

    pub async fn handle(&self, event: &Event) -> EdgeOutcome {
        let Some(record) = event.records.first() else {
            warn!(
                event = "edge.no_records",
                "origin-response event without records"
            );
            return EdgeOutcome::PassThrough;
        };
        let cf = &record.cf;
        let status = cf.response.as_ref().map(|r| r.status.as_str());
        if !matches!(status, Some("403") | Some("404")) || !cf.request.uri.contains('@') {
            return EdgeOutcome::PassThrough;
        }
        let started = Instant::now();
        let mut timings = MissTimings::default();
        let mut facts = MissFacts::default();
        let uri = cf.request.uri.as_str();
        let mut response = match self.render_miss(cf, &mut timings, &mut facts).await {
            Ok(response) => response,
            Err(error) => {
                facts.over_budget = matches!(error, MissError::OverBudget(_));
                let (code, _) = error.status();
                warn!(
                    event = "edge.miss_failed",
                    uri,
                    status = code,
                    request_id = cf.config.request_id.as_str(),
                    error = %error,
                );
                self.error_response(&error)
            }
        };
        timings.total = started.elapsed();
        if response.headers.contains_key("server-timing") {
            // Rewritten now that the total is known; the budget was measured with longer values.
            header(
                &mut response.headers,
                "Server-Timing",
                timings.server_timing(),
            );
        }
        info!(
            event = "edge.miss",
            uri,
            status = response.status.as_str(),
            body_bytes = response.body.as_ref().map_or(0, |b| b.len()),
            fetch_ms = timings.fetch.as_millis() as u64,
            render_ms = timings.render.as_millis() as u64,
            enqueue_ms = timings.enqueue.as_millis() as u64,
            total_ms = timings.total.as_millis() as u64,
            job = match timings.job_sent {
                Some(true) => "sent",
                Some(false) => "failed",
                None => "none",
            },
        );
        self.metrics
            .record(&miss_observation(&response, &timings, &facts));
        EdgeOutcome::Generated { response, timings }
    }

    async fn render_miss(
        &self,
        cf: &super::cloudfront::CfPayload,
        timings: &mut MissTimings,
        facts: &mut MissFacts,
    ) -> Result<Response, MissError> {
        let key = decoded_key(&cf.request.uri)?;
        let variant = VariantKey::parse(&key).map_err(|e| MissError::BadRequest(e.to_string()))?;
        let mut location = bucket_location(cf.request.origin.as_ref())
            .map_err(|e| MissError::Origin(e.to_string()))?;
        if location.region.is_none() {
            location.region = self.config.bucket_region.clone();
        }
        let store = self.stores.store_for(&location);
        let original_key = location.object_key(&variant.original_key);
        let variant_object_key = location.object_key(&key);

        let fetch_started = Instant::now();
        let original = store
            .get(&original_key, self.config.max_source_bytes)
            .await?
            .ok_or_else(|| MissError::NotFound(original_key.clone()))?;
        timings.fetch = fetch_started.elapsed();

        // Enqueue while rendering; both are awaited before returning because Lambda
        // freezes the process once the response is out.
        let enqueue = async {
            let started = Instant::now();
            let result = match Job::new(
                location.bucket.clone(),
                variant_object_key.clone(),
                JobReason::Miss,
                original.info.etag.clone(),
            ) {
                Ok(job) => self
                    .queue
                    .send(&job.to_json())
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            (result, started.elapsed())
        };
        let render = self.render(original.body.clone(), variant.clone());
        let ((enqueued, enqueue_time), (rendered, render_time)) = tokio::join!(enqueue, render);
        timings.enqueue = enqueue_time;
        timings.job_sent = Some(enqueued.is_ok());
        // The time spent, whether the render succeeded or not (a 503 after a deadline
        // should say how long it tried).
        timings.render = render_time;
        facts.enqueue_failed = enqueued.is_err();
        if let Err(error) = enqueued {
            // Still serve the image: the next miss enqueues again.
            warn!(
                event = "edge.enqueue_failed",
                queue = self.queue.name(),
                variant = variant_object_key.as_str(),
                error = error.as_str(),
            );
        }
        let fitted = rendered?;
        facts.format = Some(fitted.spec.format.extension());
        facts.output_bytes = fitted.bytes.len();
        facts.reencoded = fitted.attempts > 1;
        let mut response = self.image_response(&fitted.bytes, fitted.spec, timings);
        response.body = Some(base64::engine::general_purpose::STANDARD.encode(&fitted.bytes));
        if fitted.attempts > 1 {
            info!(
                event = "edge.reencoded_to_fit",
                variant = variant_object_key.as_str(),
                attempts = fitted.attempts,
                quality = fitted.spec.quality,
                format = fitted.spec.format.extension(),
            );
        }
        Ok(response)
    }

    /// Decode, resize and encode on the blocking pool, fitting the response budget, within
    /// the render deadline; returns the time spent either way.
    ///
    /// The deadline is checked inside the pipeline (between steps, inside the decode loops)
    /// and by the encode ladder, and the wait itself is bounded too: a step that cannot be
    /// interrupted (one whole-image decode or encode) may run on in the background, but
    /// the answer, a 503 with `Retry-After`, goes out on time.
    async fn render(
        &self,
        source: bytes::Bytes,
        variant: VariantKey,
    ) -> (Result<budget::Fitted, MissError>, Duration) {
        let started = Instant::now();
        let limits = self.config.limits();
        let budget_bytes = self.config.response_budget_bytes;
        let allowed = self.config.render_deadline();
        let avif_max_pixels = self.config.avif_max_pixels;
        let deadline = started + allowed;
        // The response without its body: measured with the largest header values we send.
        let overhead = {
            let probe = EncodeSpec {
                format: crate::variant::OutputFormat::Webp,
                quality: 100,
                progressive: false,
                profile: Profile::Fast,
            };
            let timings = MissTimings {
                fetch: Duration::from_secs(99),
                render: Duration::from_secs(99),
                enqueue: Duration::from_secs(99),
                total: Duration::from_secs(99),
                job_sent: None,
            };
            let mut r = self.image_response(&[], probe, &timings);
            r.body = Some(String::new());
            r.serialized_len()
        };
        let task = tokio::task::spawn_blocking(move || {
            let deadline = pipeline::Deadline::at(deadline);
            let prepared =
                pipeline::prepare_until(&source, &variant.params, &limits, deadline.clone())?;
            let requested = variant.params.output_format(prepared.source_format);
            let spec = EncodeSpec {
                format: budget::edge_format(
                    requested,
                    prepared.width,
                    prepared.height,
                    avif_max_pixels,
                ),
                quality: variant.params.quality.unwrap_or(DEFAULT_QUALITY),
                progressive: variant.params.progressive,
                profile: Profile::Fast,
            };
            budget::fit(&prepared, spec, overhead, budget_bytes, &deadline).map_err(|e| match e {
                BudgetError::Pipeline(p) => MissError::from(p),
                over @ BudgetError::DoesNotFit { .. } => MissError::OverBudget(over.to_string()),
            })
        });
        // A little past the deadline: the pipeline's own checks answer first when they can.
        let result = await_bounded(task, allowed, RENDER_GRACE).await;
        (result, started.elapsed())
    }

    fn image_response(&self, body: &[u8], spec: EncodeSpec, timings: &MissTimings) -> Response {
        let mut headers = Headers::new();
        header(&mut headers, "Content-Type", spec.format.content_type());
        header(
            &mut headers,
            "Cache-Control",
            self.config.provisional_cache_control.clone(),
        );
        header(
            &mut headers,
            "ETag",
            format!("\"{}\"", hex::encode(Md5::digest(body))),
        );
        header(
            &mut headers,
            "Last-Modified",
            httpdate::fmt_http_date(SystemTime::now()),
        );
        header(&mut headers, "X-Edgethumb", "miss");
        header(&mut headers, "Server-Timing", timings.server_timing());
        Response {
            status: "200".into(),
            status_description: Some("OK".into()),
            headers,
            body: None,
            body_encoding: Some("base64".into()),
        }
    }

    fn error_response(&self, error: &MissError) -> Response {
        let (code, description) = error.status();
        let mut headers = Headers::new();
        header(&mut headers, "Content-Type", "text/plain; charset=utf-8");
        if let MissError::OverBudget(_) | MissError::Unavailable(_) = error {
            header(&mut headers, "Cache-Control", "no-store");
            header(
                &mut headers,
                "Retry-After",
                self.config.retry_after_seconds.to_string(),
            );
        } else {
            header(
                &mut headers,
                "Cache-Control",
                self.config.error_cache_control.clone(),
            );
        }
        header(&mut headers, "X-Edgethumb", "error");
        let mut body = error.to_string();
        // Keep error bodies small whatever a client put in the URL.
        if body.len() > 1024 {
            let mut cut = 1024;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
        }
        body.push('\n');
        Response {
            status: code.to_string(),
            status_description: Some(description.into()),
            headers,
            body: Some(body),
            body_encoding: Some("text".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_render_that_outlives_its_deadline_is_answered_503() {
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let task = tokio::task::spawn_blocking(move || {
            // Stands for one uninterruptible decode or encode.
            let _ = blocked.recv();
            Ok::<u8, MissError>(1)
        });
        let result = await_bounded(task, Duration::from_millis(20), Duration::from_millis(5)).await;
        let _ = release.send(());
        let error = result.unwrap_err();
        assert!(matches!(error, MissError::Unavailable(_)), "{error}");
        assert_eq!(error.status().0, 503);
        let done = tokio::task::spawn_blocking(|| Ok::<u8, MissError>(2));
        let ok = await_bounded(done, Duration::from_secs(5), Duration::ZERO).await;
        assert_eq!(ok.unwrap(), 2);
    }

    #[test]
    fn errors_not_of_the_inputs_making_are_5xx() {
        let status = |e: PipelineError| MissError::from(e).status().0;
        assert_eq!(
            status(PipelineError::OutOfMemory {
                what: "JPEG",
                bytes: 1 << 40
            }),
            503
        );
        assert_eq!(status(PipelineError::Internal("panic: x".into())), 500);
        assert_eq!(
            status(PipelineError::DeadlineExceeded {
                step: "load",
                elapsed: Duration::from_millis(5),
                limit: Duration::from_millis(1),
            }),
            503
        );
    }

    #[test]
    fn keys_are_percent_decoded() {
        assert_eq!(
            decoded_key("/orig/Fallen%20Leaf%20%C3%A9.jpg@400w.jpg").unwrap(),
            "orig/Fallen Leaf é.jpg@400w.jpg"
        );
        assert_eq!(decoded_key("/a+b.jpg@1w").unwrap(), "a+b.jpg@1w");
        assert!(matches!(
            decoded_key("/bad%FF.jpg@1w"),
            Err(MissError::BadRequest(_))
        ));
    }

    #[test]
    fn statuses() {
        assert_eq!(MissError::BadRequest(String::new()).status().0, 400);
        assert_eq!(MissError::OverBudget(String::new()).status().0, 503);
        let e: MissError = PipelineError::TooManyPixels {
            width: 1,
            height: 1,
            pixels: 1,
            limit: 0,
        }
        .into();
        assert_eq!(e.status().0, 413);
        let e: MissError = PipelineError::UnsupportedFormat("x".into()).into();
        assert_eq!(e.status().0, 415);
        let e: MissError = PipelineError::Corrupt {
            format: "jpeg",
            reason: "x".into(),
        }
        .into();
        assert_eq!(e.status().0, 422);
    }
}
