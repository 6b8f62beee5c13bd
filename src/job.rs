//! The job message: what the edge (or `enqueue`) sends and the worker consumes.
//!
//! Versioned JSON (`"v": 1`), documented in `docs/job.md`. Producers here write the full
//! form; the worker also reads the minimal one (`v`, `bucket`, `variant_key`), deriving the
//! rest, so a job written by hand or by another system runs too. Parsing never panics: a
//! message from an older or newer producer, or plain garbage on the queue, is a typed
//! [`JobError`] so the worker can log it and drop it (or dead-letter it) instead of crashing
//! the whole batch.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::variant::{Params, VariantError, VariantKey};

/// The only message version this build writes and reads.
pub const JOB_VERSION: u32 = 1;

/// Largest serialized job accepted by [`Job::parse`].
///
/// S3 keys are at most 1024 bytes, so a valid job is well under 4 KiB; anything bigger is
/// not a job, and refusing it early bounds the memory a hostile message can cost.
pub const MAX_JOB_BYTES: usize = 16 * 1024;

/// Why a job was enqueued. A message without `reason` is [`JobReason::Manual`]: nothing
/// but a person or another system writes the minimal form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobReason {
    Miss,
    Manual,
    SourceChanged,
}

/// Version 1 of the job message, complete: what [`Job::parse`] returns (derived fields
/// filled in) and what [`Job::to_json`] writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    /// Always 1 for this struct.
    pub v: u32,
    pub bucket: String,
    /// The variant key as requested (the key the worker writes).
    pub variant_key: String,
    /// The part of `variant_key` before its last `@`.
    pub original_key: String,
    /// Canonical parameter spelling, e.g. `200w_200h_1e.webp`.
    pub params: String,
    pub reason: JobReason,
    /// RFC 3339 UTC time the job was created; `None` when the producer did not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enqueued_at: Option<String>,
    /// The original's ETag when the enqueuer knew it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_etag: Option<String>,
}

/// The message as read: only `v`, `bucket` and `variant_key` are required, the rest is
/// derived (`original_key`, `params`) or defaulted (`reason`) when absent, and checked
/// against `variant_key` when present. Unknown fields are still refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireJob {
    v: u32,
    bucket: String,
    variant_key: String,
    #[serde(default)]
    original_key: Option<String>,
    #[serde(default)]
    params: Option<String>,
    #[serde(default)]
    reason: Option<JobReason>,
    #[serde(default)]
    enqueued_at: Option<String>,
    #[serde(default)]
    original_etag: Option<String>,
}

/// Why a message is not a job this build can run.
///
/// `Malformed` and `UnsupportedVersion` are distinct so the worker can tell "a newer edge is
/// deployed, retry after the worker is upgraded" from "garbage, drop it".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("malformed job message: {0}")]
    Malformed(String),
    #[error("unsupported job version {0} (this build reads version {JOB_VERSION})")]
    UnsupportedVersion(u64),
    #[error("job message is {size} bytes, over the limit of {MAX_JOB_BYTES}")]
    TooLarge { size: usize },
    #[error("job variant key {key:?} is not a valid variant key: {source}")]
    InvalidVariantKey {
        key: String,
        #[source]
        source: VariantError,
    },
    #[error("job field {field} is {actual:?} but the variant key says {expected:?}")]
    Mismatch {
        field: &'static str,
        expected: String,
        actual: String,
    },
    #[error("job field {field} is invalid: {reason}")]
    InvalidField {
        field: &'static str,
        reason: &'static str,
    },
}

impl Job {
    /// A job for `variant_key` (as the client spelled it), stamped with the current time.
    ///
    /// The original key and canonical params are derived from the variant key, so a job can
    /// never disagree with itself.
    pub fn new(
        bucket: impl Into<String>,
        variant_key: impl Into<String>,
        reason: JobReason,
        original_etag: Option<String>,
    ) -> Result<Job, JobError> {
        Job::new_at(
            bucket,
            variant_key,
            reason,
            original_etag,
            SystemTime::now(),
        )
    }

    /// [`Job::new`] with an explicit creation time (tests, replays).
    pub fn new_at(
        bucket: impl Into<String>,
        variant_key: impl Into<String>,
        reason: JobReason,
        original_etag: Option<String>,
        enqueued_at: SystemTime,
    ) -> Result<Job, JobError> {
        let variant_key = variant_key.into();
        let parsed = parse_variant(&variant_key)?;
        let job = Job {
            v: JOB_VERSION,
            bucket: bucket.into(),
            original_key: parsed.original_key.clone(),
            params: parsed.params.canonical(),
            variant_key,
            reason,
            enqueued_at: Some(format_rfc3339(enqueued_at)),
            original_etag,
        };
        job.validate()?;
        Ok(job)
    }

    /// The wire form. Serializing this struct cannot fail (only strings and an enum), so
    /// there is no error to return.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parse and validate a message body.
    ///
    /// The version is read first, on its own, so that a v2 message with new fields is
    /// reported as [`JobError::UnsupportedVersion`] rather than as an unknown field.
    pub fn parse(body: &str) -> Result<Job, JobError> {
        if body.len() > MAX_JOB_BYTES {
            return Err(JobError::TooLarge { size: body.len() });
        }
        let value: serde_json::Value =
            serde_json::from_str(body).map_err(|e| JobError::Malformed(e.to_string()))?;
        let object = value
            .as_object()
            .ok_or_else(|| JobError::Malformed("not a JSON object".into()))?;
        let version = match object.get("v") {
            None => return Err(JobError::Malformed("missing field `v`".into())),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| JobError::Malformed(format!("field `v` is {v}, not an integer")))?,
        };
        if version != u64::from(JOB_VERSION) {
            return Err(JobError::UnsupportedVersion(version));
        }
        let wire: WireJob =
            serde_json::from_value(value).map_err(|e| JobError::Malformed(e.to_string()))?;
        let parsed = parse_variant(&wire.variant_key)?;
        let job = Job {
            v: wire.v,
            bucket: wire.bucket,
            original_key: wire.original_key.unwrap_or(parsed.original_key),
            params: wire.params.unwrap_or_else(|| parsed.params.canonical()),
            variant_key: wire.variant_key,
            reason: wire.reason.unwrap_or(JobReason::Manual),
            enqueued_at: wire.enqueued_at,
            original_etag: wire.original_etag,
        };
        job.validate()?;
        Ok(job)
    }

    /// The parsed variant key (what the worker renders).
    pub fn variant(&self) -> Result<VariantKey, JobError> {
        parse_variant(&self.variant_key)
    }

    /// Cross-field checks: the redundant fields must agree with the variant key, or the
    /// worker would write one thing under the name of another.
    fn validate(&self) -> Result<(), JobError> {
        if self.bucket.is_empty() {
            return Err(JobError::InvalidField {
                field: "bucket",
                reason: "empty",
            });
        }
        if self
            .enqueued_at
            .as_deref()
            .is_some_and(|at| !is_rfc3339_utc(at))
        {
            return Err(JobError::InvalidField {
                field: "enqueued_at",
                reason: "not an RFC 3339 UTC timestamp (YYYY-MM-DDTHH:MM:SS[.fff]Z)",
            });
        }
        if self.original_etag.as_deref() == Some("") {
            return Err(JobError::InvalidField {
                field: "original_etag",
                reason: "empty (omit the field when unknown)",
            });
        }
        let parsed = self.variant()?;
        if parsed.original_key != self.original_key {
            return Err(JobError::Mismatch {
                field: "original_key",
                expected: parsed.original_key,
                actual: self.original_key.clone(),
            });
        }
        // Compared as values, not strings: a producer with another canonical spelling of
        // the same parameters is still describing the same variant.
        let same_params = self
            .params
            .parse::<Params>()
            .is_ok_and(|p| p.normalized() == parsed.params.normalized());
        if !same_params {
            return Err(JobError::Mismatch {
                field: "params",
                expected: parsed.params.canonical(),
                actual: self.params.clone(),
            });
        }
        Ok(())
    }
}

fn parse_variant(key: &str) -> Result<VariantKey, JobError> {
    VariantKey::parse(key).map_err(|source| JobError::InvalidVariantKey {
        key: key.to_string(),
        source,
    })
}

/// `2024-05-01T12:34:56.789Z`: UTC, always milliseconds. Times before 1970 clamp to the
/// epoch (a job is never that old; the clock is wrong).
pub fn format_rfc3339(time: SystemTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    time::Duration::try_from(since)
        .ok()
        .and_then(|d| OffsetDateTime::UNIX_EPOCH.checked_add(d))
        .and_then(|at| at.format(FORMAT).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_string())
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`: RFC 3339 (the `time` crate's parser), restricted to
/// UTC written as `Z` and an upper-case `T`, as `docs/job.md` says.
fn is_rfc3339_utc(s: &str) -> bool {
    s.as_bytes().get(10) == Some(&b'T')
        && s.ends_with('Z')
        && OffsetDateTime::parse(s, &Rfc3339).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> Job {
        Job::new_at(
            "my-bucket",
            "photos/cat.jpg@200h_200w_1e_80q.webp",
            JobReason::Miss,
            Some("\"9b2cf535f27731c974343645a3985328\"".into()),
            UNIX_EPOCH + Duration::from_millis(1_714_566_896_789),
        )
        .unwrap()
    }

    #[test]
    fn new_derives_original_and_canonical_params() {
        let job = sample();
        assert_eq!(job.v, 1);
        assert_eq!(job.original_key, "photos/cat.jpg");
        // Requested spelling kept; params canonical.
        assert_eq!(job.variant_key, "photos/cat.jpg@200h_200w_1e_80q.webp");
        assert_eq!(job.params, "200w_200h_1e_80q.webp");
        assert_eq!(job.enqueued_at.as_deref(), Some("2024-05-01T12:34:56.789Z"));
    }

    #[test]
    fn round_trips_through_json() {
        let job = sample();
        assert_eq!(Job::parse(&job.to_json()).unwrap(), job);
        let no_etag = Job {
            original_etag: None,
            ..sample()
        };
        let json = no_etag.to_json();
        assert!(!json.contains("original_etag"));
        assert_eq!(Job::parse(&json).unwrap(), no_etag);
    }

    #[test]
    fn sample_event_parses() {
        let text = include_str!("../events/job-v1.json");
        let job = Job::parse(text).unwrap();
        assert_eq!(job.reason, JobReason::Miss);
        assert_eq!(job.variant().unwrap().original_key, job.original_key);
    }

    #[test]
    fn reasons_are_kebab_case() {
        let job = Job {
            reason: JobReason::SourceChanged,
            ..sample()
        };
        assert!(job.to_json().contains("\"reason\":\"source-changed\""));
        let job = Job {
            reason: JobReason::Manual,
            ..sample()
        };
        assert!(job.to_json().contains("\"reason\":\"manual\""));
    }

    #[test]
    fn malformed_json_is_malformed() {
        for body in [
            "",
            "{",
            "not json",
            "[1,2]",
            "null",
            "\"v\"",
            "{\"v\":\"1\"}",
            "{}",
        ] {
            assert!(
                matches!(Job::parse(body), Err(JobError::Malformed(_))),
                "{body:?} -> {:?}",
                Job::parse(body)
            );
        }
    }

    #[test]
    fn unknown_version_is_its_own_error() {
        let mut value: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        value["v"] = 2.into();
        value["something_new"] = "x".into();
        assert_eq!(
            Job::parse(&value.to_string()),
            Err(JobError::UnsupportedVersion(2))
        );
        value["v"] = 0.into();
        assert_eq!(
            Job::parse(&value.to_string()),
            Err(JobError::UnsupportedVersion(0))
        );
    }

    #[test]
    fn unknown_fields_and_bad_reason_are_malformed() {
        let mut value: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        value["extra"] = 1.into();
        assert!(matches!(
            Job::parse(&value.to_string()),
            Err(JobError::Malformed(_))
        ));
        let mut value: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        value["reason"] = "because".into();
        assert!(matches!(
            Job::parse(&value.to_string()),
            Err(JobError::Malformed(_))
        ));
        let mut value: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        value.as_object_mut().unwrap().remove("bucket");
        assert!(matches!(
            Job::parse(&value.to_string()),
            Err(JobError::Malformed(_))
        ));
    }

    #[test]
    fn inconsistent_fields_are_refused() {
        let job = Job {
            original_key: "photos/dog.jpg".into(),
            ..sample()
        };
        assert!(matches!(
            Job::parse(&job.to_json()),
            Err(JobError::Mismatch {
                field: "original_key",
                ..
            })
        ));
        let job = Job {
            params: "100w".into(),
            ..sample()
        };
        assert!(matches!(
            Job::parse(&job.to_json()),
            Err(JobError::Mismatch {
                field: "params",
                ..
            })
        ));
        // Another spelling of the same params is accepted.
        let job = Job {
            params: "200h_200w_1e_80q.webp".into(),
            ..sample()
        };
        assert!(Job::parse(&job.to_json()).is_ok());
        let job = Job {
            variant_key: "photos/cat.jpg".into(),
            ..sample()
        };
        assert!(matches!(
            Job::parse(&job.to_json()),
            Err(JobError::InvalidVariantKey { .. })
        ));
        let job = Job {
            variant_key: "photos/cat.jpg@0w".into(),
            ..sample()
        };
        assert!(matches!(
            Job::parse(&job.to_json()),
            Err(JobError::InvalidVariantKey { .. })
        ));
        let job = Job {
            bucket: String::new(),
            ..sample()
        };
        assert!(matches!(
            Job::parse(&job.to_json()),
            Err(JobError::InvalidField {
                field: "bucket",
                ..
            })
        ));
        for at in [
            "yesterday",
            "2024-05-01 12:34:56Z",
            "2024-13-01T12:34:56Z",
            "2024-05-01T12:34:56+02:00",
            "2024-05-01T12:34:56+00:00",
            "2024-05-01t12:34:56Z",
            "2024-05-01T12:34:56z",
            "2024-05-01T12:34:56.Z",
            "2024-02-30T12:34:56Z",
            "24-05-01T12:34:56Z",
            "",
        ] {
            let job = Job {
                enqueued_at: Some(at.into()),
                ..sample()
            };
            assert!(
                matches!(
                    Job::parse(&job.to_json()),
                    Err(JobError::InvalidField {
                        field: "enqueued_at",
                        ..
                    })
                ),
                "{at}"
            );
        }
        let job = Job {
            enqueued_at: Some("2024-05-01T12:34:56Z".into()),
            ..sample()
        };
        assert!(Job::parse(&job.to_json()).is_ok());
    }

    #[test]
    fn the_minimal_form_is_completed_from_the_variant_key() {
        let job =
            Job::parse(r#"{"v":1,"bucket":"b","variant_key":"photos/cat.jpg@200h_200w.webp"}"#)
                .unwrap();
        assert_eq!(job.bucket, "b");
        assert_eq!(job.variant_key, "photos/cat.jpg@200h_200w.webp");
        assert_eq!(job.original_key, "photos/cat.jpg");
        assert_eq!(job.params, "200w_200h.webp");
        assert_eq!(job.reason, JobReason::Manual);
        assert_eq!(job.enqueued_at, None);
        assert_eq!(job.original_etag, None);
        // Written back in full, minus what nobody said.
        let full: serde_json::Value = serde_json::from_str(&job.to_json()).unwrap();
        assert_eq!(full["original_key"], "photos/cat.jpg");
        assert!(full.get("enqueued_at").is_none(), "{full}");
        assert_eq!(Job::parse(&job.to_json()).unwrap(), job);
    }

    #[test]
    fn optional_fields_may_be_given_one_by_one() {
        let job = Job::parse(
            r#"{"v":1,"bucket":"b","variant_key":"a/x@y.png@50p","reason":"source-changed",
                "enqueued_at":"2024-05-01T12:34:56Z","original_etag":"\"e\"","params":"50p"}"#,
        )
        .unwrap();
        assert_eq!(job.original_key, "a/x@y.png");
        assert_eq!(job.reason, JobReason::SourceChanged);
        assert_eq!(job.enqueued_at.as_deref(), Some("2024-05-01T12:34:56Z"));
        assert_eq!(job.original_etag.as_deref(), Some("\"e\""));
        // null is the same as absent.
        let job = Job::parse(
            r#"{"v":1,"bucket":"b","variant_key":"c.jpg@1w","original_key":null,"reason":null}"#,
        )
        .unwrap();
        assert_eq!(job.original_key, "c.jpg");
        assert_eq!(job.reason, JobReason::Manual);
    }

    #[test]
    fn the_minimal_form_is_still_checked() {
        for (body, expected) in [
            (
                r#"{"v":1,"bucket":"b","variant_key":"c.jpg@1w","extra":1}"#,
                "malformed",
            ),
            (r#"{"v":1,"bucket":"b"}"#, "malformed"),
            (r#"{"v":1,"variant_key":"c.jpg@1w"}"#, "malformed"),
            (r#"{"v":1,"bucket":"b","variant_key":"c.jpg"}"#, "variant"),
            (r#"{"v":1,"bucket":"","variant_key":"c.jpg@1w"}"#, "bucket"),
            (
                r#"{"v":1,"bucket":"b","variant_key":"c.jpg@1w","original_key":"d.jpg"}"#,
                "original_key",
            ),
            (
                r#"{"v":1,"bucket":"b","variant_key":"c.jpg@1w","params":"2w"}"#,
                "params",
            ),
            (
                r#"{"v":1,"bucket":"b","variant_key":"c.jpg@1w","enqueued_at":"now"}"#,
                "enqueued_at",
            ),
            (
                r#"{"v":2,"bucket":"b","variant_key":"c.jpg@1w"}"#,
                "version",
            ),
        ] {
            let err = Job::parse(body).unwrap_err().to_string();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }

    #[test]
    fn the_minimal_sample_event_parses() {
        let text = include_str!("../events/job-v1-minimal.json");
        let job = Job::parse(text).unwrap();
        assert_eq!(job.reason, JobReason::Manual);
        assert_eq!(job.original_key, "photos/cat.jpg");
    }

    #[test]
    fn new_refuses_a_bad_variant_key() {
        assert!(matches!(
            Job::new("b", "photos/cat.jpg", JobReason::Manual, None),
            Err(JobError::InvalidVariantKey { .. })
        ));
    }

    #[test]
    fn oversized_body_is_refused_before_parsing() {
        let body = format!("{{\"v\":1,\"pad\":\"{}\"}}", "x".repeat(MAX_JOB_BYTES));
        assert!(matches!(Job::parse(&body), Err(JobError::TooLarge { .. })));
    }

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (leap day), 23:59:59.
        assert_eq!(
            format_rfc3339(UNIX_EPOCH + Duration::from_secs(951_868_799)),
            "2000-02-29T23:59:59.000Z"
        );
        assert_eq!(
            format_rfc3339(UNIX_EPOCH + Duration::from_nanos(1_714_566_896_789_999_999)),
            "2024-05-01T12:34:56.789Z",
            "milliseconds, truncated"
        );
        assert_eq!(
            format_rfc3339(UNIX_EPOCH - Duration::from_secs(10)),
            "1970-01-01T00:00:00.000Z"
        );
        assert!(is_rfc3339_utc(&format_rfc3339(SystemTime::now())));
        for ok in [
            "2024-05-01T12:34:56Z",
            "2024-05-01T12:34:56.7Z",
            "2024-05-01T12:34:56.123456789Z",
            "2024-02-29T00:00:00Z",
        ] {
            assert!(is_rfc3339_utc(ok), "{ok}");
        }
    }
}
