//! From a request path to an object key, refusing anything that is not a plain S3 key.
//!
//! The stores check keys too, but `serve` answers the open network (or at least a
//! browser), so a hostile path is refused here, before any store or handler sees it, with
//! the status S3 behind CloudFront would give: 400 for a malformed key, 404 for names we
//! never expose (dot-segments: the local spool queue and store sidecars live there).

use percent_encoding::percent_decode_str;

use edgethumb::store::MAX_KEY_BYTES;

/// Why a request path does not name an object we may serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    #[error("{0}")]
    BadRequest(String),
    /// A hidden name (a segment starting with `.`): answered as if it did not exist.
    #[error("not found")]
    Hidden,
}

impl KeyRefusal {
    pub fn status(&self) -> u16 {
        match self {
            KeyRefusal::BadRequest(_) => 400,
            KeyRefusal::Hidden => 404,
        }
    }
}

/// The decoded object key for a request path such as `/photos/cat%20a.jpg@200w.webp`.
pub fn request_key(path: &str) -> Result<String, KeyRefusal> {
    let raw = path.strip_prefix('/').unwrap_or(path);
    // Checked before decoding too, so a megabyte of `%41` costs nothing to refuse.
    if raw.len() > 3 * MAX_KEY_BYTES {
        return Err(KeyRefusal::BadRequest(format!(
            "key longer than {MAX_KEY_BYTES} bytes"
        )));
    }
    let key = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| KeyRefusal::BadRequest("key is not valid UTF-8 once decoded".into()))?
        .into_owned();
    check_key(&key)?;
    Ok(key)
}

/// The rules on a decoded key (also applied to keys given on the command line).
pub fn check_key(key: &str) -> Result<(), KeyRefusal> {
    let bad = |reason: &str| Err(KeyRefusal::BadRequest(reason.to_string()));
    if key.is_empty() {
        return bad("empty key");
    }
    if key.len() > MAX_KEY_BYTES {
        return bad("key longer than 1024 bytes");
    }
    if key.chars().any(char::is_control) {
        return bad("key contains a control character");
    }
    if key.contains('\\') {
        return bad("key contains a backslash");
    }
    if key.starts_with('/') {
        return bad("key is an absolute path");
    }
    let mut hidden = false;
    for segment in key.split('/') {
        if segment == "." || segment == ".." {
            return bad("key contains a '.' or '..' segment");
        }
        hidden |= segment.starts_with('.');
    }
    if hidden {
        return Err(KeyRefusal::Hidden);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_encoded_keys_decode() {
        assert_eq!(
            request_key("/photos/cat.jpg@200w.webp").unwrap(),
            "photos/cat.jpg@200w.webp"
        );
        assert_eq!(
            request_key("/a%20b/%C3%A9t%C3%A9.png").unwrap(),
            "a b/été.png"
        );
        assert_eq!(request_key("/x@y/z.jpg").unwrap(), "x@y/z.jpg");
    }

    #[test]
    fn hostile_paths_are_bad_requests() {
        for path in [
            "/../../etc/passwd",
            "/photos/../../../etc/passwd",
            "/%2e%2e/%2e%2e/etc/passwd",
            "/a/./b.jpg",
            "/..%2fetc/passwd",
            "/cat.jpg%00.png",
            "/cat%0a.jpg",
            "/a%5cb.jpg",
            "//etc/passwd",
            "/%2fetc/passwd",
            "/bad%FF.jpg",
            "/",
        ] {
            assert!(
                matches!(request_key(path), Err(KeyRefusal::BadRequest(_))),
                "{path}: {:?}",
                request_key(path)
            );
        }
    }

    #[test]
    fn huge_keys_are_refused_without_decoding() {
        let path = format!("/{}", "%41".repeat(100_000));
        assert!(matches!(request_key(&path), Err(KeyRefusal::BadRequest(_))));
        let path = format!("/{}.jpg", "a".repeat(1100));
        assert!(matches!(request_key(&path), Err(KeyRefusal::BadRequest(_))));
        let exact = format!("/{}", "a".repeat(MAX_KEY_BYTES));
        assert!(request_key(&exact).is_ok());
    }

    #[test]
    fn hidden_segments_are_not_found() {
        for path in [
            "/.edgethumb/queue/x.json",
            "/photos/.meta/cat.jpg",
            "/.hidden.jpg@200w.jpg",
        ] {
            assert_eq!(request_key(path), Err(KeyRefusal::Hidden), "{path}");
        }
    }
}
