//! The viewer-request rules: one cache key per variant, the format the browser accepts,
//! and only the variants the operator allows.
//!
//! CloudFront runs these rules in `edge/js/viewer-request.js` (a CloudFront Function,
//! before the cache lookup); `serve` and `edgethumb sign` run this Rust copy. The two must
//! never disagree, which `tests/viewer_differential.rs` checks over generated keys, so
//! every rule here is spelled to be easy to repeat in a few lines of JavaScript:
//!
//! 1. A URI whose raw form has no `@` and no `%40` is an original: it passes untouched
//!    (query string included).
//! 2. The URI is percent-decoded exactly as the origin-response handler does it
//!    (`%XX` pairs decoded, anything else kept, then strict UTF-8); failure is a 400 with
//!    the handler's message.
//! 3. With the `list` guard, a parameter part that looks like a preset name and names a
//!    preset is replaced by the preset's parameters.
//! 4. The key is parsed with the Rust grammar ([`VariantRequest::parse`]); an error is a 400
//!    whose message is [`VariantError`]'s, naming the token.
//! 5. The guard runs on the canonical *requested* key (`.auto` still unresolved, since the
//!    page that links it cannot know the viewer's `Accept` header): a signature, or the
//!    allow-list. Failure is a 403.
//! 6. `.auto` is resolved ([`negotiate_format`]), and the URI is rewritten to the canonical
//!    key re-encoded by [`encode_key`]; the query string is dropped.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;

use crate::variant::{OutputFormat, RequestedParams, VariantError, VariantRequest};

/// Query parameter carrying the signature.
pub const SIGNATURE_PARAM: &str = "s";
/// Query parameter naming the secret the signature was made with (two live during rotation).
pub const KEY_ID_PARAM: &str = "k";

/// Settings keys, shared by the KeyValueStore and the `serve` settings document.
pub const GUARD_SETTING: &str = "guard";
pub const KEY_PREFIX: &str = "key:";
pub const PRESET_PREFIX: &str = "preset:";
pub const ALLOW_PREFIX: &str = "allow:";

/// Longest key id, preset name or secret we accept (KeyValueStore keys are at most 512
/// bytes and values 1 KB; ours stay far below).
const MAX_NAME_LEN: usize = 64;

/// Which media type in `Accept` selects which format for `.auto`, best first.
///
/// The same lines as `AUTO` in viewer-request.js (the differential test keeps them equal).
pub const AUTO_FORMATS: &[(&str, OutputFormat)] = &[
    ("image/avif", OutputFormat::Avif),
    ("image/webp", OutputFormat::Webp),
];

/// Bytes kept as they are when a key is re-encoded into a URI: RFC 3986 unreserved
/// characters plus `/` (key segments) and `@` (the variant separator). Everything else is
/// `%XX` with upper-case hex, so one decoded key has exactly one URI spelling (one cache
/// entry), `+` never meets S3's legacy "plus means space", and the origin-response
/// handler decodes it back to the same key.
const KEY_URI_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/')
    .remove(b'@');

/// What CloudFront (or `serve`) should do with a viewer request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewerOutcome {
    /// Not a variant (no `@`): forward as it came, query string included.
    PassThrough,
    /// Forward with this URI (canonical, `.auto` resolved) and no query string.
    Rewrite { uri: String },
    /// Answer at the edge: 400 for a malformed key, 403 for a guard refusal.
    Reject { status: u16, message: String },
}

impl ViewerOutcome {
    fn bad_request(message: String) -> Self {
        ViewerOutcome::Reject {
            status: 400,
            message,
        }
    }

    fn forbidden(message: &str) -> Self {
        ViewerOutcome::Reject {
            status: 403,
            message: message.to_string(),
        }
    }
}

/// 403 messages, shared word for word with viewer-request.js.
pub const MISSING_SIGNATURE: &str = "missing signature (k= and s= query parameters)";
pub const UNKNOWN_KEY_ID: &str = "unknown signing key id";
pub const BAD_SIGNATURE: &str = "bad signature";
pub const UNKNOWN_GUARD: &str = "viewer guard misconfigured";

/// How variants are guarded against spraying (see docs/edge.md for the threat model).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ViewerGuard {
    /// Every valid variant passes (the behaviour before the guard existed).
    #[default]
    Open,
    /// Every variant needs `?k=<key id>&s=<signature>` made with one of these secrets.
    Signed { keys: BTreeMap<String, String> },
    /// Only presets (`cat.jpg@thumb`) and allow-listed canonical parameter strings.
    List {
        presets: BTreeMap<String, String>,
        allow: BTreeSet<String>,
    },
}

/// Why a settings document was refused; each message names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("viewer settings are not a JSON object of strings: {0}")]
    Json(String),
    #[error("unknown guard {0:?} (known: none, signed, list)")]
    UnknownGuard(String),
    #[error("setting {0:?}: key ids and preset names are 1-64 of [A-Za-z0-9_-]")]
    BadName(String),
    #[error("setting {0:?}: a preset name is a letter, then up to 63 of [A-Za-z0-9_-]")]
    BadPresetName(String),
    #[error("setting {0:?}: a secret must be 16-1024 bytes")]
    BadSecret(String),
    #[error("setting {key:?}: {error}")]
    BadParams { key: String, error: VariantError },
    #[error("setting {key:?} is not canonical: write {canonical:?}, or it will never match")]
    NotCanonical { key: String, canonical: String },
    #[error("setting {0:?} is not used by any guard (known: guard, key:*, preset:*, allow:*)")]
    UnknownSetting(String),
    #[error("guard {0:?} needs at least one {1}* setting")]
    Empty(String, &'static str),
}

/// Why a URL could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("not a signable variant URL: {0}")]
    Refused(String),
    #[error("no signing key {0:?} in the settings")]
    UnknownKey(String),
    #[error("several signing keys ({0}): say which one to sign with")]
    AmbiguousKey(String),
    #[error("the settings have no signing keys (guard is not \"signed\")")]
    NoKeys,
}

impl ViewerGuard {
    /// Build the guard from the flat settings map: the KeyValueStore's keys and values,
    /// which is also the `serve` settings document (a JSON object of strings).
    ///
    /// Everything is checked here, so a typo fails at start-up rather than turning into
    /// a 403 for every viewer or an allow-list entry that can never match.
    pub fn from_settings(settings: &BTreeMap<String, String>) -> Result<Self, SettingsError> {
        let mode = settings.get(GUARD_SETTING).map_or("none", String::as_str);
        let mut keys = BTreeMap::new();
        let mut presets = BTreeMap::new();
        let mut allow = BTreeSet::new();
        for (name, value) in settings {
            if name == GUARD_SETTING {
                continue;
            } else if let Some(id) = name.strip_prefix(KEY_PREFIX) {
                check_name(name, id)?;
                if !(16..=1024).contains(&value.len()) {
                    return Err(SettingsError::BadSecret(name.clone()));
                }
                keys.insert(id.to_string(), value.clone());
            } else if let Some(preset) = name.strip_prefix(PRESET_PREFIX) {
                // A name the rules would never look up is a typo, not a preset.
                if !is_preset_name(preset) {
                    return Err(SettingsError::BadPresetName(name.clone()));
                }
                value
                    .parse::<RequestedParams>()
                    .map_err(|error| SettingsError::BadParams {
                        key: name.clone(),
                        error,
                    })?;
                presets.insert(preset.to_string(), value.clone());
            } else if let Some(params) = name.strip_prefix(ALLOW_PREFIX) {
                let parsed = params.parse::<RequestedParams>().map_err(|error| {
                    SettingsError::BadParams {
                        key: name.clone(),
                        error,
                    }
                })?;
                let canonical = parsed.canonical();
                if canonical != params {
                    return Err(SettingsError::NotCanonical {
                        key: name.clone(),
                        canonical: format!("{ALLOW_PREFIX}{canonical}"),
                    });
                }
                allow.insert(canonical);
            } else {
                return Err(SettingsError::UnknownSetting(name.clone()));
            }
        }
        match mode {
            "none" => Ok(ViewerGuard::Open),
            "signed" if keys.is_empty() => Err(SettingsError::Empty(mode.into(), KEY_PREFIX)),
            "signed" => Ok(ViewerGuard::Signed { keys }),
            "list" if presets.is_empty() && allow.is_empty() => {
                Err(SettingsError::Empty(mode.into(), "preset:* or allow:"))
            }
            "list" => Ok(ViewerGuard::List { presets, allow }),
            other => Err(SettingsError::UnknownGuard(other.to_string())),
        }
    }

    /// [`ViewerGuard::from_settings`] from the JSON settings document.
    pub fn from_json(json: &str) -> Result<Self, SettingsError> {
        let settings: BTreeMap<String, String> =
            serde_json::from_str(json).map_err(|e| SettingsError::Json(e.to_string()))?;
        Self::from_settings(&settings)
    }

    /// The settings map this guard was built from (for a KeyValueStore import file).
    pub fn to_settings(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mode = match self {
            ViewerGuard::Open => "none",
            ViewerGuard::Signed { keys } => {
                for (id, secret) in keys {
                    out.insert(format!("{KEY_PREFIX}{id}"), secret.clone());
                }
                "signed"
            }
            ViewerGuard::List { presets, allow } => {
                for (name, params) in presets {
                    out.insert(format!("{PRESET_PREFIX}{name}"), params.clone());
                }
                for params in allow {
                    out.insert(format!("{ALLOW_PREFIX}{params}"), "1".to_string());
                }
                "list"
            }
        };
        out.insert(GUARD_SETTING.to_string(), mode.to_string());
        out
    }

    /// The KeyValueStore import document (`{"data":[{"key":..,"value":..}]}`), the shape
    /// `AWS::CloudFront::KeyValueStore`'s `ImportSource` and the console accept.
    pub fn to_kvs_import_json(&self) -> String {
        let data: Vec<serde_json::Value> = self
            .to_settings()
            .into_iter()
            .map(|(key, value)| serde_json::json!({ "key": key, "value": value }))
            .collect();
        serde_json::json!({ "data": data }).to_string()
    }

    /// Apply the viewer-request rules to one request.
    ///
    /// `uri` is the path as CloudFront gives it (raw, percent-encoded, leading `/`),
    /// `query` the raw query string without `?`, `accept` the `Accept` header if any.
    pub fn evaluate(&self, uri: &str, query: &str, accept: Option<&str>) -> ViewerOutcome {
        if !names_a_variant(uri) {
            return ViewerOutcome::PassThrough;
        }
        let key = match decode_uri(uri) {
            Ok(key) => key,
            Err(message) => return ViewerOutcome::bad_request(message),
        };
        let Some((original, spec)) = key.rsplit_once('@') else {
            return ViewerOutcome::PassThrough;
        };
        let (spec, via_preset) = match self {
            ViewerGuard::List { presets, .. } if is_preset_name(spec) => match presets.get(spec) {
                Some(params) => (params.as_str(), true),
                None => (spec, false),
            },
            _ => (spec, false),
        };
        let request = match VariantRequest::parse(&format!("{original}@{spec}")) {
            Ok(request) => request,
            Err(e) => return ViewerOutcome::bad_request(e.to_string()),
        };
        let negotiated = negotiate_format(&request.original_key, accept.unwrap_or(""));
        let resolved = request.resolve(negotiated);
        match self {
            ViewerGuard::Open => {}
            ViewerGuard::Signed { keys } => {
                let (Some(id), Some(signature)) = (
                    query_param(query, KEY_ID_PARAM),
                    query_param(query, SIGNATURE_PARAM),
                ) else {
                    return ViewerOutcome::forbidden(MISSING_SIGNATURE);
                };
                let Some(secret) = keys.get(id) else {
                    return ViewerOutcome::forbidden(UNKNOWN_KEY_ID);
                };
                let expected = signature_for(secret.as_bytes(), &request_uri(&request));
                if !constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
                    return ViewerOutcome::forbidden(BAD_SIGNATURE);
                }
            }
            ViewerGuard::List { allow, .. } => {
                let requested = request.params.canonical();
                let allowed = via_preset
                    || allow.contains(&requested)
                    || allow.contains(&resolved.params.canonical());
                if !allowed {
                    return ViewerOutcome::Reject {
                        status: 403,
                        message: not_allowed_message(&requested),
                    };
                }
            }
        }
        ViewerOutcome::Rewrite {
            uri: format!("/{}", encode_key(&resolved.canonical_key())),
        }
    }

    /// A signed URL for `url` (a path such as `/photos/cat.jpg@200w.auto`, or a full
    /// `https://host/path` URL): the canonical requested path plus `?k=<id>&s=<signature>`.
    /// `key_id` may be omitted when the settings hold exactly one key.
    pub fn sign_url(&self, url: &str, key_id: Option<&str>) -> Result<String, SignError> {
        let ViewerGuard::Signed { keys } = self else {
            return Err(SignError::NoKeys);
        };
        let (id, secret) = match key_id {
            Some(id) => keys
                .get_key_value(id)
                .ok_or_else(|| SignError::UnknownKey(id.to_string()))?,
            None if keys.len() == 1 => keys.iter().next().ok_or(SignError::NoKeys)?,
            None => {
                let ids: Vec<&str> = keys.keys().map(String::as_str).collect();
                return Err(SignError::AmbiguousKey(ids.join(", ")));
            }
        };
        sign_url(url, id, secret.as_bytes())
    }
}

/// Sign one variant URL with one secret (see [`ViewerGuard::sign_url`]).
pub fn sign_url(url: &str, key_id: &str, secret: &[u8]) -> Result<String, SignError> {
    let (origin, rest) = split_origin(url);
    let path = rest.split(['?', '#']).next().unwrap_or(rest);
    if !names_a_variant(path) {
        return Err(SignError::Refused(format!("{path:?} has no '@'")));
    }
    let key = decode_uri(path).map_err(SignError::Refused)?;
    let request = VariantRequest::parse(&key).map_err(|e| SignError::Refused(e.to_string()))?;
    let uri = request_uri(&request);
    let signature = signature_for(secret, &uri);
    Ok(format!(
        "{origin}{uri}?{KEY_ID_PARAM}={key_id}&{SIGNATURE_PARAM}={signature}"
    ))
}

/// The signed message: the canonical *requested* URI (`.auto` kept), re-encoded.
fn request_uri(request: &VariantRequest) -> String {
    format!("/{}", encode_key(&request.canonical_key()))
}

/// base64url (no padding) of HMAC-SHA256(secret, message): 43 URL-safe characters.
pub fn signature_for(secret: &[u8], message: &str) -> String {
    // HMAC takes keys of any length, so this constructor cannot fail; an empty tag would
    // only ever fail verification.
    let tag = match <Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(message.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag)
}

/// The format `.auto` becomes: the first [`AUTO_FORMATS`] media type `accept` names
/// (wildcards do not count: `*/*` says nothing about WebP, and old browsers send
/// `image/*` without decoding it), else the original's own family judged from its key
/// alone, because the function never sees pixels: `.png`, `.gif` and `.webp` may carry
/// alpha and become PNG; everything else (JPEG, unknown, no extension) becomes JPEG.
pub fn negotiate_format(original_key: &str, accept: &str) -> OutputFormat {
    for (media_type, format) in AUTO_FORMATS {
        if accepts(accept, media_type) {
            return *format;
        }
    }
    let name = original_key.rsplit('/').next().unwrap_or(original_key);
    let ext = name.rsplit_once('.').map_or("", |(_, ext)| ext);
    if ["png", "gif", "webp"]
        .iter()
        .any(|e| ext.eq_ignore_ascii_case(e))
    {
        OutputFormat::Png
    } else {
        OutputFormat::Jpeg
    }
}

/// Whether `accept` lists `media_type` (ASCII case-insensitive) with a q other than zero.
/// q counts as zero when spelled `0`, `0.`, `0.0`, `0.00` or `0.000` (RFC 9110 weights).
fn accepts(accept: &str, media_type: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let name = trim_ows(parts.next().unwrap_or(""));
        name.eq_ignore_ascii_case(media_type)
            && !parts.any(|param| {
                let Some((k, v)) = param.split_once('=') else {
                    return false;
                };
                let v = trim_ows(v);
                trim_ows(k).eq_ignore_ascii_case("q")
                    && v.starts_with('0')
                    && v.len() <= 5
                    && v[1..]
                        .strip_prefix('.')
                        .map_or(v.len() == 1, |zeros| zeros.bytes().all(|b| b == b'0'))
            })
    })
}

/// HTTP optional whitespace only (not Unicode whitespace), so JavaScript can match it.
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Whether the raw URI can name a variant, before any decoding (originals pass untouched
/// even when their encoding is broken: that is S3's business, not ours).
fn names_a_variant(uri: &str) -> bool {
    uri.contains('@') || uri.to_ascii_lowercase().contains("%40")
}

/// The decoded key, exactly as `edge::handler` decodes it (one leading `/` stripped,
/// `%XX` decoded, other `%` kept, strict UTF-8), with the handler's 400 message.
pub fn decode_uri(uri: &str) -> Result<String, String> {
    let raw = uri.strip_prefix('/').unwrap_or(uri);
    percent_decode_str(raw)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| format!("URI {uri:?} is not valid UTF-8 once decoded"))
}

/// Re-encode a decoded key for a URI (see [`KEY_URI_SET`] for the rule).
pub fn encode_key(key: &str) -> String {
    utf8_percent_encode(key, KEY_URI_SET).to_string()
}

/// A preset name: a letter, then letters, digits, `_` or `-`. A parameter string never
/// looks like this (tokens start with a digit), so the lookup cannot shadow the grammar.
fn is_preset_name(spec: &str) -> bool {
    spec.len() <= MAX_NAME_LEN
        && spec.starts_with(|c: char| c.is_ascii_alphabetic())
        && spec
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_name(setting: &str, name: &str) -> Result<(), SettingsError> {
    let ok = (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SettingsError::BadName(setting.to_string()))
    }
}

/// The 403 for a variant outside the allow-list.
fn not_allowed_message(canonical_params: &str) -> String {
    format!("variant parameters {canonical_params:?} are not allowed")
}

/// The first value of `name` in a raw query string (no decoding: key ids and signatures
/// are URL-safe by construction, so an encoded one is simply wrong).
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// `scheme://host` and the rest, for URLs given to `edgethumb sign`.
fn split_origin(url: &str) -> (&str, &str) {
    for scheme in ["https://", "http://"] {
        if let Some(after) = url.strip_prefix(scheme) {
            let host_end = after.find('/').unwrap_or(after.len());
            let split = scheme.len() + host_end;
            return (&url[..split], &url[split..]);
        }
    }
    ("", url)
}

/// Compare without an early exit, so response timing does not reveal a signature prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_A: &str = "0123456789abcdef-old";
    const SECRET_B: &str = "fedcba9876543210-new";

    fn open(uri: &str) -> ViewerOutcome {
        ViewerGuard::Open.evaluate(uri, "", Some("image/webp,*/*"))
    }

    fn rewrite(uri: &str) -> ViewerOutcome {
        ViewerOutcome::Rewrite { uri: uri.into() }
    }

    fn status(outcome: &ViewerOutcome) -> u16 {
        match outcome {
            ViewerOutcome::PassThrough | ViewerOutcome::Rewrite { .. } => 200,
            ViewerOutcome::Reject { status, .. } => *status,
        }
    }

    fn signed() -> ViewerGuard {
        ViewerGuard::from_json(&format!(
            r#"{{"guard":"signed","key:2026a":"{SECRET_A}","key:2026b":"{SECRET_B}"}}"#
        ))
        .unwrap()
    }

    fn listed() -> ViewerGuard {
        ViewerGuard::from_json(
            r#"{"guard":"list","preset:thumb":"200h_200w_1e.auto","preset:hero":"1600w.jpg",
                "allow:400w.webp":"1","allow:800w.auto":"1"}"#,
        )
        .unwrap()
    }

    #[test]
    fn equivalent_spellings_rewrite_to_one_uri() {
        for uri in [
            "/photos/cat.jpg@80q_200w.webp",
            "/photos/cat.jpg@200w_80q.webp",
            "/photos/cat.jpg@200w_0e_80q.WEBP",
            "/photos/cat.jpg%40200w_80q.webp",
            "/photos/c%61t.jpg@0200w_80q_100p.webp",
        ] {
            assert_eq!(open(uri), rewrite("/photos/cat.jpg@200w_80q.webp"), "{uri}");
        }
    }

    #[test]
    fn keys_are_re_encoded_one_way() {
        assert_eq!(
            open("/a b/%C3%A9t%C3%A9+x(1)!.png@200w.png"),
            rewrite("/a%20b/%C3%A9t%C3%A9%2Bx%281%29%21.png@200w.png")
        );
        assert_eq!(
            open("/users/me%40x.com/a%2Fb~c.jpg@200w.jpg"),
            rewrite("/users/me@x.com/a/b~c.jpg@200w.jpg")
        );
        // A `%` that starts no escape is kept by the decoder and then encoded.
        assert_eq!(open("/100%.jpg@200w.jpg"), rewrite("/100%25.jpg@200w.jpg"));
        for key in ["a b/ü+@.jpg", "x%y@z", "~._-/@"] {
            assert_eq!(decode_uri(&format!("/{}", encode_key(key))).unwrap(), key);
        }
    }

    #[test]
    fn originals_pass_untouched() {
        for uri in ["/photos/cat.jpg", "/bad%FF.jpg", "/", ""] {
            assert_eq!(open(uri), ViewerOutcome::PassThrough, "{uri}");
            assert_eq!(signed().evaluate(uri, "", None), ViewerOutcome::PassThrough);
            assert_eq!(listed().evaluate(uri, "", None), ViewerOutcome::PassThrough);
        }
    }

    #[test]
    fn bad_keys_get_the_edge_handlers_400() {
        let cases = [
            (
                "/cat.jpg@200x",
                "unknown parameter letter in token \"200x\"",
            ),
            (
                "/cat.jpg@5000w",
                "token \"5000w\" out of range: w must be 1..=4096",
            ),
            ("/cat.jpg@200w.gif", "unsupported output format \"gif\""),
            ("/@200w", "missing original key before '@' in \"@200w\""),
            (
                "/bad%FF.jpg@200w",
                "URI \"/bad%FF.jpg@200w\" is not valid UTF-8 once decoded",
            ),
            ("/cat.jpg@", "no parameters after '@'"),
            (
                "/cat.jpg@2%C3%A90w",
                "token \"2é0w\" is not <integer><letter>",
            ),
        ];
        for (uri, message) in cases {
            match open(uri) {
                ViewerOutcome::Reject {
                    status: 400,
                    message: m,
                } => {
                    assert!(m.contains(message), "{uri}: {m}")
                }
                other => panic!("{uri}: {other:?}"),
            }
        }
        // The guard never hides a 400: the grammar is public, the 403 is for valid keys.
        assert_eq!(status(&signed().evaluate("/cat.jpg@200x", "", None)), 400);
    }

    #[test]
    fn auto_follows_accept_then_the_originals_family() {
        let chrome = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8";
        let old_edge = "image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5";
        let cases = [
            ("cat.jpg", chrome, OutputFormat::Avif),
            ("cat.jpg", "image/avif", OutputFormat::Avif),
            ("cat.jpg", "IMAGE/WEBP", OutputFormat::Webp),
            ("cat.jpg", "image/webp;q=0", OutputFormat::Jpeg),
            ("cat.jpg", "image/webp; q=0.000", OutputFormat::Jpeg),
            ("cat.jpg", "image/webp;q=0.001", OutputFormat::Webp),
            ("cat.jpg", "image/webp;q=0,image/webp", OutputFormat::Webp),
            ("cat.jpg", "*/*", OutputFormat::Jpeg),
            ("cat.jpg", old_edge, OutputFormat::Jpeg),
            ("cat.PNG", old_edge, OutputFormat::Png),
            ("anim.gif", "", OutputFormat::Png),
            ("x.webp", "*/*", OutputFormat::Png),
            ("dir.png/noext", "", OutputFormat::Jpeg),
            ("photo.heic", "", OutputFormat::Jpeg),
        ];
        for (key, accept, want) in cases {
            assert_eq!(negotiate_format(key, accept), want, "{key} {accept}");
        }
        assert_eq!(
            ViewerGuard::Open.evaluate("/cat.png@80q_1r_200w.AUTO", "", Some(old_edge)),
            rewrite("/cat.png@200w.png")
        );
        assert_eq!(
            ViewerGuard::Open.evaluate("/cat.jpg@80q_1r_200w.auto", "", None),
            rewrite("/cat.jpg@200w_80q_1r.jpg")
        );
        assert_eq!(
            ViewerGuard::Open.evaluate("/cat.jpg@200w.auto?x", "", Some(chrome)),
            ViewerOutcome::Reject {
                status: 400,
                message: VariantError::UnsupportedFormat("auto?x".into()).to_string()
            },
            "the URI has no query part: CloudFront gives it separately"
        );
    }

    #[test]
    fn signatures_good_bad_missing_and_rotated() {
        let guard = signed();
        let url = guard
            .sign_url(
                "https://img.example.com/cat.jpg@0200w.auto?old=1",
                Some("2026a"),
            )
            .unwrap();
        let (path, query) = url
            .strip_prefix("https://img.example.com")
            .unwrap()
            .split_once('?')
            .unwrap();
        assert_eq!(path, "/cat.jpg@200w.auto");
        assert!(query.starts_with("k=2026a&s="), "{query}");
        assert_eq!(query.len(), "k=2026a&s=".len() + 43);
        let webp = rewrite("/cat.jpg@200w.webp");
        assert_eq!(guard.evaluate(path, query, Some("image/webp")), webp);
        // Any spelling of the same variant carries the same signature.
        assert_eq!(
            guard.evaluate("/cat.jpg@200w_0e.AUTO", query, Some("image/webp")),
            webp
        );
        // Another variant, a tampered signature, a wrong or unknown key id, nothing at all.
        assert_eq!(
            guard.evaluate("/cat.jpg@201w.auto", query, None),
            ViewerOutcome::forbidden(BAD_SIGNATURE)
        );
        let tampered = format!("{}A", &query[..query.len() - 1]);
        let tampered = if tampered == query {
            format!("{}B", &query[..query.len() - 1])
        } else {
            tampered
        };
        assert_eq!(
            guard.evaluate(path, &tampered, None),
            ViewerOutcome::forbidden(BAD_SIGNATURE)
        );
        let other_key = query.replace("k=2026a", "k=2026b");
        assert_eq!(
            guard.evaluate(path, &other_key, None),
            ViewerOutcome::forbidden(BAD_SIGNATURE)
        );
        let unknown = query.replace("k=2026a", "k=2025z");
        assert_eq!(
            guard.evaluate(path, &unknown, None),
            ViewerOutcome::forbidden(UNKNOWN_KEY_ID)
        );
        for q in ["", "k=2026a", "s=abc", "ks=1"] {
            assert_eq!(
                guard.evaluate(path, q, None),
                ViewerOutcome::forbidden(MISSING_SIGNATURE),
                "{q}"
            );
        }
        // Rotation: the new key signs, both verify while both are in the store.
        let new = guard.sign_url("/cat.jpg@200w.auto", Some("2026b")).unwrap();
        let (_, new_query) = new.split_once('?').unwrap();
        assert_eq!(guard.evaluate(path, new_query, Some("image/webp")), webp);
        // Once the old key is removed, its URLs stop working.
        let rotated = ViewerGuard::Signed {
            keys: BTreeMap::from([("2026b".to_string(), SECRET_B.to_string())]),
        };
        assert_eq!(
            rotated.evaluate(path, query, None),
            ViewerOutcome::forbidden(UNKNOWN_KEY_ID)
        );
        assert_eq!(rotated.sign_url("/cat.jpg@200w.auto", None).unwrap(), new);
        assert!(matches!(
            guard.sign_url("/cat.jpg@200w", None),
            Err(SignError::AmbiguousKey(_))
        ));
        assert!(matches!(
            guard.sign_url("/cat.jpg", Some("2026a")),
            Err(SignError::Refused(_))
        ));
        assert!(matches!(
            guard.sign_url("/cat.jpg@200x", Some("2026a")),
            Err(SignError::Refused(_))
        ));
        assert_eq!(
            ViewerGuard::Open.sign_url("/cat.jpg@200w", None),
            Err(SignError::NoKeys)
        );
    }

    #[test]
    fn signature_is_hmac_sha256_base64url() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature_for(b"Jefe", "what do ya want for nothing?"),
            "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM"
        );
    }

    #[test]
    fn presets_and_the_allow_list() {
        let guard = listed();
        let webp = Some("image/webp,*/*");
        assert_eq!(
            guard.evaluate("/cat.jpg@thumb", "", webp),
            rewrite("/cat.jpg@200w_200h_1e.webp")
        );
        assert_eq!(
            guard.evaluate("/cat.png@thumb", "", Some("*/*")),
            rewrite("/cat.png@200w_200h_1e.png")
        );
        assert_eq!(
            guard.evaluate("/cat.jpg@hero", "", webp),
            rewrite("/cat.jpg@1600w.jpg")
        );
        // Allowed: the canonical requested form, or the resolved one.
        assert_eq!(
            guard.evaluate("/cat.jpg@0400w.WEBP", "", None),
            rewrite("/cat.jpg@400w.webp")
        );
        assert_eq!(
            guard.evaluate("/cat.jpg@400w.auto", "", webp),
            rewrite("/cat.jpg@400w.webp")
        );
        assert_eq!(
            guard.evaluate("/cat.jpg@800w.auto", "", None),
            rewrite("/cat.jpg@800w.jpg")
        );
        // Not allowed: other parameters, the auto form resolving elsewhere, a preset's
        // spelled-out form (only the name is configured).
        for uri in [
            "/cat.jpg@401w.webp",
            "/cat.jpg@400w.auto",
            "/cat.jpg@800w.jpg",
            "/cat.jpg@200w_200h_1e.webp",
        ] {
            assert_eq!(status(&guard.evaluate(uri, "", None)), 403, "{uri}");
        }
        match guard.evaluate("/cat.jpg@1r_401w.auto", "", None) {
            ViewerOutcome::Reject {
                status: 403,
                message,
            } => {
                assert_eq!(
                    message,
                    "variant parameters \"401w_1r.auto\" are not allowed"
                )
            }
            other => panic!("{other:?}"),
        }
        // An unknown preset name is just a malformed key.
        assert_eq!(status(&guard.evaluate("/cat.jpg@thumbs", "", None)), 400);
        // Presets only mean something to the list guard.
        assert_eq!(
            status(&ViewerGuard::Open.evaluate("/cat.jpg@thumb", "", None)),
            400
        );
    }

    #[test]
    fn settings_are_checked_when_loaded() {
        assert_eq!(ViewerGuard::from_json("{}"), Ok(ViewerGuard::Open));
        assert_eq!(
            ViewerGuard::from_json(r#"{"guard":"none"}"#),
            Ok(ViewerGuard::Open)
        );
        let bad = [
            (r#"{"guard":"sign"}"#, "unknown guard"),
            (r#"{"guard":"signed"}"#, "at least one"),
            (r#"{"guard":"list"}"#, "at least one"),
            (r#"{"key:a b":"0123456789abcdef"}"#, "key:a b"),
            (r#"{"key:a":"short"}"#, "16-1024"),
            (r#"{"preset:t":"200x"}"#, "200x"),
            (r#"{"preset:200w":"400w"}"#, "a letter"),
            (r#"{"allow:200w_80q.jpeg":"1"}"#, "allow:200w_80q.jpg"),
            (r#"{"allow:200w.WEBP":"1"}"#, "allow:200w.webp"),
            (r#"{"keys:a":"x"}"#, "not used"),
            (r#"{"guard":1}"#, "JSON"),
        ];
        for (json, needle) in bad {
            let err = ViewerGuard::from_json(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
        let guard = listed();
        assert_eq!(
            ViewerGuard::from_settings(&guard.to_settings()),
            Ok(guard.clone())
        );
        let import: serde_json::Value = serde_json::from_str(&guard.to_kvs_import_json()).unwrap();
        assert!(
            import["data"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!({"key": "guard", "value": "list"}))
        );
    }
}
