//! CloudFront Lambda@Edge event and response types (`aws_lambda_events` has none).
//!
//! Only the origin-response shape is modelled. Unknown fields are kept in `extra` maps so
//! a parsed value serialises back to what CloudFront sent, which is what a pass-through
//! must return.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// CloudFront's header form: lower-case name → list of `{key, value}`.
pub type Headers = BTreeMap<String, Vec<HeaderValue>>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderValue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub value: String,
}

/// Build a single-valued header entry with its canonical spelling.
pub fn header(headers: &mut Headers, key: &str, value: impl Into<String>) {
    headers.insert(
        key.to_ascii_lowercase(),
        vec![HeaderValue {
            key: Some(key.to_string()),
            value: value.into(),
        }],
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "Records")]
    pub records: Vec<Record>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub cf: CfPayload,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CfPayload {
    pub config: CfConfig,
    pub request: Request,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Response>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CfConfig {
    #[serde(default)]
    pub distribution_domain_name: String,
    #[serde(default)]
    pub distribution_id: String,
    #[serde(default)]
    pub event_type: String,
    #[serde(default)]
    pub request_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    #[serde(default)]
    pub client_ip: String,
    #[serde(default)]
    pub headers: Headers,
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub querystring: String,
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The origin the request went to: an S3 origin or a custom (HTTP) origin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3OriginConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomOriginConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3OriginConfig {
    pub domain_name: String,
    #[serde(default)]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomOriginConfig {
    pub domain_name: String,
    #[serde(default)]
    pub path: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A response as CloudFront expects it from an origin-response trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_description: Option<String>,
    #[serde(default)]
    pub headers: Headers,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_encoding: Option<String>,
}

impl Response {
    /// Size of the response as Lambda@Edge measures it: the serialised JSON.
    pub fn serialized_len(&self) -> usize {
        serde_json::to_vec(self)
            .map(|v| v.len())
            .unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_helper_uses_cloudfront_list_form() {
        let mut h = Headers::new();
        header(&mut h, "Content-Type", "image/webp");
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"content-type": [{"key": "Content-Type", "value": "image/webp"}]})
        );
    }
}
