//! The S3 adapter of [`ObjectStore`] (AWS S3 or any S3-compatible endpoint, e.g. moto).
//!
//! Error mapping is a pure function ([`classify`]) over the HTTP status and S3 error code so
//! it can be unit-tested without a server: in particular a 403 on a read means "missing",
//! because real S3 answers 403 instead of 404 when the caller lacks `s3:ListBucket`, and
//! moto (our test server) never does, so no integration test could catch a regression.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use bytes::{Bytes, BytesMut};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use edgethumb::store::{
    ListPage, Object, ObjectInfo, ObjectStore, PutRequest, StoreError, check_s3_key, check_tags,
    clamp_page_size,
};

/// What an S3 failure means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Failure {
    /// The key does not exist (reads answer `Ok(None)`).
    Missing,
    NoSuchBucket,
    AccessDenied,
    /// Throttling, 5xx, timeouts, connection failures: try again later.
    Retryable,
    /// Anything else (bad request, precondition...): retrying the same call cannot help.
    Permanent,
}

/// Map an S3 answer to its meaning. `status` is `None` when no response arrived (timeout,
/// connection refused, DNS): always retryable. `read` selects the GET/HEAD rule that a 403
/// is a missing key (see the module docs); on writes a 403 is access denied.
pub fn classify(status: Option<u16>, code: Option<&str>, read: bool) -> S3Failure {
    let Some(status) = status else {
        return S3Failure::Retryable;
    };
    match code {
        Some("NoSuchBucket") => return S3Failure::NoSuchBucket,
        Some("NoSuchKey") | Some("NotFound") => return S3Failure::Missing,
        Some(
            "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "RequestTimeout"
            | "RequestTimeTooSkewed"
            | "InternalError"
            | "ServiceUnavailable"
            | "OperationAborted",
        ) => return S3Failure::Retryable,
        _ => {}
    }
    match status {
        404 => S3Failure::Missing,
        403 if read => S3Failure::Missing,
        403 => S3Failure::AccessDenied,
        429 | 500..=599 => S3Failure::Retryable,
        _ => S3Failure::Permanent,
    }
}

/// The parts of an SDK error [`classify`] needs, plus a message for logs.
fn failure_of<E>(err: &SdkError<E, HttpResponse>, read: bool) -> (S3Failure, String)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = DisplayErrorContext(err).to_string();
    let failure = match err {
        SdkError::ConstructionFailure(_) => S3Failure::Permanent,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            S3Failure::Retryable
        }
        SdkError::ServiceError(ctx) => {
            classify(Some(ctx.raw().status().as_u16()), ctx.err().code(), read)
        }
        // SdkError is non-exhaustive; an unknown kind carries no status to trust.
        _ => classify(
            err.raw_response().map(|r| r.status().as_u16()),
            err.code(),
            read,
        ),
    };
    (failure, message)
}

/// Characters S3 wants percent-encoded in the `x-amz-tagging` query string.
const TAG_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `k=v&k2=v2`, URL-encoded, as PutObject's `Tagging` header expects.
pub fn encode_tagging(tags: &BTreeMap<String, String>) -> String {
    tags.iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, TAG_ENCODE),
                utf8_percent_encode(v, TAG_ENCODE)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// One bucket on S3.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Store {
    /// Cheap: the client is reference-counted, so build one per bucket freely.
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        S3Store {
            client,
            bucket: bucket.into(),
        }
    }

    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    fn error<E>(
        &self,
        operation: &'static str,
        key: &str,
        err: &SdkError<E, HttpResponse>,
        read: bool,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (failure, message) = failure_of(err, read);
        self.error_from(operation, key, failure, message)
    }

    fn error_from(
        &self,
        operation: &'static str,
        key: &str,
        failure: S3Failure,
        message: String,
    ) -> StoreError {
        match failure {
            S3Failure::NoSuchBucket => StoreError::NoSuchBucket {
                bucket: self.bucket.clone(),
            },
            S3Failure::AccessDenied => StoreError::AccessDenied {
                bucket: self.bucket.clone(),
                key: key.to_string(),
            },
            // Only reached for writes/lists, where "missing" is not an answer.
            S3Failure::Missing | S3Failure::Permanent => StoreError::Backend {
                operation,
                bucket: self.bucket.clone(),
                key: key.to_string(),
                retryable: false,
                message,
            },
            S3Failure::Retryable => StoreError::Backend {
                operation,
                bucket: self.bucket.clone(),
                key: key.to_string(),
                retryable: true,
                message,
            },
        }
    }

    /// Read a body of announced size without ever holding more than `max_bytes` (the
    /// announced length could be absent or wrong).
    async fn read_body(
        &self,
        key: &str,
        mut body: ByteStream,
        size_hint: u64,
        max_bytes: u64,
    ) -> Result<Bytes, StoreError> {
        let capacity = usize::try_from(size_hint.min(max_bytes)).unwrap_or(0);
        let mut buf = BytesMut::with_capacity(capacity);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StoreError::Backend {
                operation: "GetObject",
                bucket: self.bucket.clone(),
                key: key.to_string(),
                retryable: true,
                message: format!("{BODY_READ_FAILURE}: {}", DisplayErrorContext(&e)),
            })?;
            if (buf.len() + chunk.len()) as u64 > max_bytes {
                return Err(StoreError::TooLarge {
                    bucket: self.bucket.clone(),
                    key: key.to_string(),
                    size: (buf.len() + chunk.len()) as u64,
                    limit: max_bytes,
                });
            }
            buf.extend_from_slice(&chunk);
        }
        // A body that ended early without a transport error (a close-delimited or
        // mis-framed response) must never pass for the object: it would be decoded, or
        // worse, rendered into a variant.
        if size_hint > 0 && buf.len() as u64 != size_hint {
            return Err(StoreError::Backend {
                operation: "GetObject",
                bucket: self.bucket.clone(),
                key: key.to_string(),
                retryable: true,
                message: format!(
                    "{BODY_READ_FAILURE}: got {} of {size_hint} bytes",
                    buf.len()
                ),
            });
        }
        Ok(buf.freeze())
    }

    /// One GetObject: the response head, then the body.
    async fn get_once(&self, key: &str, max_bytes: u64) -> Result<Option<Object>, StoreError> {
        let output = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => output,
            Err(err) => {
                let (failure, message) = failure_of(&err, true);
                return match failure {
                    S3Failure::Missing => Ok(None),
                    other => Err(self.error_from("GetObject", key, other, message)),
                };
            }
        };
        let size = non_negative(output.content_length);
        // Refuse on the announced length before reading a single body byte.
        if size > max_bytes {
            return Err(StoreError::TooLarge {
                bucket: self.bucket.clone(),
                key: key.to_string(),
                size,
                limit: max_bytes,
            });
        }
        let info = ObjectInfo {
            key: key.to_string(),
            size,
            content_type: output.content_type.clone(),
            cache_control: output.cache_control.clone(),
            etag: output.e_tag.clone(),
            last_modified: to_system_time(output.last_modified.as_ref()),
            metadata: lowercase_metadata(output.metadata.as_ref()),
        };
        let body = self.read_body(key, output.body, size, max_bytes).await?;
        let info = ObjectInfo {
            size: body.len() as u64,
            ..info
        };
        Ok(Some(Object { info, body }))
    }
}

/// GetObjects tried in all when the body read fails (the first one included).
const BODY_READ_ATTEMPTS: u32 = 3;
/// Pause before the second try; the third waits twice as long.
const BODY_READ_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
/// How a failed body read starts its message (see [`is_body_read_failure`]).
const BODY_READ_FAILURE: &str = "reading body";

/// Whether a GetObject failed while its body was read (after the SDK's own retries ended).
fn is_body_read_failure(error: &StoreError) -> bool {
    matches!(error, StoreError::Backend { operation: "GetObject", message, .. }
        if message.starts_with(BODY_READ_FAILURE))
}

fn to_system_time(t: Option<&DateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

fn lowercase_metadata(m: Option<&HashMap<String, String>>) -> BTreeMap<String, String> {
    m.map(|m| {
        m.iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    })
    .unwrap_or_default()
}

fn non_negative(n: Option<i64>) -> u64 {
    n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

#[async_trait]
impl ObjectStore for S3Store {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn get(&self, key: &str, max_bytes: u64) -> Result<Option<Object>, StoreError> {
        check_s3_key(key)?;
        // The SDK retries GetObject only until the response head arrives: the body is read
        // afterwards, by us, and a connection reset or a short body there reaches the caller
        // as a failed read. Try the whole GET again a few times, as the SDK does for any
        // other transient failure, so one cut connection does not fail a miss or a job.
        let mut attempt = 1;
        loop {
            match self.get_once(key, max_bytes).await {
                Err(
                    error @ StoreError::Backend {
                        retryable: true, ..
                    },
                ) if attempt < BODY_READ_ATTEMPTS && is_body_read_failure(&error) => {
                    tracing::debug!(event = "s3.get_retry", key, attempt, error = %error);
                    tokio::time::sleep(BODY_READ_BACKOFF * attempt).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        check_s3_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: non_negative(output.content_length),
                content_type: output.content_type,
                cache_control: output.cache_control,
                etag: output.e_tag,
                last_modified: to_system_time(output.last_modified.as_ref()),
                metadata: lowercase_metadata(output.metadata.as_ref()),
            })),
            Err(err) => {
                let (failure, message) = failure_of(&err, true);
                match failure {
                    S3Failure::Missing => Ok(None),
                    other => Err(self.error_from("HeadObject", key, other, message)),
                }
            }
        }
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        request: PutRequest,
    ) -> Result<ObjectInfo, StoreError> {
        check_s3_key(key)?;
        check_tags(&self.bucket, key, &request.tags)?;
        let size = body.len() as u64;
        let metadata: HashMap<String, String> = request
            .metadata
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        let mut call = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(&request.content_type)
            .set_cache_control(request.cache_control.clone())
            .set_metadata(Some(metadata.clone()))
            .body(ByteStream::from(body));
        if !request.tags.is_empty() {
            call = call.tagging(encode_tagging(&request.tags));
        }
        let output = call
            .send()
            .await
            .map_err(|e| self.error("PutObject", key, &e, false))?;
        Ok(ObjectInfo {
            key: key.to_string(),
            size,
            content_type: Some(request.content_type),
            cache_control: request.cache_control,
            etag: output.e_tag,
            // PutObject does not return it; the write just happened.
            last_modified: Some(SystemTime::now()),
            metadata: metadata.into_iter().collect(),
        })
    }

    async fn tags(&self, key: &str) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        check_s3_key(key)?;
        match self
            .client
            .get_object_tagging()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => Ok(Some(
                output
                    .tag_set
                    .into_iter()
                    .map(|t| (t.key, t.value))
                    .collect(),
            )),
            Err(err) => {
                let (failure, message) = failure_of(&err, true);
                match failure {
                    S3Failure::Missing => Ok(None),
                    other => Err(self.error_from("GetObjectTagging", key, other, message)),
                }
            }
        }
    }

    async fn list_page(
        &self,
        prefix: &str,
        continuation: Option<String>,
        page_size: u32,
    ) -> Result<ListPage, StoreError> {
        let page_size = clamp_page_size(page_size);
        let output = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_continuation_token(continuation)
            .max_keys(i32::try_from(page_size).unwrap_or(1000))
            .send()
            .await
            .map_err(|e| self.error("ListObjectsV2", prefix, &e, false))?;
        let objects = output
            .contents
            .unwrap_or_default()
            .into_iter()
            .filter_map(|o| {
                Some(ObjectInfo {
                    key: o.key?,
                    size: non_negative(o.size),
                    etag: o.e_tag,
                    last_modified: to_system_time(o.last_modified.as_ref()),
                    // ListObjectsV2 does not return these; HEAD the key when needed.
                    content_type: None,
                    cache_control: None,
                    metadata: BTreeMap::new(),
                })
            })
            .collect();
        let continuation = if output.is_truncated.unwrap_or(false) {
            output.next_continuation_token
        } else {
            None
        };
        Ok(ListPage {
            objects,
            continuation,
        })
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_s3_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error("DeleteObject", key, &e, false))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_reads_are_missing_keys() {
        // Real S3 without s3:ListBucket: 403 AccessDenied for a missing key.
        assert_eq!(
            classify(Some(403), Some("AccessDenied"), true),
            S3Failure::Missing
        );
        // HEAD has no body, so no code at all.
        assert_eq!(classify(Some(403), None, true), S3Failure::Missing);
        assert_eq!(classify(Some(404), None, true), S3Failure::Missing);
        assert_eq!(
            classify(Some(404), Some("NoSuchKey"), true),
            S3Failure::Missing
        );
    }

    #[test]
    fn forbidden_writes_are_access_denied() {
        assert_eq!(
            classify(Some(403), Some("AccessDenied"), false),
            S3Failure::AccessDenied
        );
        assert_eq!(classify(Some(403), None, false), S3Failure::AccessDenied);
    }

    #[test]
    fn missing_bucket_is_not_a_missing_key() {
        assert_eq!(
            classify(Some(404), Some("NoSuchBucket"), true),
            S3Failure::NoSuchBucket
        );
        assert_eq!(
            classify(Some(404), Some("NoSuchBucket"), false),
            S3Failure::NoSuchBucket
        );
    }

    #[test]
    fn throttling_and_server_errors_are_retryable() {
        for (status, code) in [
            (503, Some("SlowDown")),
            (503, None),
            (500, Some("InternalError")),
            (429, None),
            (400, Some("RequestTimeout")),
            (400, Some("ThrottlingException")),
            (502, None),
        ] {
            assert_eq!(
                classify(Some(status), code, true),
                S3Failure::Retryable,
                "{status} {code:?}"
            );
            assert_eq!(
                classify(Some(status), code, false),
                S3Failure::Retryable,
                "{status} {code:?}"
            );
        }
        // No response at all: timeout or connection failure.
        assert_eq!(classify(None, None, false), S3Failure::Retryable);
    }

    #[test]
    fn client_errors_are_permanent() {
        assert_eq!(
            classify(Some(400), Some("InvalidTag"), false),
            S3Failure::Permanent
        );
        assert_eq!(classify(Some(412), None, true), S3Failure::Permanent);
    }

    #[test]
    fn tagging_is_url_encoded() {
        let mut tags = BTreeMap::new();
        tags.insert("createByLambda".to_string(), "1".to_string());
        assert_eq!(encode_tagging(&tags), "createByLambda=1");
        tags.insert("a b".to_string(), "x=y&z/ü".to_string());
        assert_eq!(
            encode_tagging(&tags),
            "a%20b=x%3Dy%26z%2F%C3%BC&createByLambda=1"
        );
    }

    #[test]
    fn store_errors_carry_bucket_key_and_retryability() {
        let store = S3Store::new(
            aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::Config::builder()
                    .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                    .build(),
            ),
            "b",
        );
        let e = store.error_from("PutObject", "k", S3Failure::Retryable, "slow".into());
        assert!(e.is_retryable());
        assert!(e.to_string().contains("b/k"), "{e}");
        let e = store.error_from("PutObject", "k", S3Failure::AccessDenied, String::new());
        assert!(!e.is_retryable());
        assert!(matches!(e, StoreError::AccessDenied { .. }));
        let e = store.error_from("GetObject", "k", S3Failure::NoSuchBucket, String::new());
        assert!(matches!(e, StoreError::NoSuchBucket { .. }));
        assert!(!e.is_retryable());
    }
}
