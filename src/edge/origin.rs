//! Which bucket (and region) a CloudFront origin points at.
//!
//! CloudFront passes the origin's domain name, not the bucket, and S3 has many domain
//! forms: virtual-hosted global (`b.s3.amazonaws.com`), regional (`b.s3.us-west-2...`),
//! legacy dash-regional (`b.s3-us-west-2...`), dual-stack, website endpoints, and
//! path-style (`s3.amazonaws.com` with the bucket as the first path segment).

use super::cloudfront::Origin;

/// An S3 bucket and the key prefix the origin adds (the origin path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketLocation {
    pub bucket: String,
    /// Region when the domain or the event states it.
    pub region: Option<String>,
    /// Origin path without leading/trailing `/` (prepended to object keys), may be empty.
    pub key_prefix: String,
}

impl BucketLocation {
    /// The object key for a request key, with the origin path prepended.
    pub fn object_key(&self, key: &str) -> String {
        if self.key_prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{}", self.key_prefix, key)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("the request has no origin")]
    NoOrigin,
    #[error("cannot tell the S3 bucket from origin domain {0:?}")]
    UnknownDomain(String),
}

fn looks_like_region(label: &str) -> bool {
    label.contains('-') && label.ends_with(|c: char| c.is_ascii_digit())
}

/// Parse the S3 part of a host name (`<bucket>.<s3 label>[.<dualstack>][.<region>]`).
/// Returns (bucket or "" for path-style, region).
fn parse_s3_host(host: &str) -> Option<(String, Option<String>)> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let rest = host
        .strip_suffix(".amazonaws.com.cn")
        .or_else(|| host.strip_suffix(".amazonaws.com"))?;
    let labels: Vec<&str> = rest.split('.').collect();
    // The service label is one of the last three; bucket names may contain "s3" labels
    // themselves, so search from the right.
    let start = labels.len().saturating_sub(3);
    for i in (start..labels.len()).rev() {
        let label = labels[i];
        let after = &labels[i + 1..];
        let service_region = if label == "s3" || label == "s3-website" || label == "s3-accelerate" {
            Some(None)
        } else if let Some(region) = label
            .strip_prefix("s3-website-")
            .or_else(|| label.strip_prefix("s3-"))
        {
            looks_like_region(region).then(|| Some(region.to_string()))
        } else {
            None
        };
        let Some(mut region) = service_region else {
            continue;
        };
        let mut ok = true;
        for a in after {
            if *a == "dualstack" {
                continue;
            }
            if looks_like_region(a) && region.is_none() {
                region = Some(a.to_string());
            } else {
                ok = false;
            }
        }
        if ok {
            return Some((labels[..i].join("."), region));
        }
    }
    None
}

/// Where the origin of this request stores objects.
pub fn bucket_location(origin: Option<&Origin>) -> Result<BucketLocation, OriginError> {
    let origin = origin.ok_or(OriginError::NoOrigin)?;
    let (domain, path, event_region) = match (&origin.s3, &origin.custom) {
        (Some(s3), _) => (s3.domain_name.as_str(), s3.path.as_str(), s3.region.clone()),
        (None, Some(custom)) => (custom.domain_name.as_str(), custom.path.as_str(), None),
        (None, None) => return Err(OriginError::NoOrigin),
    };
    let (bucket, region) =
        parse_s3_host(domain).ok_or_else(|| OriginError::UnknownDomain(domain.to_string()))?;
    let path = path.trim_matches('/');
    let (bucket, key_prefix) = if bucket.is_empty() {
        // Path-style: the first path segment is the bucket.
        let (b, rest) = path.split_once('/').unwrap_or((path, ""));
        if b.is_empty() {
            return Err(OriginError::UnknownDomain(domain.to_string()));
        }
        (b.to_string(), rest.to_string())
    } else {
        (bucket, path.to_string())
    };
    Ok(BucketLocation {
        bucket,
        region: region.or(event_region.filter(|r| !r.is_empty())),
        key_prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::super::cloudfront::{CustomOriginConfig, S3OriginConfig};
    use super::*;

    fn s3(domain: &str, path: &str, region: Option<&str>) -> Origin {
        Origin {
            s3: Some(S3OriginConfig {
                domain_name: domain.into(),
                path: path.into(),
                region: region.map(str::to_string),
                auth_method: None,
                extra: Default::default(),
            }),
            custom: None,
        }
    }

    fn loc(bucket: &str, region: Option<&str>, prefix: &str) -> BucketLocation {
        BucketLocation {
            bucket: bucket.into(),
            region: region.map(str::to_string),
            key_prefix: prefix.into(),
        }
    }

    #[test]
    fn all_s3_domain_forms() {
        let table: &[(&str, &str, BucketLocation)] = &[
            ("photos.s3.amazonaws.com", "", loc("photos", None, "")),
            (
                "photos.s3.us-west-2.amazonaws.com",
                "",
                loc("photos", Some("us-west-2"), ""),
            ),
            (
                "photos.s3-us-west-2.amazonaws.com",
                "",
                loc("photos", Some("us-west-2"), ""),
            ),
            (
                "photos.s3.dualstack.eu-west-1.amazonaws.com",
                "",
                loc("photos", Some("eu-west-1"), ""),
            ),
            (
                "my.dotted.bucket.s3.amazonaws.com",
                "",
                loc("my.dotted.bucket", None, ""),
            ),
            (
                "s3.backup.s3.eu-central-1.amazonaws.com",
                "",
                loc("s3.backup", Some("eu-central-1"), ""),
            ),
            (
                "photos.s3-website-us-east-1.amazonaws.com",
                "",
                loc("photos", Some("us-east-1"), ""),
            ),
            (
                "photos.s3-website.eu-west-3.amazonaws.com",
                "",
                loc("photos", Some("eu-west-3"), ""),
            ),
            ("s3.amazonaws.com", "/photos", loc("photos", None, "")),
            (
                "s3.us-west-2.amazonaws.com",
                "/photos/v1/",
                loc("photos", Some("us-west-2"), "v1"),
            ),
            (
                "s3-eu-west-1.amazonaws.com",
                "/photos",
                loc("photos", Some("eu-west-1"), ""),
            ),
            (
                "PHOTOS.S3.AMAZONAWS.COM",
                "/originals",
                loc("photos", None, "originals"),
            ),
            (
                "photos.s3.cn-north-1.amazonaws.com.cn",
                "",
                loc("photos", Some("cn-north-1"), ""),
            ),
        ];
        for (domain, path, expected) in table {
            assert_eq!(
                &bucket_location(Some(&s3(domain, path, None))).unwrap(),
                expected,
                "{domain} {path}"
            );
        }
    }

    #[test]
    fn event_region_fills_in_when_the_domain_has_none() {
        let l = bucket_location(Some(&s3("b.s3.amazonaws.com", "", Some("ap-south-1")))).unwrap();
        assert_eq!(l.region.as_deref(), Some("ap-south-1"));
        let l = bucket_location(Some(&s3(
            "b.s3.us-east-2.amazonaws.com",
            "",
            Some("ap-south-1"),
        )))
        .unwrap();
        assert_eq!(l.region.as_deref(), Some("us-east-2"), "the domain wins");
    }

    #[test]
    fn non_s3_domains_are_refused() {
        for d in [
            "example.com",
            "s3.amazonaws.com",
            "cdn.amazonaws.com",
            "bucket.s3.example.com",
        ] {
            assert!(bucket_location(Some(&s3(d, "", None))).is_err(), "{d}");
        }
        assert_eq!(bucket_location(None), Err(OriginError::NoOrigin));
    }

    #[test]
    fn custom_origin_on_a_website_endpoint() {
        let origin = Origin {
            s3: None,
            custom: Some(CustomOriginConfig {
                domain_name: "photos.s3-website-us-east-1.amazonaws.com".into(),
                path: "".into(),
                extra: Default::default(),
            }),
        };
        assert_eq!(bucket_location(Some(&origin)).unwrap().bucket, "photos");
    }

    #[test]
    fn object_key_adds_the_origin_path() {
        assert_eq!(loc("b", None, "v1").object_key("a.jpg"), "v1/a.jpg");
        assert_eq!(loc("b", None, "").object_key("a.jpg"), "a.jpg");
    }
}
