//! The URL grammar: `<original key>@<params>[.<format>]`.
//!
//! A variant key names an original and how to derive a thumbnail from it. Parsing is
//! strict (every malformed spelling is a typed error naming the offending token) because
//! the edge answers a bad URL with 400 and must never guess. Every accepted spelling has a
//! single canonical form, used for de-duplicating jobs and in logs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Largest `w`/`h` accepted in a URL.
pub const MAX_SIDE_PARAM: u32 = 4096;
/// Largest `p` accepted in a URL.
pub const MAX_PERCENT: u32 = 1000;

/// Output encodings we produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Jpeg,
    Png,
    Webp,
    Avif,
}

impl OutputFormat {
    /// The spelling used in canonical keys and file names.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Png => "png",
            OutputFormat::Webp => "webp",
            OutputFormat::Avif => "avif",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Png => "image/png",
            OutputFormat::Webp => "image/webp",
            OutputFormat::Avif => "image/avif",
        }
    }

    /// Whether the `q` parameter changes the output (PNG is lossless).
    pub fn is_lossy(self) -> bool {
        !matches!(self, OutputFormat::Png)
    }

    /// Any letter case: links in the wild carry `.JPG` and `.WebP` (the seed's design
    /// lower-cased them), and a 400 for those would only move the problem to the page author.
    fn from_extension(ext: &str) -> Option<Self> {
        if ext.eq_ignore_ascii_case("jpg") || ext.eq_ignore_ascii_case("jpeg") {
            Some(OutputFormat::Jpeg)
        } else if ext.eq_ignore_ascii_case("png") {
            Some(OutputFormat::Png)
        } else if ext.eq_ignore_ascii_case("webp") {
            Some(OutputFormat::Webp)
        } else if ext.eq_ignore_ascii_case("avif") {
            Some(OutputFormat::Avif)
        } else {
            None
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

/// How `w` and `h` combine (`e` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// `0e`: keep aspect ratio, fit inside w×h.
    #[default]
    Fit,
    /// `1e`: keep aspect ratio, cover w×h (the smaller side reaches the box).
    Cover,
    /// `2e`: force exactly w×h.
    Fill,
}

/// Processing parameters of one variant, after validation.
///
/// Fields hold what the URL said, not derived values, so the canonical form can be
/// printed back; [`crate::geometry`] turns them into pixel sizes once the source is known.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Params {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub mode: ResizeMode,
    /// `1c`: centre-crop to exactly w×h; only meaningful with `1e` and both sides given.
    pub crop: bool,
    /// `1l`: never enlarge.
    pub no_enlarge: bool,
    /// `p`, percent (100 = unchanged).
    pub percent: u32,
    /// `q`, when the URL gave one. Absent means "default" (80 at the edge, tuned by the worker).
    pub quality: Option<u8>,
    /// `1r`: progressive JPEG.
    pub progressive: bool,
    /// Explicit output format; `None` keeps the source's format.
    pub format: Option<OutputFormat>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            width: None,
            height: None,
            mode: ResizeMode::Fit,
            crop: false,
            no_enlarge: false,
            percent: 100,
            quality: None,
            progressive: false,
            format: None,
        }
    }
}

/// Quality used when the URL gives none and nothing tunes it.
pub const DEFAULT_QUALITY: u8 = 80;

impl Params {
    /// Whether `c` takes effect (it needs cover mode and a full box).
    pub fn crops(&self) -> bool {
        self.crop && self.mode == ResizeMode::Cover && self.width.is_some() && self.height.is_some()
    }

    /// Resolve the output format given the source's format.
    pub fn output_format(&self, source: OutputFormat) -> OutputFormat {
        self.format.unwrap_or(source)
    }

    /// Canonical spelling of the parameters (without the original key), e.g. `200w_200h_1e.webp`.
    ///
    /// Letters come in a fixed order, defaults and no-op tokens are dropped, `jpeg` is
    /// spelled `jpg`. An empty token list with no format is spelled `100p`, so the
    /// canonical key is still a valid variant key.
    pub fn canonical(&self) -> String {
        let mut out = self.canonical_tokens(self.format);
        match self.format {
            Some(f) => {
                out.push('.');
                out.push_str(f.extension());
            }
            None if out.is_empty() => out.push_str("100p"),
            None => {}
        }
        out
    }

    /// The canonical token list (possibly empty) for output in `format`; `None` means
    /// "not known yet" (the source's format, or `.auto` before negotiation), which keeps
    /// `q` and `r` because they may still matter.
    fn canonical_tokens(&self, format: Option<OutputFormat>) -> String {
        let mut tokens: Vec<String> = Vec::with_capacity(8);
        if let Some(w) = self.width {
            tokens.push(format!("{w}w"));
        }
        if let Some(h) = self.height {
            tokens.push(format!("{h}h"));
        }
        let two_sides = self.width.is_some() && self.height.is_some();
        // With one side (or none) the mode changes nothing: the other side follows the ratio.
        if two_sides {
            match self.mode {
                ResizeMode::Fit => {}
                ResizeMode::Cover => tokens.push("1e".into()),
                ResizeMode::Fill => tokens.push("2e".into()),
            }
        }
        if self.crops() {
            tokens.push("1c".into());
        }
        if self.no_enlarge {
            tokens.push("1l".into());
        }
        if self.percent != 100 {
            tokens.push(format!("{}p", self.percent));
        }
        let lossy_or_unknown = format.is_none_or(OutputFormat::is_lossy);
        if let Some(q) = self.quality
            && lossy_or_unknown
        {
            tokens.push(format!("{q}q"));
        }
        let jpeg_or_unknown = format.is_none_or(|f| f == OutputFormat::Jpeg);
        if self.progressive && jpeg_or_unknown {
            tokens.push("1r".into());
        }
        tokens.join("_")
    }

    /// The same variant with no-op fields reset, so that equal canonical forms mean equal values.
    pub fn normalized(&self) -> Params {
        // Parsing the canonical form is the single source of truth for normalisation.
        self.canonical().parse().unwrap_or_else(|_| self.clone())
    }
}

/// Why a variant key or parameter string was refused. Each message names the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VariantError {
    #[error("no '@' in key {0:?}: not a variant key")]
    NotAVariant(String),
    #[error("missing original key before '@' in {0:?}")]
    MissingOriginalKey(String),
    #[error("no parameters after '@'")]
    EmptyParams,
    #[error("empty token in parameters {0:?} (doubled, leading or trailing '_')")]
    EmptyToken(String),
    #[error("token {0:?} has no number before its letter")]
    MissingNumber(String),
    #[error("token {0:?} is not <integer><letter>")]
    Malformed(String),
    #[error("unknown parameter letter in token {0:?} (known: w h e c l p q r)")]
    UnknownLetter(String),
    #[error("parameter {letter:?} given twice (token {token:?})")]
    Duplicate { letter: char, token: String },
    #[error("token {token:?} out of range: {letter} must be {min}..={max}")]
    OutOfRange {
        token: String,
        letter: char,
        min: u32,
        max: u32,
    },
    #[error("unsupported output format {0:?} (supported: jpg, jpeg, png, webp, avif, auto)")]
    UnsupportedFormat(String),
    /// `.auto` reached something that renders: the viewer-request rules (the CloudFront
    /// Function, or `serve`) must have replaced it with a concrete format first.
    #[error("output format \"auto\" must be resolved from the Accept header before rendering")]
    UnresolvedAuto,
}

impl FromStr for Params {
    type Err = VariantError;

    /// Parse `<tokens>[.<format>]`, e.g. `200w_200h_1e_80q.webp`. `.auto` is refused
    /// here: a `Params` always names what will be rendered (see [`RequestedParams`]).
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let requested = RequestedParams::from_str(spec)?;
        if requested.auto_format {
            return Err(VariantError::UnresolvedAuto);
        }
        Ok(requested.params)
    }
}

/// Parameters as a URL may spell them, including the negotiated output extension `.auto`.
///
/// Kept apart from [`Params`] so that nothing that renders can ever see an unresolved
/// format: only the viewer-request rules parse this and turn it into a [`Params`] with
/// [`RequestedParams::resolve`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestedParams {
    /// With `auto_format`, `params.format` is `None` until resolved.
    pub params: Params,
    /// `.auto` (any letter case): the format is chosen from the viewer's `Accept` header.
    pub auto_format: bool,
}

impl RequestedParams {
    /// Canonical spelling of the request: [`Params::canonical`] for a concrete format,
    /// otherwise the canonical tokens (with `q`/`r` kept, the format being unknown) and `.auto`.
    pub fn canonical(&self) -> String {
        if self.auto_format {
            let mut out = self.params.canonical_tokens(None);
            out.push_str(".auto");
            out
        } else {
            self.params.canonical()
        }
    }

    /// The concrete parameters once the output format has been negotiated; a request
    /// without `.auto` keeps its own format and ignores `negotiated`.
    pub fn resolve(&self, negotiated: OutputFormat) -> Params {
        let mut params = self.params.clone();
        if self.auto_format {
            params.format = Some(negotiated);
        }
        params
    }
}

impl FromStr for RequestedParams {
    type Err = VariantError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (tokens, format, auto_format) = match spec.rsplit_once('.') {
            Some((tokens, ext)) if ext.eq_ignore_ascii_case("auto") => (tokens, None, true),
            Some((tokens, ext)) => {
                let format = OutputFormat::from_extension(ext)
                    .ok_or_else(|| VariantError::UnsupportedFormat(ext.to_string()))?;
                (tokens, Some(format), false)
            }
            None => (spec, None, false),
        };
        if tokens.is_empty() && format.is_none() && !auto_format {
            return Err(VariantError::EmptyParams);
        }
        let mut params = Params {
            format,
            ..Params::default()
        };
        let mut seen = String::with_capacity(8);
        if tokens.is_empty() {
            return Ok(RequestedParams {
                params,
                auto_format,
            });
        }
        for token in tokens.split('_') {
            if token.is_empty() {
                return Err(VariantError::EmptyToken(tokens.to_string()));
            }
            let (value, letter) = split_token(token)?;
            if seen.contains(letter) {
                return Err(VariantError::Duplicate {
                    letter,
                    token: token.to_string(),
                });
            }
            seen.push(letter);
            let in_range = |min: u32, max: u32| -> Result<u32, VariantError> {
                match value {
                    Some(v) if (min..=max).contains(&v) => Ok(v),
                    _ => Err(VariantError::OutOfRange {
                        token: token.to_string(),
                        letter,
                        min,
                        max,
                    }),
                }
            };
            match letter {
                'w' => params.width = Some(in_range(1, MAX_SIDE_PARAM)?),
                'h' => params.height = Some(in_range(1, MAX_SIDE_PARAM)?),
                'e' => {
                    params.mode = match in_range(0, 2)? {
                        0 => ResizeMode::Fit,
                        1 => ResizeMode::Cover,
                        _ => ResizeMode::Fill,
                    }
                }
                'c' => params.crop = in_range(0, 1)? == 1,
                'l' => params.no_enlarge = in_range(0, 1)? == 1,
                'p' => params.percent = in_range(1, MAX_PERCENT)?,
                'q' => params.quality = Some(in_range(1, 100)? as u8),
                'r' => params.progressive = in_range(0, 1)? == 1,
                _ => return Err(VariantError::UnknownLetter(token.to_string())),
            }
        }
        Ok(RequestedParams {
            params,
            auto_format,
        })
    }
}

/// Split `123w` into (Some(123), 'w'); a number too large for u32 gives `None` so the
/// caller reports it as out of range with the token.
fn split_token(token: &str) -> Result<(Option<u32>, char), VariantError> {
    let mut chars = token.chars();
    let letter = chars
        .next_back()
        .ok_or_else(|| VariantError::EmptyToken(token.to_string()))?;
    let digits = chars.as_str();
    if !letter.is_ascii_alphabetic() {
        return Err(VariantError::Malformed(token.to_string()));
    }
    if digits.is_empty() {
        return Err(VariantError::MissingNumber(token.to_string()));
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VariantError::Malformed(token.to_string()));
    }
    if !"whelcpqr".contains(letter) {
        return Err(VariantError::UnknownLetter(token.to_string()));
    }
    Ok((digits.parse::<u32>().ok(), letter))
}

/// A parsed variant key: which original, and which thumbnail of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VariantKey {
    /// The original's object key (decoded, without a leading `/`).
    pub original_key: String,
    pub params: Params,
}

impl VariantKey {
    /// Parse a decoded object key such as `photos/cat.jpg@200w_200h_1e_80q.webp`.
    ///
    /// Splits on the last `@`, since original keys may themselves contain `@`.
    pub fn parse(key: &str) -> Result<Self, VariantError> {
        let (original, spec) = split_variant_key(key)?;
        Ok(VariantKey {
            original_key: original.to_string(),
            params: spec.parse()?,
        })
    }

    /// One spelling per variant: `<original>@<canonical params>`.
    pub fn canonical_key(&self) -> String {
        format!("{}@{}", self.original_key, self.params.canonical())
    }
}

impl fmt::Display for VariantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical_key())
    }
}

impl FromStr for VariantKey {
    type Err = VariantError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VariantKey::parse(s)
    }
}

/// A variant key as a viewer may spell it: like [`VariantKey`], but `.auto` is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VariantRequest {
    pub original_key: String,
    pub params: RequestedParams,
}

impl VariantRequest {
    /// Parse a decoded key; the same rules and errors as [`VariantKey::parse`], plus `.auto`.
    pub fn parse(key: &str) -> Result<Self, VariantError> {
        let (original, spec) = split_variant_key(key)?;
        Ok(VariantRequest {
            original_key: original.to_string(),
            params: spec.parse()?,
        })
    }

    /// `<original>@<canonical requested params>`: what signatures and allow-lists name,
    /// since a page links `.auto` before anyone knows the viewer's `Accept` header.
    pub fn canonical_key(&self) -> String {
        format!("{}@{}", self.original_key, self.params.canonical())
    }

    /// The renderable variant once the output format has been negotiated.
    pub fn resolve(&self, negotiated: OutputFormat) -> VariantKey {
        VariantKey {
            original_key: self.original_key.clone(),
            params: self.params.resolve(negotiated),
        }
    }
}

/// Split on the last `@` (original keys may contain `@`), refusing an empty original.
fn split_variant_key(key: &str) -> Result<(&str, &str), VariantError> {
    let (original, spec) = key
        .rsplit_once('@')
        .ok_or_else(|| VariantError::NotAVariant(key.to_string()))?;
    if original.is_empty() || original.ends_with('/') {
        return Err(VariantError::MissingOriginalKey(key.to_string()));
    }
    Ok((original, spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Params {
        s.parse().unwrap()
    }

    #[test]
    fn parses_the_documented_example() {
        let v = VariantKey::parse("photos/cat.jpg@200w_200h_1e_80q.webp").unwrap();
        assert_eq!(v.original_key, "photos/cat.jpg");
        assert_eq!(v.params.width, Some(200));
        assert_eq!(v.params.height, Some(200));
        assert_eq!(v.params.mode, ResizeMode::Cover);
        assert_eq!(v.params.quality, Some(80));
        assert_eq!(v.params.format, Some(OutputFormat::Webp));
        assert_eq!(v.canonical_key(), "photos/cat.jpg@200w_200h_1e_80q.webp");
    }

    #[test]
    fn splits_on_the_last_at() {
        let v = VariantKey::parse("users/me@example.com/a@b.jpg@100w").unwrap();
        assert_eq!(v.original_key, "users/me@example.com/a@b.jpg");
        assert_eq!(v.params.width, Some(100));
    }

    #[test]
    fn tokens_in_any_order_share_one_canonical_form() {
        let a = p("80q_1e_200h_200w.jpeg");
        let b = p("200w_200h_1e_80q.jpg");
        assert_eq!(a, b);
        assert_eq!(a.canonical(), "200w_200h_1e_80q.jpg");
    }

    #[test]
    fn defaults_are_dropped_from_the_canonical_form() {
        assert_eq!(p("200w_0e_0c_0l_100p_0r").canonical(), "200w");
        assert_eq!(
            p("200w_1e").canonical(),
            "200w",
            "mode is a no-op with one side"
        );
        assert_eq!(p("200w_200h_1c").canonical(), "200w_200h", "crop needs 1e");
        assert_eq!(p("200w_200h_1e_1c").canonical(), "200w_200h_1e_1c");
        assert_eq!(
            p("200w_90q.png").canonical(),
            "200w.png",
            "q is a no-op for PNG"
        );
        assert_eq!(p("200w_1r.webp").canonical(), "200w.webp", "r is JPEG-only");
        assert_eq!(p("200w_1r").canonical(), "200w_1r", "source may be JPEG");
        assert_eq!(p("0200w").canonical(), "200w");
        assert_eq!(p(".png").canonical(), ".png");
        assert_eq!(p("100p").canonical(), "100p");
    }

    #[test]
    fn explicit_q80_is_kept_because_it_disables_tuning() {
        assert_eq!(p("200w_80q").quality, Some(80));
        assert_eq!(p("200w_80q").canonical(), "200w_80q");
        assert_eq!(p("200w").quality, None);
    }

    #[test]
    fn errors_name_the_offending_token() {
        let cases: &[(&str, &str)] = &[
            ("200x", "200x"),
            ("5000w", "5000w"),
            ("0w", "0w"),
            ("0h", "0h"),
            ("3e", "3e"),
            ("2c", "2c"),
            ("0p", "0p"),
            ("1001p", "1001p"),
            ("0q", "0q"),
            ("101q", "101q"),
            ("2r", "2r"),
            ("2l", "2l"),
            ("200w_300w", "300w"),
            ("w", "w"),
            ("-5w", "-5w"),
            ("99999999999999999999w", "99999999999999999999w"),
            ("200w.gif", "gif"),
            ("200w.", "\"\""),
            ("200w__200h", "200w__200h"),
            ("_200w", "_200w"),
            ("200W", "200W"),
            ("2 0w", "2 0w"),
        ];
        for (input, token) in cases {
            let err = input.parse::<Params>().unwrap_err().to_string();
            assert!(
                err.contains(token),
                "error for {input:?} should name {token:?}: {err}"
            );
        }
    }

    #[test]
    fn error_kinds() {
        assert!(matches!(
            "1x".parse::<Params>(),
            Err(VariantError::UnknownLetter(_))
        ));
        assert!(matches!(
            "1w_2w".parse::<Params>(),
            Err(VariantError::Duplicate { letter: 'w', .. })
        ));
        assert!(matches!(
            "1w__2h".parse::<Params>(),
            Err(VariantError::EmptyToken(_))
        ));
        assert!(matches!(
            "".parse::<Params>(),
            Err(VariantError::EmptyParams)
        ));
        assert!(matches!(
            VariantKey::parse("@200w"),
            Err(VariantError::MissingOriginalKey(_))
        ));
        assert!(matches!(
            VariantKey::parse("photos/@200w"),
            Err(VariantError::MissingOriginalKey(_))
        ));
        assert!(matches!(
            VariantKey::parse("photos/cat.jpg"),
            Err(VariantError::NotAVariant(_))
        ));
        assert!(matches!(
            VariantKey::parse("a.jpg@"),
            Err(VariantError::EmptyParams)
        ));
    }

    #[test]
    fn output_extensions_match_in_any_letter_case() {
        assert_eq!(p("200w.JPG"), p("200w.jpg"));
        assert_eq!(p("200w.JPEG").canonical(), "200w.jpg");
        assert_eq!(p("200w.WebP").canonical(), "200w.webp");
        assert_eq!(p("200w.AVIF").canonical(), "200w.avif");
        assert_eq!(p(".Png").canonical(), ".png");
        let v = VariantKey::parse("Photos/Cat.JPG@200W.x").unwrap_err();
        assert!(v.to_string().contains("\"x\""), "{v}");
        assert_eq!(
            VariantKey::parse("Photos/Cat.JPG@200w.WEBP")
                .unwrap()
                .canonical_key(),
            "Photos/Cat.JPG@200w.webp",
            "only the output extension is case-folded, never the original key"
        );
        assert!(matches!(
            "200w.GIF".parse::<Params>(),
            Err(VariantError::UnsupportedFormat(ext)) if ext == "GIF"
        ));
    }

    #[test]
    fn auto_is_a_request_never_a_params() {
        for spec in ["200w.auto", "200w.AUTO", ".Auto"] {
            assert_eq!(
                spec.parse::<Params>(),
                Err(VariantError::UnresolvedAuto),
                "{spec}"
            );
            assert!(spec.parse::<RequestedParams>().unwrap().auto_format);
        }
        assert!(matches!(
            VariantKey::parse("a.jpg@200w.auto"),
            Err(VariantError::UnresolvedAuto)
        ));
        let r: RequestedParams = "80q_1r_200w.AUTO".parse().unwrap();
        assert_eq!(r.params.format, None);
        assert_eq!(
            r.canonical(),
            "200w_80q_1r.auto",
            "q and r kept until resolved"
        );
        assert_eq!(r.resolve(OutputFormat::Webp).canonical(), "200w_80q.webp");
        assert_eq!(r.resolve(OutputFormat::Jpeg).canonical(), "200w_80q_1r.jpg");
        assert_eq!(r.resolve(OutputFormat::Png).canonical(), "200w.png");
        let bare: RequestedParams = ".auto".parse().unwrap();
        assert_eq!(bare.canonical(), ".auto");
        assert_eq!(bare.resolve(OutputFormat::Webp).canonical(), ".webp");
        // A concrete request ignores the negotiated format.
        let fixed: RequestedParams = "200w.png".parse().unwrap();
        assert_eq!(fixed.resolve(OutputFormat::Webp).canonical(), "200w.png");
        assert_eq!(fixed.canonical(), "200w.png");
        // Errors are the grammar's, in the same order.
        assert_eq!(
            "200x.auto".parse::<RequestedParams>(),
            Err(VariantError::UnknownLetter("200x".into()))
        );
        assert_eq!(
            "".parse::<RequestedParams>(),
            Err(VariantError::EmptyParams)
        );
        assert!(matches!(
            "200w.autox".parse::<RequestedParams>(),
            Err(VariantError::UnsupportedFormat(_))
        ));
    }

    #[test]
    fn variant_requests_split_like_variant_keys() {
        let r = VariantRequest::parse("u/me@x.com/a.png@400W_1e.auto").unwrap_err();
        assert_eq!(r, VariantError::UnknownLetter("400W".into()));
        let r = VariantRequest::parse("u/me@x.com/a.png@1e_400w.auto").unwrap();
        assert_eq!(r.original_key, "u/me@x.com/a.png");
        assert_eq!(r.canonical_key(), "u/me@x.com/a.png@400w.auto");
        assert_eq!(
            r.resolve(OutputFormat::Png).canonical_key(),
            "u/me@x.com/a.png@400w.png"
        );
        assert!(matches!(
            VariantRequest::parse("dir/@200w.auto"),
            Err(VariantError::MissingOriginalKey(_))
        ));
    }

    fn arb_params() -> impl Strategy<Value = Params> {
        (
            proptest::option::of(1u32..=MAX_SIDE_PARAM),
            proptest::option::of(1u32..=MAX_SIDE_PARAM),
            0u8..3,
            any::<bool>(),
            any::<bool>(),
            1u32..=MAX_PERCENT,
            proptest::option::of(1u8..=100),
            any::<bool>(),
            proptest::option::of(prop_oneof![
                Just(OutputFormat::Jpeg),
                Just(OutputFormat::Png),
                Just(OutputFormat::Webp),
                Just(OutputFormat::Avif)
            ]),
        )
            .prop_map(
                |(width, height, e, crop, no_enlarge, percent, quality, progressive, format)| {
                    Params {
                        width,
                        height,
                        mode: match e {
                            0 => ResizeMode::Fit,
                            1 => ResizeMode::Cover,
                            _ => ResizeMode::Fill,
                        },
                        crop,
                        no_enlarge,
                        percent,
                        quality,
                        progressive,
                        format,
                    }
                },
            )
    }

    /// Spell params as a user might: shuffled order, explicit defaults, `jpeg`.
    fn loose_spelling(params: &Params, order: &[usize], spell_defaults: bool) -> String {
        let mut tokens: Vec<String> = Vec::new();
        if let Some(w) = params.width {
            tokens.push(format!("{w}w"));
        }
        if let Some(h) = params.height {
            tokens.push(format!("{h}h"));
        }
        let e = match params.mode {
            ResizeMode::Fit => 0,
            ResizeMode::Cover => 1,
            ResizeMode::Fill => 2,
        };
        if e != 0 || spell_defaults {
            tokens.push(format!("{e}e"));
        }
        if params.crop || spell_defaults {
            tokens.push(format!("{}c", params.crop as u8));
        }
        if params.no_enlarge || spell_defaults {
            tokens.push(format!("{}l", params.no_enlarge as u8));
        }
        if params.percent != 100 || spell_defaults {
            tokens.push(format!("{}p", params.percent));
        }
        if let Some(q) = params.quality {
            tokens.push(format!("{q}q"));
        }
        if params.progressive || spell_defaults {
            tokens.push(format!("{}r", params.progressive as u8));
        }
        let mut shuffled: Vec<String> = Vec::with_capacity(tokens.len());
        let mut pool = tokens;
        for &i in order {
            if pool.is_empty() {
                break;
            }
            shuffled.push(pool.remove(i % pool.len()));
        }
        shuffled.extend(pool);
        let mut out = shuffled.join("_");
        match params.format {
            Some(OutputFormat::Jpeg) => out.push_str(".jpeg"),
            Some(f) => {
                out.push('.');
                out.push_str(f.extension());
            }
            None if out.is_empty() => out.push_str("100p"),
            None => {}
        }
        out
    }

    proptest! {
        #[test]
        fn canonical_form_round_trips(params in arb_params()) {
            let canonical = params.canonical();
            let reparsed: Params = canonical.parse().unwrap();
            prop_assert_eq!(reparsed.canonical(), canonical.clone());
            // Parsing the canonical form again is a fixed point.
            prop_assert_eq!(reparsed.normalized(), reparsed.clone());
            let key = VariantKey { original_key: "a/b@c.jpg".into(), params: reparsed.clone() };
            prop_assert_eq!(VariantKey::parse(&key.canonical_key()).unwrap(), key);
        }

        #[test]
        fn equivalent_spellings_share_a_canonical_form(
            params in arb_params(),
            order in proptest::collection::vec(0usize..16, 0..9),
            spell_defaults in any::<bool>(),
        ) {
            let loose = loose_spelling(&params, &order, spell_defaults);
            let parsed: Params = loose.parse().unwrap();
            prop_assert_eq!(parsed.canonical(), params.canonical());
        }

        #[test]
        fn extension_case_never_changes_the_canonical_form(
            params in arb_params(),
            mask in any::<u8>(),
        ) {
            let canonical = params.canonical();
            let shouted: String = canonical
                .char_indices()
                .map(|(i, c)| {
                    let in_ext = canonical[..i].contains('.');
                    if in_ext && mask & (1 << (i % 8)) != 0 { c.to_ascii_uppercase() } else { c }
                })
                .collect();
            let reparsed: Params = shouted.parse().unwrap();
            prop_assert_eq!(reparsed.canonical(), canonical);
        }

        #[test]
        fn parsing_never_panics(s in ".{0,40}") {
            let _ = s.parse::<Params>();
            let _ = VariantKey::parse(&s);
        }
    }
}
