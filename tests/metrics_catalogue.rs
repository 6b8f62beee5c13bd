//! The deploy templates' dashboard and alarms name only metrics the code emits, under the
//! dimension sets the EMF lines publish ([Service] and [Service, one other]): a metric or a
//! dimension the code does not write would graph nothing and alarm never.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)] // test code

use std::collections::BTreeMap;

use edgethumb::metrics::{CATALOGUE, NAMESPACE};
use serde_json::Value;

/// The other dimensions each service's observations carry (src/edge/handler.rs,
/// src/worker/batch.rs, cli/src/serve).
fn dimensions_of(service: &str) -> &'static [&'static str] {
    match service {
        "edge" => &["StatusClass", "Format"],
        "worker" => &["Outcome", "Reason", "Format"],
        "serve" => &["Kind"],
        _ => &[],
    }
}

fn check(metric: &str, dims: &BTreeMap<String, String>, place: &str) {
    let service = dims
        .get("Service")
        .unwrap_or_else(|| panic!("{place}: {metric} without a Service dimension"));
    assert!(
        CATALOGUE
            .iter()
            .any(|m| m.name == metric && m.service == service),
        "{place}: {service}/{metric} is not a metric the code emits"
    );
    let others: Vec<&String> = dims.keys().filter(|k| *k != "Service").collect();
    assert!(
        others.len() <= 1,
        "{place}: {metric} by {others:?}: EMF publishes [Service] and [Service, one other] only"
    );
    for other in others {
        assert!(
            dimensions_of(service).contains(&other.as_str()),
            "{place}: {service} metrics have no dimension {other}"
        );
    }
}

fn template(name: &str) -> String {
    std::fs::read_to_string(format!("{}/deploy/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Alarms: `Namespace: edgethumb` then `MetricName:` and `Dimensions` entries, in the
/// block form or the `{ Name: .., Value: .. }` flow form the templates use.
fn alarm_metrics(text: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let mut found = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != format!("Namespace: {NAMESPACE}") {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut name = None;
        let mut dims = BTreeMap::new();
        let mut pending_name: Option<String> = None;
        for next in &lines[i + 1..] {
            let depth = next.len() - next.trim_start().len();
            let t = next.trim();
            if t.is_empty() || depth < indent || (depth == indent && t.starts_with("Period")) {
                break;
            }
            if let Some(m) = t.strip_prefix("MetricName: ") {
                name = Some(m.to_string());
            } else if let Some(flow) = t.strip_prefix("- { Name: ") {
                let (k, v) = flow.trim_end_matches(" }").split_once(", Value: ").unwrap();
                dims.insert(k.to_string(), v.to_string());
            } else if let Some(k) = t.strip_prefix("- Name: ") {
                pending_name = Some(k.to_string());
            } else if let (Some(v), Some(k)) = (t.strip_prefix("Value: "), pending_name.take()) {
                dims.insert(k, v.to_string());
            }
        }
        found.push((name.expect("MetricName after Namespace"), dims));
    }
    found
}

#[test]
fn alarms_name_only_emitted_metrics() {
    for file in ["template.yaml", "edge-alarms.yaml"] {
        let metrics = alarm_metrics(&template(file));
        assert!(metrics.len() >= 3, "{file}: found {metrics:?}");
        for (name, dims) in &metrics {
            check(name, dims, file);
        }
    }
    // The four alarms the operations doc promises are there.
    let main = template("template.yaml");
    for alarm in [
        "DeadLetterQueueAlarm:",
        "WorkerErrorRateAlarm:",
        "Edge5xxRateAlarm:",
        "EdgeLatencyAlarm:",
    ] {
        assert!(main.contains(alarm), "{alarm} missing");
    }
}

#[test]
fn the_dashboard_names_only_emitted_metrics() {
    let text = template("template.yaml");
    let start = text.find("{\"widgets\"").expect("dashboard body");
    let end = text[start..]
        .find("\n        - R0:")
        .expect("dashboard end")
        + start;
    // Fill in the `${...}` substitutions so the body parses as the JSON CloudFormation makes.
    let mut body = String::new();
    let mut rest = &text[start..end];
    while let Some(at) = rest.find("${") {
        body.push_str(&rest[..at]);
        let close = rest[at..].find('}').unwrap() + at;
        body.push('1');
        rest = &rest[close + 1..];
    }
    body.push_str(rest);
    let dashboard: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    let mut checked = 0;
    for widget in dashboard["widgets"].as_array().unwrap() {
        let Some(metrics) = widget["properties"]["metrics"].as_array() else {
            continue;
        };
        for row in metrics {
            let row = row.as_array().unwrap();
            if row.first().and_then(Value::as_str) != Some(NAMESPACE) {
                continue;
            }
            let strings: Vec<&str> = row.iter().filter_map(Value::as_str).collect();
            let name = strings[1];
            let dims: BTreeMap<String, String> = strings[2..]
                .chunks(2)
                .map(|pair| (pair[0].to_string(), pair[1].to_string()))
                .collect();
            check(name, &dims, "dashboard");
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} metric rows found");
    // Every catalogued edge and worker metric is on the dashboard somewhere.
    for m in CATALOGUE.iter().filter(|m| m.service != "serve") {
        assert!(
            body.contains(&format!("\"{}\", \"Service\", \"{}\"", m.name, m.service)),
            "{}/{} is not on the dashboard",
            m.service,
            m.name
        );
    }
}
