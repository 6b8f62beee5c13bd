//! One grammar, two languages: `src/viewer.rs` and `edge/js/viewer-request.js` must give
//! the same answer (pass, canonical URI, or status and message) for every request.
//!
//! Node runs the function once, in the CloudFront-like sandbox of `tests/viewer/`, over
//! JSON lines (`tests/viewer/harness.js`); the corpus is seeded, so a failure repeats. No
//! `node` on the PATH is a failure, not a skip.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)] // test code

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use edgethumb::viewer::{ViewerGuard, ViewerOutcome, encode_key, sign_url};
use serde_json::{Value, json};

const SECRET_A: &str = "secret-2026a-0123456789";
const SECRET_B: &str = "secret-2026b-9876543210";
const GENERATED_PER_GUARD: [usize; 3] = [10_000, 2_500, 2_500];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// SplitMix64: a seeded, dependency-free generator, so every run sees the same corpus.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
}

const ORIGINALS: &[&str] = &[
    "cat.jpg",
    "photos/cat.JPG",
    "a b/été.png",
    "猫/写真.webp",
    "users/me@example.com/a.gif",
    "emoji😀.jpeg",
    "x%y+z(1)!*'.png",
    "noext",
    "dir.png/noext",
    "zw\u{200b}j.png",
    "comb\u{301}.jpg",
    "bell\u{7}.jpg",
    "quote\"back\\slash.png",
    "nbsp\u{a0}.webp",
    "tag\u{e0041}.jpg",
    "nonchar\u{fffe}.jpg",
    "/lead.jpg",
    "",
    "dir/",
    "a@b@c.jpg",
    "~._-",
];

const NUMBERS: &[&str] = &[
    "",
    "0",
    "1",
    "2",
    "3",
    "00",
    "0200",
    "200",
    "4096",
    "4097",
    "100",
    "101",
    "1000",
    "1001",
    "80",
    "99999999999999999999",
    "4294967296",
    "4294967295",
    "-5",
    "+5",
    "1.5",
    "٣",
    "２",
    "1 0",
];
const LETTERS: &[&str] = &[
    "w", "h", "e", "c", "l", "p", "q", "r", "w", "h", "q", "e", "x", "W", "H", "é", "😀", "",
    "\u{301}", "_", "@", ".",
];
const EXTENSIONS: &[&str] = &[
    "", "", "", ".jpg", ".JPG", ".jpeg", ".JpEg", ".png", ".PNG", ".webp", ".WEBP", ".WebP",
    ".auto", ".AUTO", ".Auto", ".auto", ".gif", ".", ".jpg.png", ".aut0", ".webp ", ".ａuto",
    ".AuTo", "..", ".jpg@x",
];
const ACCEPTS: &[&str] = &[
    "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
    "image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",
    "image/webp,image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5",
    "image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;q=0.8,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",
    "image/png, image/svg+xml, image/*; q=0.8, */*; q=0.5",
    "*/*",
    "",
    "image/webp;q=0",
    "image/WEBP",
    " image/webp\t",
    "image/avif;q=0.000",
    "image/webp;q=0.0001",
    "image/webp\t;\tQ = 0",
    "image/webp;q=0,image/webp;q=1",
    "text/html,image/webp;level=1",
    "image/avif",
    "image/webp;q=0.",
    "image/webp;q=00",
    "image/webp;q",
    "image/webp;=0",
    "image/webp\u{feff}",
    "İmage/webp",
];
const CORRUPTIONS: &[&str] = &[
    "%FF",
    "%C3",
    "%E2%82",
    "%zz",
    "%4",
    "%",
    "%ED%A0%80",
    "%C0%AF",
    "%F4%90%80%80",
    "%25",
    "%2F",
    "%40",
    "%2e",
    "?",
    "#",
];

/// A spelling the grammar likely accepts: distinct known letters, in-range numbers (some
/// with leading zeros or defaults), any order, any extension case.
fn gen_valid_spec(rng: &mut Rng) -> String {
    let mut tokens: Vec<String> = Vec::new();
    for (letter, values) in [
        ("w", &["1", "200", "0200", "4096", "640"][..]),
        ("h", &["1", "150", "4096", "0480"][..]),
        ("e", &["0", "1", "2"][..]),
        ("c", &["0", "1"][..]),
        ("l", &["0", "1"][..]),
        ("p", &["1", "50", "100", "1000", "0100"][..]),
        ("q", &["1", "80", "100", "075"][..]),
        ("r", &["0", "1"][..]),
    ] {
        if rng.chance(45) {
            tokens.push(format!("{}{letter}", values[rng.below(values.len())]));
        }
    }
    for i in (1..tokens.len()).rev() {
        tokens.swap(i, rng.below(i + 1));
    }
    let mut spec = tokens.join("_");
    spec.push_str(rng.pick(&[
        "", ".jpg", ".JPG", ".jpeg", ".png", ".Png", ".webp", ".WebP", ".auto", ".AUTO",
    ]));
    if spec.is_empty() {
        spec.push_str("100p");
    }
    spec
}

fn gen_spec(rng: &mut Rng) -> String {
    if rng.chance(50) {
        return gen_valid_spec(rng);
    }
    let mut tokens: Vec<String> = Vec::new();
    for _ in 0..rng.below(6) {
        let token = if rng.chance(3) {
            String::new()
        } else {
            format!("{}{}", rng.pick(NUMBERS), rng.pick(LETTERS))
        };
        tokens.push(token);
    }
    let mut spec = tokens.join("_");
    if rng.chance(5) {
        spec = format!("_{spec}");
    }
    spec.push_str(rng.pick(EXTENSIONS));
    spec
}

fn gen_key(rng: &mut Rng) -> String {
    let mut key = rng.pick(ORIGINALS).to_string();
    if rng.chance(10) {
        key = format!("{key}@{}", gen_spec(rng));
    }
    if !rng.chance(5) {
        key.push('@');
        key.push_str(&gen_spec(rng));
    }
    key
}

/// Spell a decoded key as a raw URI: characters raw or as `%XX` (either hex case), plus
/// now and then a broken or surprising escape.
fn gen_uri(rng: &mut Rng, key: &str) -> String {
    let mut uri = String::from(match rng.below(20) {
        0 => "",
        1 => "//",
        _ => "/",
    });
    let encode_all = rng.chance(30);
    let corrupt = rng.chance(25);
    for c in key.chars() {
        if corrupt && rng.chance(5) {
            uri.push_str(rng.pick(CORRUPTIONS));
        }
        if encode_all || rng.chance(15) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                if rng.chance(50) {
                    uri.push_str(&format!("%{b:02X}"));
                } else {
                    uri.push_str(&format!("%{b:02x}"));
                }
            }
        } else {
            uri.push(c);
        }
    }
    uri
}

fn gen_accept(rng: &mut Rng) -> Option<String> {
    if rng.chance(10) {
        None
    } else {
        Some(rng.pick(ACCEPTS).to_string())
    }
}

/// One request for both implementations.
struct Case {
    guard: usize,
    uri: String,
    query: String,
    accept: Option<String>,
}

fn outcome_json(outcome: &ViewerOutcome) -> Value {
    match outcome {
        ViewerOutcome::PassThrough => json!({ "status": 0 }),
        ViewerOutcome::Rewrite { uri } => json!({ "status": 200, "uri": uri, "query": 0 }),
        ViewerOutcome::Reject { status, message } => {
            json!({ "status": status, "message": message })
        }
    }
}

fn guards() -> Vec<BTreeMap<String, String>> {
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    vec![
        map(&[]),
        map(&[
            ("guard", "signed"),
            ("key:2026a", SECRET_A),
            ("key:2026b", SECRET_B),
        ]),
        map(&[
            ("guard", "list"),
            ("preset:thumb", "200h_200w_1e.auto"),
            ("preset:hero", "1600w.jpg"),
            ("preset:Big_1", "1r_80q.AUTO"),
            ("allow:200w", "1"),
            ("allow:200w.webp", "1"),
            ("allow:400w.auto", "1"),
            ("allow:100p", "1"),
            ("allow:.png", "1"),
        ]),
    ]
}

/// The existing vectors of src/variant.rs's tests, as keys.
fn variant_vectors() -> Vec<String> {
    let specs = [
        "200w_200h_1e_80q.webp",
        "80q_1e_200h_200w.jpeg",
        "200w_200h_1e_80q.jpg",
        "200w_0e_0c_0l_100p_0r",
        "200w_1e",
        "200w_200h_1c",
        "200w_200h_1e_1c",
        "200w_90q.png",
        "200w_1r.webp",
        "200w_1r",
        "0200w",
        ".png",
        "100p",
        "200w_80q",
        "200w",
        "200x",
        "5000w",
        "0w",
        "0h",
        "3e",
        "2c",
        "0p",
        "1001p",
        "0q",
        "101q",
        "2r",
        "2l",
        "200w_300w",
        "w",
        "-5w",
        "99999999999999999999w",
        "200w.gif",
        "200w.",
        "200w__200h",
        "_200w",
        "200W",
        "2 0w",
        "1x",
        "1w_2w",
        "1w__2h",
        "",
        "200w.JPG",
        "200w.JPEG",
        "200w.WebP",
        ".Png",
        "200W.x",
        "200w.GIF",
        "200w.auto",
        "200w.AUTO",
        ".Auto",
        "80q_1r_200w.AUTO",
        "200x.auto",
        "200w.autox",
    ];
    let mut keys: Vec<String> = specs
        .iter()
        .map(|s| format!("photos/cat.jpg@{s}"))
        .collect();
    keys.extend(
        [
            "photos/cat.jpg@200w_200h_1e_80q.webp",
            "users/me@example.com/a@b.jpg@100w",
            "@200w",
            "photos/@200w",
            "photos/cat.jpg",
            "a.jpg@",
            "Photos/Cat.JPG@200w.WEBP",
            "u/me@x.com/a.png@400W_1e.auto",
            "u/me@x.com/a.png@1e_400w.auto",
            "dir/@200w.auto",
        ]
        .map(String::from),
    );
    keys
}

/// Code points Rust's `{:?}` escapes as `\u{..}` (from U+0080), as inclusive ranges.
fn rust_escaped_ranges() -> Vec<(u32, u32)> {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for cp in 0x80u32..=0x10FFFF {
        let Some(c) = char::from_u32(cp) else {
            continue;
        };
        if format!("{:?}", c.to_string()).contains("\\u{") {
            match ranges.last_mut() {
                Some(r) if r.1 + 1 == cp || (r.1 == 0xD7FF && cp == 0xE000) => r.1 = cp,
                _ => ranges.push((cp, cp)),
            }
        }
    }
    ranges
}

/// The encoding viewer-request.js decodes: (gap, length-1) per range, each a base-32
/// number written most significant digit first, continuation digits offset by 32.
fn encode_ranges(ranges: &[(u32, u32)]) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+/";
    let mut out = String::new();
    let mut push = |v: u32| {
        let mut digits = vec![v & 31];
        let mut rest = v >> 5;
        while rest > 0 {
            digits.push(rest & 31);
            rest >>= 5;
        }
        digits.reverse();
        let last = digits.len() - 1;
        for (i, d) in digits.into_iter().enumerate() {
            let d = if i < last { d + 32 } else { d };
            out.push(ALPHABET[d as usize] as char);
        }
    };
    let mut end = 0x7f;
    for &(a, b) in ranges {
        push(a - end - 1);
        push(b - a);
        end = b;
    }
    out
}

fn run_node(lines: &[Value]) -> (Vec<Value>, Value) {
    let mut child = Command::new("node")
        .arg(root().join("tests/viewer/harness.js"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node must be on the PATH (Node.js >= 20) for the differential test");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let writer = std::thread::spawn(move || {
        stdin.write_all(input.as_bytes()).expect("write to node");
    });
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut out: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(&l.expect("read from node")).expect("node printed JSON"))
        .collect();
    writer.join().expect("writer thread");
    assert!(child.wait().expect("node exit").success(), "harness failed");
    let done = out.pop().expect("a final summary line");
    assert_eq!(done["done"], true, "{done}");
    (out, done)
}

fn corpus() -> Vec<Case> {
    let mut rng = Rng(0x5EED_0014);
    let guards = guards();
    let mut cases = Vec::new();
    for key in variant_vectors() {
        for accept in [None, Some(ACCEPTS[0]), Some("*/*")] {
            for guard in 0..guards.len() {
                cases.push(Case {
                    guard,
                    uri: format!("/{}", encode_key(&key)),
                    query: String::new(),
                    accept: accept.map(String::from),
                });
            }
        }
    }
    // Every boundary of the escape table, inside a token, so the 400 message shows it.
    for (a, b) in rust_escaped_ranges() {
        for cp in [a - 1, a, b, b + 1] {
            if let Some(c) = char::from_u32(cp) {
                cases.push(Case {
                    guard: 0,
                    uri: format!("/x.jpg@2{}0w", encode_key(&c.to_string())),
                    query: String::new(),
                    accept: None,
                });
            }
        }
    }
    for (guard, &count) in GENERATED_PER_GUARD.iter().enumerate() {
        for _ in 0..count {
            let mut key = gen_key(&mut rng);
            if guard == 2 && rng.chance(20) {
                let name = rng.pick(&["thumb", "hero", "Big_1", "thumbs", "w", "x-1"]);
                key = format!("{}@{name}", rng.pick(ORIGINALS));
            }
            let uri = gen_uri(&mut rng, &key);
            let query = match (guard, rng.below(5)) {
                (1, 0) => String::new(),
                (1, 1 | 2) => signed_query(&uri, "2026a", SECRET_A),
                (1, 3) => signed_query(&uri, "2026b", SECRET_A),
                (1, _) => rng
                    .pick(&["k=2025z&s=abc", "k=&s=", "s=x", "k=2026a", "k=2026a&s=%41"])
                    .to_string(),
                _ => rng.pick(&["", "", "x=1", "k=2026a&s=abc"]).to_string(),
            };
            cases.push(Case {
                guard,
                uri,
                query,
                accept: gen_accept(&mut rng),
            });
        }
    }
    cases
}

/// The query string of Rust's signed URL for `uri`, or a junk one when it cannot be signed.
fn signed_query(uri: &str, key_id: &str, secret: &str) -> String {
    match sign_url(uri, key_id, secret.as_bytes()) {
        Ok(url) => url
            .split_once('?')
            .map(|(_, q)| q.to_string())
            .unwrap_or_default(),
        Err(_) => format!("k={key_id}&s=unsignable"),
    }
}

#[test]
fn rust_and_the_cloudfront_function_agree_on_every_key() {
    let settings = guards();
    let rust_guards: Vec<ViewerGuard> = settings
        .iter()
        .map(|s| ViewerGuard::from_settings(s).expect("valid settings"))
        .collect();
    let cases = corpus();
    let generated: usize = GENERATED_PER_GUARD.iter().sum();
    assert!(generated >= 10_000);
    let mut lines = Vec::with_capacity(cases.len() + 4);
    let mut current = usize::MAX;
    for case in &cases {
        if case.guard != current {
            current = case.guard;
            lines.push(json!({ "kvs": settings[current] }));
        }
        lines.push(json!({ "uri": case.uri, "query": case.query, "accept": case.accept }));
    }
    let (out, done) = run_node(&lines);
    assert_eq!(out.len(), lines.len(), "one answer per line");
    let mut statuses: BTreeMap<u64, usize> = BTreeMap::new();
    let mut rust_ns: Vec<u128> = Vec::with_capacity(cases.len());
    let mut answers = out
        .iter()
        .zip(&lines)
        .filter(|(_, l)| l.get("uri").is_some());
    for case in &cases {
        let (js, _) = answers.next().expect("an answer per case");
        let started = std::time::Instant::now();
        let evaluated =
            rust_guards[case.guard].evaluate(&case.uri, &case.query, case.accept.as_deref());
        rust_ns.push(started.elapsed().as_nanos());
        let rust = outcome_json(&evaluated);
        assert_eq!(
            &rust, js,
            "Rust and JS disagree on uri {:?} query {:?} accept {:?} (guard {})",
            case.uri, case.query, case.accept, case.guard
        );
        *statuses
            .entry(rust["status"].as_u64().unwrap_or(999))
            .or_default() += 1;
    }
    // The corpus must exercise every outcome, or agreeing would prove little.
    for status in [0, 200, 400, 403] {
        assert!(
            statuses.get(&status).copied().unwrap_or(0) >= 100,
            "too few {status}s: {statuses:?}"
        );
    }
    rust_ns.sort_unstable();
    println!(
        "viewer differential: {} cases {:?}; JS median {} ns per call (Rust, test profile: {} ns) over {} calls; code {} bytes",
        cases.len(),
        statuses,
        done["median_ns"],
        rust_ns[rust_ns.len() / 2],
        done["calls"],
        done["code_bytes"]
    );
}

#[test]
fn signatures_cross_between_rust_and_javascript() {
    let settings = guards();
    let signed = ViewerGuard::from_settings(&settings[1]).expect("valid settings");
    let mut rng = Rng(0xC0FF_EE14);
    let mut paths = Vec::new();
    while paths.len() < 300 {
        let key = gen_key(&mut rng);
        let uri = gen_uri(&mut rng, &key);
        if !uri.contains(['?', '#']) && sign_url(&uri, "2026a", SECRET_A.as_bytes()).is_ok() {
            paths.push(uri);
        }
    }
    let mut lines = vec![json!({ "kvs": settings[1] })];
    let mut rust_urls = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let (id, secret) = if i % 2 == 0 {
            ("2026a", SECRET_A)
        } else {
            ("2026b", SECRET_B)
        };
        let url = sign_url(path, id, secret.as_bytes()).expect("signable");
        let (signed_path, query) = url.split_once('?').expect("a query");
        lines.push(json!({ "uri": signed_path, "query": query, "accept": "image/webp" }));
        lines.push(json!({ "sign": { "path": path, "key_id": id, "secret": secret } }));
        rust_urls.push(url);
    }
    let (out, _) = run_node(&lines);
    for (i, url) in rust_urls.iter().enumerate() {
        let verified = &out[1 + 2 * i];
        assert_eq!(
            verified["status"], 200,
            "JS refused Rust's signed URL {url}: {verified}"
        );
        let js_url = out[2 + 2 * i]["url"].as_str().expect("JS signed it");
        assert_eq!(js_url, url, "signed URLs differ for {:?}", paths[i]);
        let (path, query) = js_url.split_once('?').expect("a query");
        assert!(
            matches!(
                signed.evaluate(path, query, Some("image/webp")),
                ViewerOutcome::Rewrite { .. }
            ),
            "Rust refused JS's signed URL {js_url}"
        );
    }
}

#[test]
fn the_escape_table_in_javascript_is_rusts() {
    let source = std::fs::read_to_string(root().join("edge/js/viewer-request.js"))
        .expect("edge/js/viewer-request.js");
    let table = source
        .split_once("const T = '")
        .and_then(|(_, rest)| rest.split_once('\''))
        .map(|(table, _)| table)
        .expect("a `const T = '...'` line");
    let expected = encode_ranges(&rust_escaped_ranges());
    assert!(
        table == expected,
        "this Rust's Debug escaping changed (new Unicode tables?): set T in \
         viewer-request.js to\n{expected}"
    );
}
