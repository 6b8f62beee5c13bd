//! What a queue message can be: a render job (`docs/job.md`), or an S3 event notification
//! that S3 itself sends to the render queue when an object is written or deleted, or S3's
//! test event (sent once when the notification is configured), or a deferred CDN
//! invalidation that the worker itself sent back to the queue when CloudFront throttled it.
//! Told apart by shape: an S3 event has a `Records` array, the test event
//! `"Event": "s3:TestEvent"`, a deferred invalidation an `invalidate` object, anything else
//! is read as a job (and refused as one when it is not).

use serde::{Deserialize, Serialize};

use crate::cdn::Coverage;
use crate::job::{Job, JobError, MAX_JOB_BYTES};

/// One parsed queue message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Job(Job),
    /// An S3 event notification: one change per record (S3 sends one record per message,
    /// but the format allows several).
    Storage(Vec<StorageChange>),
    /// `s3:TestEvent`: nothing to do.
    TestEvent {
        bucket: String,
    },
    /// An invalidation CloudFront throttled, back from the queue after its delay.
    Invalidation(DeferredInvalidation),
}

/// A CDN invalidation deferred because CloudFront answered `TooManyInvalidationsInProgress`:
/// sent to the render queue with a delay, merged with whatever else the batch that reads it
/// invalidates. Carries originals and directories rather than paths, so merged messages are
/// planned again within the quotas ([`Coverage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredInvalidation {
    pub coverage: Coverage,
    /// How many times this invalidation has been throttled (1 for the first deferral): the
    /// next delay grows with it.
    pub attempt: u32,
}

/// The largest deferred invalidation: the size every message reader accepts
/// ([`MAX_JOB_BYTES`]), far under the queue's limit. A coverage is at most five entries
/// (keys of at most 1 KiB), so only keys full of characters JSON escapes get near it; those
/// messages carry their common directory instead.
pub const MAX_INVALIDATION_BYTES: usize = MAX_JOB_BYTES;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireInvalidation {
    v: u32,
    invalidate: WireCoverage,
    attempt: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireCoverage {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    originals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    directories: Vec<String>,
}

impl DeferredInvalidation {
    /// The message body: `{"v":1,"invalidate":{"originals":[...],"directories":[...]},"attempt":n}`,
    /// at most [`MAX_INVALIDATION_BYTES`] (collapsed to one directory when the keys would
    /// make it bigger).
    pub fn to_json(&self) -> String {
        let encode = |coverage: &Coverage| {
            let wire = WireInvalidation {
                v: 1,
                invalidate: WireCoverage {
                    originals: coverage.originals().map(str::to_string).collect(),
                    directories: coverage.directories().map(str::to_string).collect(),
                },
                attempt: self.attempt,
            };
            serde_json::to_string(&wire).unwrap_or_default()
        };
        let body = encode(&self.coverage);
        if body.len() <= MAX_INVALIDATION_BYTES {
            return body;
        }
        encode(&self.coverage.collapsed())
    }

    fn parse(body: &str) -> Result<Self, MessageError> {
        let bad = |reason: String| MessageError::Invalidation(reason);
        let wire: WireInvalidation = serde_json::from_str(body).map_err(|e| bad(e.to_string()))?;
        if wire.v != 1 {
            return Err(bad(format!("unsupported version {}", wire.v)));
        }
        if wire.attempt == 0 {
            return Err(bad("attempt must be 1 or more".into()));
        }
        if wire.invalidate.originals.iter().any(String::is_empty) {
            return Err(bad("empty original key".into()));
        }
        if let Some(d) = wire
            .invalidate
            .directories
            .iter()
            .find(|d| !d.is_empty() && !d.ends_with('/'))
        {
            return Err(bad(format!("directory {d:?} does not end in '/'")));
        }
        let coverage = Coverage::new(wire.invalidate.originals, wire.invalidate.directories);
        if coverage.is_empty() {
            return Err(bad("nothing to invalidate".into()));
        }
        Ok(DeferredInvalidation {
            coverage,
            attempt: wire.attempt,
        })
    }
}

/// What an S3 event record says happened to an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageChange {
    /// e.g. `ObjectCreated:Put`, `ObjectRemoved:Delete` (without the `s3:` prefix, as S3
    /// sends it).
    pub event_name: String,
    pub bucket: String,
    /// The object key, decoded (S3 sends it form-encoded: `%XX` escapes and `+` for space).
    pub key: String,
    /// The object's ETag as the event saw it, quoted like S3's HEAD answer (absent on
    /// deletes). For logs only: the worker acts on the object's current state.
    pub etag: Option<String>,
}

impl StorageChange {
    /// Whether the event can mean the object's content changed or went away: a write
    /// (`ObjectCreated:*`), a delete (`ObjectRemoved:*`) or an expiry
    /// (`LifecycleExpiration:*`). Tagging, ACL, restore, replication and transition events
    /// leave the bytes alone.
    pub fn may_change_content(&self) -> bool {
        ["ObjectCreated:", "ObjectRemoved:", "LifecycleExpiration:"]
            .iter()
            .any(|prefix| self.event_name.starts_with(prefix))
    }
}

/// Why a message is not one the worker can read. Permanent: the same bytes fail every time.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MessageError {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("malformed S3 event: {0}")]
    Event(String),
    #[error("malformed invalidation message: {0}")]
    Invalidation(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRecord {
    event_source: Option<String>,
    event_name: String,
    s3: WireS3,
}

#[derive(Deserialize)]
struct WireS3 {
    bucket: WireBucket,
    object: WireObject,
}

#[derive(Deserialize)]
struct WireBucket {
    name: String,
}

#[derive(Deserialize)]
struct WireObject {
    key: String,
    #[serde(rename = "eTag")]
    etag: Option<String>,
}

#[derive(Deserialize)]
struct WireEvent {
    #[serde(rename = "Records")]
    records: Vec<WireRecord>,
}

impl Message {
    /// Read a message body (see the module's doc for how the shapes are told apart).
    pub fn parse(body: &str) -> Result<Message, MessageError> {
        if body.len() > MAX_JOB_BYTES {
            // Job::parse gives the size error every producer already knows.
            return Ok(Message::Job(Job::parse(body)?));
        }
        let value: Option<serde_json::Value> = serde_json::from_str(body).ok();
        let object = value.as_ref().and_then(serde_json::Value::as_object);
        if let Some(object) = object {
            if object.contains_key("Records") {
                return parse_event(body).map(Message::Storage);
            }
            if object.get("Event").and_then(serde_json::Value::as_str) == Some("s3:TestEvent") {
                let bucket = object
                    .get("Bucket")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                return Ok(Message::TestEvent { bucket });
            }
            if object.contains_key("invalidate") {
                return DeferredInvalidation::parse(body).map(Message::Invalidation);
            }
        }
        Ok(Message::Job(Job::parse(body)?))
    }
}

fn parse_event(body: &str) -> Result<Vec<StorageChange>, MessageError> {
    let event: WireEvent =
        serde_json::from_str(body).map_err(|e| MessageError::Event(e.to_string()))?;
    if event.records.is_empty() {
        return Err(MessageError::Event("no records".into()));
    }
    event
        .records
        .into_iter()
        .map(|record| {
            if let Some(source) = record.event_source.as_deref()
                && source != "aws:s3"
            {
                return Err(MessageError::Event(format!(
                    "eventSource {source:?}, expected \"aws:s3\""
                )));
            }
            if record.s3.bucket.name.is_empty() {
                return Err(MessageError::Event("empty bucket name".into()));
            }
            let key = decode_key(&record.s3.object.key)?;
            if key.is_empty() {
                return Err(MessageError::Event("empty object key".into()));
            }
            Ok(StorageChange {
                event_name: record.event_name,
                bucket: record.s3.bucket.name,
                key,
                etag: record
                    .s3
                    .object
                    .etag
                    .filter(|e| !e.is_empty())
                    .map(|e| format!("\"{}\"", e.trim_matches('"'))),
            })
        })
        .collect()
}

/// An S3 event's object key as a key: `+` is a space, `%XX` a byte, and the bytes UTF-8
/// ("red flower.jpg" arrives as "red+flower.jpg", a real `+` as `%2B`).
pub fn decode_key(encoded: &str) -> Result<String, MessageError> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        MessageError::Event(format!("bad %-escape in key {encoded:?}"))
                    })?;
                out.push(hex);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| MessageError::Event(format!("key {encoded:?} is not UTF-8 once decoded")))
}

/// A key as S3 encodes it in event messages: letters, digits, `-_.~/` as they are, a space
/// as `+`, every other byte `%XX`.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for &byte in key.as_bytes() {
        match byte {
            b' ' => out.push('+'),
            b'-' | b'_' | b'.' | b'~' | b'/' => out.push(char::from(byte)),
            b if b.is_ascii_alphanumeric() => out.push(char::from(b)),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The S3 event message S3 would send for `event_name` (`ObjectCreated:Put`,
/// `ObjectRemoved:Delete`...) on `bucket`/`key`, with the fields the worker reads. `serve`
/// sends these for files changed in its folder, so they take the worker's S3-event path.
pub fn storage_event_body(event_name: &str, bucket: &str, key: &str) -> String {
    serde_json::json!({"Records": [{
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": event_name,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": bucket},
            "object": {"key": encode_key(key)}
        }
    }]})
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_decoded_as_s3_encodes_them() {
        assert_eq!(decode_key("photos/cat.jpg").unwrap(), "photos/cat.jpg");
        assert_eq!(decode_key("red+flower.jpg").unwrap(), "red flower.jpg");
        assert_eq!(decode_key("a%2Bb.jpg").unwrap(), "a+b.jpg");
        // moto also encodes the slash; real S3 does not. Both decode alike.
        assert_eq!(
            decode_key("a+b%2F%C3%BC%2Bx%25.jpg").unwrap(),
            "a b/ü+x%.jpg"
        );
        assert_eq!(decode_key("x%40200w.webp").unwrap(), "x@200w.webp");
        for bad in ["a%2", "a%zz", "%C3"] {
            assert!(decode_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn encoded_keys_and_built_events_read_back() {
        for key in ["photos/red cat.jpg", "ü+%@x/y~z.png", "a&b=c?.jpg"] {
            assert_eq!(decode_key(&encode_key(key)).unwrap(), key);
            let body = storage_event_body("ObjectRemoved:Delete", "b", key);
            let Ok(Message::Storage(changes)) = Message::parse(&body) else {
                panic!("{body}")
            };
            assert_eq!(changes[0].key, key);
            assert_eq!(changes[0].bucket, "b");
            assert_eq!(changes[0].event_name, "ObjectRemoved:Delete");
        }
        assert_eq!(encode_key("red cat+1.jpg"), "red+cat%2B1.jpg");
    }

    #[test]
    fn the_sample_events_parse() {
        let put = Message::parse(include_str!("../../events/s3-put.json")).unwrap();
        let Message::Storage(changes) = put else {
            panic!("{put:?}")
        };
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].event_name, "ObjectCreated:Put");
        assert_eq!(changes[0].key, "photos/red cat.jpg");
        assert_eq!(
            changes[0].etag.as_deref(),
            Some("\"9b2cf535f27731c974343645a3985328\"")
        );
        assert!(changes[0].may_change_content());
        let delete = Message::parse(include_str!("../../events/s3-delete.json")).unwrap();
        let Message::Storage(changes) = delete else {
            panic!("{delete:?}")
        };
        assert_eq!(changes[0].event_name, "ObjectRemoved:Delete");
        assert_eq!(changes[0].etag, None);
        let test = Message::parse(include_str!("../../events/s3-test-event.json")).unwrap();
        assert!(matches!(test, Message::TestEvent { bucket } if bucket == "my-image-bucket"));
        let job = Message::parse(include_str!("../../events/job-v1.json")).unwrap();
        assert!(matches!(job, Message::Job(_)));
    }

    #[test]
    fn bad_events_are_refused_with_a_reason() {
        for (body, expected) in [
            (r#"{"Records":[]}"#, "no records"),
            (r#"{"Records":"x"}"#, "malformed S3 event"),
            (r#"{"Records":[{"eventName":"ObjectCreated:Put"}]}"#, "s3"),
            (
                r#"{"Records":[{"eventSource":"aws:sqs","eventName":"x","s3":{"bucket":{"name":"b"},"object":{"key":"k"}}}]}"#,
                "aws:sqs",
            ),
            (
                r#"{"Records":[{"eventName":"x","s3":{"bucket":{"name":"b"},"object":{"key":"%zz"}}}]}"#,
                "%-escape",
            ),
            (
                r#"{"Records":[{"eventName":"x","s3":{"bucket":{"name":""},"object":{"key":"k"}}}]}"#,
                "bucket",
            ),
        ] {
            let err = Message::parse(body).unwrap_err();
            assert!(matches!(err, MessageError::Event(_)), "{body}: {err:?}");
            assert!(err.to_string().contains(expected), "{body}: {err}");
        }
        // Neither shape: refused as a job, as before.
        assert!(matches!(
            Message::parse("{not json"),
            Err(MessageError::Job(JobError::Malformed(_)))
        ));
        assert!(matches!(
            Message::parse(r#"{"Event":"s3:SomethingElse"}"#),
            Err(MessageError::Job(_))
        ));
    }

    #[test]
    fn deferred_invalidations_read_back_and_bad_ones_are_refused() {
        let sample = Message::parse(include_str!("../../events/invalidation-v1.json")).unwrap();
        let Message::Invalidation(sample) = sample else {
            panic!("{sample:?}")
        };
        assert_eq!(sample.attempt, 2);
        assert!(sample.coverage.covers("photos/red cat.jpg"));
        assert!(sample.coverage.covers("bulk/2024/0001.jpg"));
        assert_eq!(
            sample.coverage.paths(),
            [
                "/photos/red%20cat.jpg",
                "/photos/red%20cat.jpg@*",
                "/bulk/2024/*"
            ]
        );
        let round = Message::parse(&sample.to_json()).unwrap();
        assert_eq!(round, Message::Invalidation(sample));
        for (body, expected) in [
            (r#"{"v":1,"invalidate":{},"attempt":1}"#, "nothing"),
            (
                r#"{"v":1,"invalidate":{"originals":[""]},"attempt":1}"#,
                "empty",
            ),
            (
                r#"{"v":1,"invalidate":{"directories":["a"]},"attempt":1}"#,
                "'/'",
            ),
            (
                r#"{"v":1,"invalidate":{"originals":["a"]},"attempt":0}"#,
                "attempt",
            ),
            (
                r#"{"v":2,"invalidate":{"originals":["a"]},"attempt":1}"#,
                "version",
            ),
            (r#"{"v":1,"invalidate":{"originals":["a"]}}"#, "attempt"),
            (
                r#"{"v":1,"invalidate":{"originals":["a"],"paths":["/a"]},"attempt":1}"#,
                "paths",
            ),
            (r#"{"v":1,"invalidate":"a","attempt":1}"#, "invalidation"),
        ] {
            let err = Message::parse(body).unwrap_err();
            assert!(
                matches!(err, MessageError::Invalidation(_)),
                "{body}: {err:?}"
            );
            assert!(err.to_string().contains(expected), "{body}: {err}");
        }
        // Keys full of escaped characters: collapsed to their directory, within the limit.
        let keys: Vec<String> = (0..5)
            .map(|i| format!("d/{i}{}", "\u{1}".repeat(1000)))
            .collect();
        let big = DeferredInvalidation {
            coverage: Coverage::new(keys.clone(), []),
            attempt: 1,
        };
        let body = big.to_json();
        assert!(body.len() <= MAX_INVALIDATION_BYTES, "{}", body.len());
        let Ok(Message::Invalidation(read)) = Message::parse(&body) else {
            panic!("{body}")
        };
        assert!(keys.iter().all(|k| read.coverage.covers(k)));
        assert_eq!(read.coverage.paths(), ["/d/*"]);
    }

    #[test]
    fn only_content_events_change_anything() {
        let change = |name: &str| StorageChange {
            event_name: name.into(),
            bucket: "b".into(),
            key: "k".into(),
            etag: None,
        };
        for name in [
            "ObjectCreated:Put",
            "ObjectCreated:CompleteMultipartUpload",
            "ObjectCreated:Copy",
            "ObjectRemoved:Delete",
            "ObjectRemoved:DeleteMarkerCreated",
            "LifecycleExpiration:Delete",
        ] {
            assert!(change(name).may_change_content(), "{name}");
        }
        for name in [
            "ObjectTagging:Put",
            "ObjectRestore:Completed",
            "ObjectAcl:Put",
        ] {
            assert!(!change(name).may_change_content(), "{name}");
        }
    }
}
