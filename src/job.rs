//! The job message: what the edge (or `enqueue`) sends and the worker consumes.
//!
//! Versioned JSON (`"v": 1`), documented in `docs/job.md`. It carries everything the
//! worker needs and nothing it can derive. Parsing never panics: a message from an older or
//! newer producer, or plain garbage on the queue, is a typed [`JobError`] so the worker can
//! log it and drop it (or dead-letter it) instead of crashing the whole batch.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::variant::{Params, VariantError, VariantKey};

/// The only message version this build writes and reads.
pub const JOB_VERSION: u32 = 1;

/// Largest serialized job accepted by [`Job::parse`].
///
/// S3 keys are at most 1024 bytes, so a valid job is well under 4 KiB; anything bigger is
/// not a job, and refusing it early bounds the memory a hostile message can cost.
pub const MAX_JOB_BYTES: usize = 16 * 1024;

/// Why a job was enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobReason {
    Miss,
    Manual,
    SourceChanged,
}

/// Version 1 of the job message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Always 1 for this struct.
    pub v: u32,
    pub bucket: String,
    /// The variant key as requested (the key the worker writes).
    pub variant_key: String,
    pub original_key: String,
    /// Canonical parameter spelling, e.g. `200w_200h_1e.webp`.
    pub params: String,
    pub reason: JobReason,
    /// RFC 3339 UTC time the job was created.
    pub enqueued_at: String,
    /// The original's ETag when the enqueuer knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_etag: Option<String>,
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
            enqueued_at: format_rfc3339(enqueued_at),
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
        let job: Job =
            serde_json::from_value(value).map_err(|e| JobError::Malformed(e.to_string()))?;
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
        if !is_rfc3339_utc(&self.enqueued_at) {
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

/// `2024-05-01T12:34:56.789Z`. Hand-rolled (days-to-civil) to avoid a date crate for one
/// format; times before 1970 clamp to the epoch.
pub fn format_rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Shape check for `YYYY-MM-DDTHH:MM:SS[.fraction]Z` with plausible field ranges.
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 20 || b.last() != Some(&b'Z') {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let num = |r: std::ops::Range<usize>| {
        std::str::from_utf8(&b[r])
            .ok()
            .and_then(|t| t.parse::<u32>().ok())
            .unwrap_or(u32::MAX)
    };
    let shape = digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !shape {
        return false;
    }
    let fraction = &b[19..b.len() - 1];
    let fraction_ok = fraction.is_empty()
        || (fraction.len() >= 2
            && fraction[0] == b'.'
            && fraction[1..].iter().all(u8::is_ascii_digit));
    fraction_ok
        && (1..=12).contains(&num(5..7))
        && (1..=31).contains(&num(8..10))
        && num(11..13) <= 23
        && num(14..16) <= 59
        && num(17..19) <= 60
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
        assert_eq!(job.enqueued_at, "2024-05-01T12:34:56.789Z");
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
        ] {
            let job = Job {
                enqueued_at: at.into(),
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
            enqueued_at: "2024-05-01T12:34:56Z".into(),
            ..sample()
        };
        assert!(Job::parse(&job.to_json()).is_ok());
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
        assert!(is_rfc3339_utc(&format_rfc3339(SystemTime::now())));
    }
}
