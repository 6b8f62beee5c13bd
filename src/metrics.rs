//! What the service counts, in one catalogue, and two ways out: CloudWatch Embedded Metric
//! Format lines on stdout (Lambda and Lambda@Edge: CloudWatch Logs turns them into metrics,
//! no API call on the request path) and a Prometheus text page (`edgethumb serve`).
//!
//! Handlers describe what happened as an [`Observation`] (a few values and low-cardinality
//! dimensions: service, status class, format, outcome, reason; never keys) and hand it to
//! a [`MetricsSink`]. [`CATALOGUE`] names every metric the code can emit: the deploy
//! template's dashboard and alarms are checked against it (`tests/metrics_catalogue.rs`),
//! and so are the EMF lines (`metrics::tests`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

/// The one CloudWatch namespace.
pub const NAMESPACE: &str = "edgethumb";

/// CloudWatch units we use (a subset of EMF's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
    Bytes,
    None,
}

impl Unit {
    pub fn emf_name(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Bytes => "Bytes",
            Unit::None => "None",
        }
    }
}

/// One metric the code emits.
#[derive(Debug, PartialEq, Eq)]
pub struct MetricDef {
    pub name: &'static str,
    pub unit: Unit,
    /// Which service emits it (`edge`, `worker`, `serve`): the `Service` dimension.
    pub service: &'static str,
    pub help: &'static str,
}

macro_rules! metrics {
    ($($id:ident = $service:literal, $name:literal, $unit:ident, $help:literal;)*) => {
        $(
            #[doc = $help]
            pub const $id: MetricDef = MetricDef {
                name: $name,
                unit: Unit::$unit,
                service: $service,
                help: $help,
            };
        )*
        /// Every metric the code can emit.
        pub const CATALOGUE: &[MetricDef] = &[$($id),*];
    };
}

metrics! {
    EDGE_MISSES = "edge", "Misses", Count, "Misses the edge answered (any status).";
    EDGE_MISS_LATENCY = "edge", "MissLatency", Milliseconds, "Miss answered: fetch, render and enqueue, end to end.";
    EDGE_FETCH_TIME = "edge", "FetchTime", Milliseconds, "GetObject of the original.";
    EDGE_RENDER_TIME = "edge", "RenderTime", Milliseconds, "Decode, resize and encode (also when it failed).";
    EDGE_ENQUEUE_TIME = "edge", "EnqueueTime", Milliseconds, "SendMessage of the job.";
    EDGE_OUTPUT_BYTES = "edge", "OutputBytes", Bytes, "Bytes of the provisional thumbnail returned.";
    EDGE_REENCODED = "edge", "ReencodedToFit", Count, "Responses re-encoded to fit the 1 MB generated-response limit.";
    EDGE_OVER_BUDGET = "edge", "OverBudget", Count, "Misses answered 503 because no encode fit the limit.";
    EDGE_ENQUEUE_FAILURES = "edge", "EnqueueFailures", Count, "Misses whose job could not be sent (the image was still served).";
    EDGE_COLD_STARTS = "edge", "ColdStarts", Count, "Containers started (edgethumb.json read, clients built).";
    EDGE_INIT_TIME = "edge", "InitTime", Milliseconds, "Cold-start set-up time.";
    WORKER_JOBS = "worker", "Jobs", Count, "Job records finished, by Outcome and Reason.";
    WORKER_RENDER_TIME = "worker", "RenderTime", Milliseconds, "Render of a variant (quality search included).";
    WORKER_QUALITY = "worker", "ChosenQuality", None, "Quality the worker wrote (searched or from the URL).";
    WORKER_SCORE = "worker", "AchievedScore", None, "SSIMULACRA2 score of the written variant, when searched.";
    WORKER_OUTPUT_BYTES = "worker", "OutputBytes", Bytes, "Bytes of the variant written.";
    WORKER_SOURCE_BYTES = "worker", "SourceBytes", Bytes, "Bytes of the original read.";
    WORKER_RETRIES = "worker", "Redeliveries", Count, "Records received more than once (SQS redelivered them).";
    WORKER_DEAD_LETTER = "worker", "TowardsDeadLetter", Count, "Records that can never succeed: reported failed, so redrive moves them to the DLQ.";
    WORKER_STORAGE_EVENTS = "worker", "StorageEvents", Count, "S3 event records read, by Outcome: original (refreshed), variant (a variant write coming back, dropped), ignored, test.";
    WORKER_VARIANTS_REFRESHED = "worker", "VariantsRefreshed", Count, "Variants re-rendered because their original was replaced.";
    WORKER_VARIANTS_DELETED = "worker", "VariantsDeleted", Count, "Variants deleted because their original was deleted.";
    WORKER_INVALIDATION_PATHS = "worker", "InvalidationPaths", Count, "Paths sent to CloudFront, one CreateInvalidation per worker batch.";
    WORKER_INVALIDATIONS_DEFERRED = "worker", "InvalidationsDeferred", Count, "Invalidations CloudFront throttled (TooManyInvalidationsInProgress), by Outcome: deferred (sent back to the queue with a delay, the records done), undeferred (the send failed: the records fail and come back), dropped (an invalidation message read without a distribution id).";
    SERVE_REQUESTS = "serve", "Requests", Count, "Requests `serve` answered, by Kind (hit, miss, original, page, error).";
}

/// What happened, for one request or job: values of catalogue metrics and the dimensions
/// they are split by.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub service: &'static str,
    /// Low-cardinality only (format, status class, outcome, reason, kind): never keys.
    pub dimensions: Vec<(&'static str, String)>,
    pub values: Vec<(&'static MetricDef, f64)>,
}

impl Observation {
    pub fn new(service: &'static str) -> Self {
        Observation {
            service,
            dimensions: Vec::new(),
            values: Vec::new(),
        }
    }

    pub fn dimension(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.dimensions.push((name, value.into()));
        self
    }

    pub fn value(mut self, metric: &'static MetricDef, value: f64) -> Self {
        self.values.push((metric, value));
        self
    }

    pub fn duration(self, metric: &'static MetricDef, value: Duration) -> Self {
        self.value(metric, value.as_secs_f64() * 1000.0)
    }

    pub fn count(self, metric: &'static MetricDef, happened: bool) -> Self {
        self.value(metric, if happened { 1.0 } else { 0.0 })
    }

    /// The EMF line (one JSON object; see the format's specification). Every metric is
    /// published under `[Service]` and under `[Service, <each other dimension>]`, so each
    /// dimension can be graphed on its own without multiplying series by their product.
    pub fn to_emf(&self, timestamp: SystemTime) -> String {
        let mut dimension_sets = vec![vec![Value::from("Service")]];
        for (name, _) in &self.dimensions {
            dimension_sets.push(vec![Value::from("Service"), Value::from(*name)]);
        }
        let metrics: Vec<Value> = self
            .values
            .iter()
            .map(|(m, _)| json!({"Name": m.name, "Unit": m.unit.emf_name()}))
            .collect();
        let millis = timestamp
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut root = Map::new();
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": millis,
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": dimension_sets,
                    "Metrics": metrics,
                }],
            }),
        );
        root.insert("Service".into(), Value::from(self.service));
        for (name, value) in &self.dimensions {
            root.insert((*name).into(), Value::from(value.as_str()));
        }
        for (metric, value) in &self.values {
            // JSON has no NaN or infinity; a metric that is not a number is left out.
            if let Some(number) = serde_json::Number::from_f64(*value) {
                root.insert(metric.name.into(), Value::Number(number));
            }
        }
        Value::Object(root).to_string()
    }
}

/// Where observations go.
pub trait MetricsSink: Send + Sync {
    fn record(&self, observation: &Observation);
}

/// Nothing (tests, tools).
pub struct NoMetrics;

impl MetricsSink for NoMetrics {
    fn record(&self, _observation: &Observation) {}
}

/// EMF lines on stdout, which Lambda sends to CloudWatch Logs (in the region that ran it,
/// for Lambda@Edge), where they become metrics.
pub struct EmfStdout;

impl MetricsSink for EmfStdout {
    fn record(&self, observation: &Observation) {
        let mut line = observation.to_emf(SystemTime::now());
        line.push('\n');
        // One write of the whole line under the lock, so log lines never interleave with it.
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}

/// Counters and sums in memory, rendered as a Prometheus text page (`serve`'s `/metrics`).
#[derive(Default)]
pub struct Registry {
    series: Mutex<BTreeMap<(String, String), Series>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Series {
    sum: f64,
    count: u64,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// The Prometheus text exposition: counters for `Count` metrics (`_total`), summaries
    /// (`_sum`, `_count`) for the others; labels are the observation's dimensions.
    pub fn render(&self) -> String {
        let series = self
            .series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out = String::new();
        let mut last_family = String::new();
        for ((family, labels), s) in series.iter() {
            let def = CATALOGUE.iter().find(|m| prometheus_family(m) == *family);
            let counter = def.is_some_and(|m| m.unit == Unit::Count);
            if *family != last_family {
                if let Some(def) = def {
                    out.push_str(&format!("# HELP {family} {}\n", def.help));
                }
                let kind = if counter { "counter" } else { "summary" };
                out.push_str(&format!("# TYPE {family} {kind}\n"));
                last_family.clone_from(family);
            }
            if counter {
                out.push_str(&format!("{family}_total{labels} {}\n", s.sum));
            } else {
                out.push_str(&format!("{family}_sum{labels} {}\n", s.sum));
                out.push_str(&format!("{family}_count{labels} {}\n", s.count));
            }
        }
        out
    }

    /// The value of a counter (or sum) with exactly these labels, for tests and the page.
    pub fn value(&self, metric: &MetricDef, dimensions: &[(&str, &str)]) -> f64 {
        let labels = labels(dimensions.iter().map(|(k, v)| (*k, *v)));
        self.series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&(prometheus_family(metric), labels))
            .map_or(0.0, |s| s.sum)
    }
}

impl MetricsSink for Registry {
    fn record(&self, observation: &Observation) {
        let labels = labels(observation.dimensions.iter().map(|(k, v)| (*k, v.as_str())));
        let mut series = self
            .series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (metric, value) in &observation.values {
            if !value.is_finite() {
                continue;
            }
            let s = series
                .entry((prometheus_family(metric), labels.clone()))
                .or_default();
            s.sum += value;
            s.count += 1;
        }
    }
}

/// `edgethumb_<service>_<snake name>`, e.g. `edgethumb_edge_miss_latency_ms`.
fn prometheus_family(metric: &MetricDef) -> String {
    let mut snake = String::new();
    for (i, c) in metric.name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            snake.push('_');
        }
        snake.push(c.to_ascii_lowercase());
    }
    let suffix = match metric.unit {
        Unit::Milliseconds => "_ms",
        Unit::Bytes => "_bytes",
        Unit::Count | Unit::None => "",
    };
    format!("{NAMESPACE}_{}_{snake}{suffix}", metric.service)
}

/// `{a="x",b="y"}`, values escaped as the text format says; empty for no labels.
fn labels<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut pairs: Vec<(String, String)> = pairs
        .map(|(k, v)| {
            let escaped = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            (k.to_ascii_lowercase(), escaped)
        })
        .collect();
    if pairs.is_empty() {
        return String::new();
    }
    pairs.sort();
    let inner: Vec<String> = pairs
        .into_iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Checks a line against the EMF specification's rules (what CloudWatch rejects or
/// silently drops): `_aws` with an integer `Timestamp`, `CloudWatchMetrics` entries with a
/// namespace, dimension sets of 1 to 30 names each present as a string at the top level,
/// 1 to 100 metrics with a known unit, each a number at the top level; and every metric in
/// our catalogue, under our namespace, with the catalogue's unit. For the tests of every
/// emitter (a line that fails here would be lost in CloudWatch, not rejected loudly).
pub fn validate_emf(line: &str) -> Result<(), String> {
    const UNITS: [&str; 4] = ["Count", "Milliseconds", "Bytes", "None"];
    if line.contains('\n') {
        return Err("more than one line".into());
    }
    let root: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let aws = root.get("_aws").ok_or("no _aws")?;
    if !aws["Timestamp"].is_u64() {
        return Err("_aws.Timestamp is not an integer".into());
    }
    let directives = aws["CloudWatchMetrics"]
        .as_array()
        .filter(|d| !d.is_empty())
        .ok_or("_aws.CloudWatchMetrics is not a non-empty array")?;
    for directive in directives {
        if directive["Namespace"] != NAMESPACE {
            return Err(format!(
                "namespace {} is not {NAMESPACE}",
                directive["Namespace"]
            ));
        }
        let sets = directive["Dimensions"]
            .as_array()
            .ok_or("Dimensions is not an array")?;
        for set in sets {
            let set = set
                .as_array()
                .filter(|s| !s.is_empty() && s.len() <= 30)
                .ok_or("a dimension set is not 1 to 30 names")?;
            for name in set {
                let name = name.as_str().ok_or("a dimension name is not a string")?;
                if !root[name].is_string() {
                    return Err(format!("dimension {name} has no string value"));
                }
            }
        }
        let metrics = directive["Metrics"]
            .as_array()
            .filter(|m| !m.is_empty() && m.len() <= 100)
            .ok_or("Metrics is not 1 to 100 entries")?;
        for metric in metrics {
            let name = metric["Name"].as_str().ok_or("a metric has no Name")?;
            let unit = metric["Unit"].as_str().ok_or("a metric has no Unit")?;
            if !UNITS.contains(&unit) {
                return Err(format!("unit {unit} is not one we use"));
            }
            if !root[name].is_number() {
                return Err(format!("metric {name} has no number"));
            }
            let def = CATALOGUE
                .iter()
                .find(|m| m.name == name && m.service == root["Service"])
                .ok_or_else(|| format!("{name} is not in the catalogue"))?;
            if def.unit.emf_name() != unit {
                return Err(format!(
                    "{name} is declared {unit}, catalogued {:?}",
                    def.unit
                ));
            }
        }
    }
    Ok(())
}

/// A sink that keeps every EMF line it is given, for the tests of each emitter.
#[derive(Default)]
pub struct EmfRecorder {
    lines: Mutex<Vec<String>>,
}

impl EmfRecorder {
    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl MetricsSink for EmfRecorder {
    fn record(&self, observation: &Observation) {
        self.lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(observation.to_emf(SystemTime::now()));
    }
}

/// The status class of an HTTP status for the `StatusClass` dimension.
pub fn status_class(status: &str) -> &'static str {
    match status.as_bytes().first() {
        Some(b'2') => "2xx",
        Some(b'3') => "3xx",
        Some(b'4') => "4xx",
        Some(b'5') => "5xx",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_valid_emf(line: &str) {
        if let Err(problem) = validate_emf(line) {
            panic!("{problem}: {line}");
        }
    }

    #[test]
    fn observations_make_valid_emf() {
        let o = Observation::new("edge")
            .dimension("StatusClass", "2xx")
            .dimension("Format", "webp")
            .duration(&EDGE_MISS_LATENCY, Duration::from_millis(42))
            .value(&EDGE_OUTPUT_BYTES, 1234.0)
            .count(&EDGE_MISSES, true)
            .count(&EDGE_REENCODED, false);
        let line = o.to_emf(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert_valid_emf(&line);
        let root: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(root["MissLatency"], 42.0);
        assert_eq!(root["_aws"]["Timestamp"], 1_700_000_000_000u64);
        assert_eq!(
            root["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([
                ["Service"],
                ["Service", "StatusClass"],
                ["Service", "Format"]
            ])
        );
        // A non-number is dropped from the values and so must not be declared either:
        // the checker would catch it.
        let nan = Observation::new("worker").value(&WORKER_SCORE, f64::NAN);
        let line = nan.to_emf(SystemTime::now());
        let root: Value = serde_json::from_str(&line).unwrap();
        assert!(root.get("AchievedScore").is_none());
    }

    #[test]
    fn the_catalogue_has_unique_names_per_service() {
        let mut seen = std::collections::BTreeSet::new();
        for m in CATALOGUE {
            assert!(seen.insert((m.service, m.name)), "{} twice", m.name);
            assert!(["edge", "worker", "serve"].contains(&m.service));
            assert!(m.name.chars().all(|c| c.is_ascii_alphanumeric()));
        }
    }

    #[test]
    fn the_registry_renders_prometheus_text() {
        let r = Registry::new();
        for status in ["2xx", "2xx", "5xx"] {
            r.record(
                &Observation::new("edge")
                    .dimension("StatusClass", status)
                    .count(&EDGE_MISSES, true)
                    .duration(&EDGE_MISS_LATENCY, Duration::from_millis(10)),
            );
        }
        assert_eq!(r.value(&EDGE_MISSES, &[("StatusClass", "2xx")]), 2.0);
        assert_eq!(r.value(&EDGE_MISSES, &[("StatusClass", "5xx")]), 1.0);
        let text = r.render();
        assert!(
            text.contains("# TYPE edgethumb_edge_misses counter"),
            "{text}"
        );
        assert!(
            text.contains("edgethumb_edge_misses_total{statusclass=\"2xx\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("edgethumb_edge_miss_latency_ms_sum{statusclass=\"2xx\"} 20"),
            "{text}"
        );
        assert!(
            text.contains("edgethumb_edge_miss_latency_ms_count{statusclass=\"5xx\"} 1"),
            "{text}"
        );
        // Every sample line is `name{labels} number`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, number) = line.rsplit_once(' ').unwrap();
            number.parse::<f64>().unwrap();
        }
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class("200"), "2xx");
        assert_eq!(status_class("503"), "5xx");
        assert_eq!(status_class("404"), "4xx");
        assert_eq!(status_class(""), "other");
    }
}
