//! CloudFront's invalidation quotas on the wire, which moto does not enforce: a few lines of
//! `std::net` that answer CreateInvalidation as CloudFront does when the paths in progress
//! on the distribution would exceed 3,000 files or 15 wildcards (`400
//! TooManyInvalidationsInProgress`), and keep each accepted invalidation in progress for a
//! set time. With an upstream (moto) it forwards every accepted request and every other
//! call there, so moto still records the invalidations; without one it answers
//! CreateInvalidation itself (201, CloudFront's XML) and nothing else.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// CloudFront's real error for a full quota (API reference, CreateInvalidation, "Errors").
pub const TOO_MANY: &str = "TooManyInvalidationsInProgress";

#[derive(Debug, Default)]
struct State {
    /// (completes at, file paths, wildcard paths)
    in_progress: Vec<(Instant, usize, usize)>,
    accepted: Vec<Vec<String>>,
    calls: usize,
    throttled: usize,
    peak: (usize, usize),
}

pub struct QuotaCloudFront {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

#[derive(Clone)]
struct Config {
    upstream: Option<String>,
    hold: Duration,
    max_files: usize,
    max_wildcards: usize,
}

impl QuotaCloudFront {
    /// CloudFront's quotas (3,000 files, 15 wildcards in progress), each invalidation in
    /// progress for `hold`; other calls and accepted invalidations go to `upstream`.
    pub fn start(upstream: Option<&str>, hold: Duration) -> Self {
        Self::start_with(upstream, hold, 3_000, 15)
    }

    pub fn start_with(
        upstream: Option<&str>,
        hold: Duration,
        max_files: usize,
        max_wildcards: usize,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let config = Config {
            upstream: upstream.map(|u| {
                u.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string()
            }),
            hold,
            max_files,
            max_wildcards,
        };
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (state, config) = (Arc::clone(&shared), config.clone());
                std::thread::spawn(move || serve(stream, &state, &config));
            }
        });
        QuotaCloudFront { endpoint, state }
    }

    /// Accepted invalidations' paths, in order.
    pub fn accepted(&self) -> Vec<Vec<String>> {
        self.state.lock().unwrap().accepted.clone()
    }

    /// CreateInvalidation calls, accepted or not.
    pub fn calls(&self) -> usize {
        self.state.lock().unwrap().calls
    }

    pub fn throttled(&self) -> usize {
        self.state.lock().unwrap().throttled
    }

    /// The most (file, wildcard) paths in progress at once.
    pub fn peak(&self) -> (usize, usize) {
        self.state.lock().unwrap().peak
    }
}

/// The `<Path>` items of an InvalidationBatch (XML-escaped as the SDK writes them).
fn paths_of(body: &str) -> Vec<String> {
    body.split("<Path>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</Path>").map(|(p, _)| p))
        .map(|p| {
            p.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&")
        })
        .collect()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Admit or refuse one CreateInvalidation under the quotas.
fn admit(state: &Mutex<State>, config: &Config, paths: &[String]) -> Result<usize, String> {
    let mut state = state.lock().unwrap();
    state.calls += 1;
    let now = Instant::now();
    state.in_progress.retain(|(until, _, _)| *until > now);
    let wildcards = paths.iter().filter(|p| p.ends_with('*')).count();
    let files = paths.len() - wildcards;
    let busy_files: usize = state.in_progress.iter().map(|i| i.1).sum();
    let busy_wildcards: usize = state.in_progress.iter().map(|i| i.2).sum();
    if busy_files + files > config.max_files || busy_wildcards + wildcards > config.max_wildcards {
        state.throttled += 1;
        return Err(format!(
            "Processing your request will cause you to exceed the maximum number of in-progress invalidations ({busy_files} file and {busy_wildcards} wildcard paths in progress)"
        ));
    }
    state
        .in_progress
        .push((now + config.hold, files, wildcards));
    state.peak = (
        state.peak.0.max(busy_files + files),
        state.peak.1.max(busy_wildcards + wildcards),
    );
    state.accepted.push(paths.to_vec());
    Ok(state.accepted.len())
}

/// Keep-alive HTTP/1.1: each request read whole (head, then `Content-Length` bytes).
fn serve(stream: TcpStream, state: &Mutex<State>, config: &Config) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = Vec::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if let Some((name, value)) = line.trim_end().split_once(':')
                && name.trim().eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
            let end = line == "\r\n";
            // Forwarded requests ask the upstream to close, so its answer ends at EOF.
            if !line.to_ascii_lowercase().starts_with("connection:") {
                if end {
                    head.extend_from_slice(b"Connection: close\r\n");
                }
                head.extend_from_slice(line.as_bytes());
            }
            if end {
                break;
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request_line = String::from_utf8_lossy(&head)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        let create = request_line.starts_with("POST ") && request_line.contains("/invalidation ");
        let response = if create {
            let text = String::from_utf8_lossy(&body).into_owned();
            let paths = paths_of(&text);
            match admit(state, config, &paths) {
                Err(message) => error_response(&message),
                Ok(n) => match &config.upstream {
                    Some(upstream) => forward(upstream, &head, &body),
                    None => created_response(n, &paths),
                },
            }
        } else {
            match &config.upstream {
                Some(upstream) => forward(upstream, &head, &body),
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
            }
        };
        if writer.write_all(&response).is_err() {
            return;
        }
    }
}

fn forward(upstream: &str, head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut connection = TcpStream::connect(upstream).unwrap();
    connection.write_all(head).unwrap();
    connection.write_all(body).unwrap();
    let mut response = Vec::new();
    connection.read_to_end(&mut response).unwrap();
    response
}

fn created_response(n: usize, paths: &[String]) -> Vec<u8> {
    let items: String = paths
        .iter()
        .map(|p| format!("<Path>{}</Path>", xml_escape(p)))
        .collect();
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Invalidation xmlns=\"http://cloudfront.amazonaws.com/doc/2020-05-31/\"><Id>IFAKE{n}</Id><Status>InProgress</Status><CreateTime>2025-01-01T00:00:00Z</CreateTime><InvalidationBatch><Paths><Quantity>{}</Quantity><Items>{items}</Items></Paths><CallerReference>fake-{n}</CallerReference></InvalidationBatch></Invalidation>",
        paths.len()
    );
    format!(
        "HTTP/1.1 201 Created\r\nContent-Type: text/xml\r\nx-amzn-RequestId: r{n}\r\nLocation: https://cloudfront.amazonaws.com/2020-05-31/distribution/E1/invalidation/IFAKE{n}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// CloudFront's answer to a CreateInvalidation over the quotas: 400, `ErrorResponse` XML.
fn error_response(message: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\"?>\n<ErrorResponse xmlns=\"http://cloudfront.amazonaws.com/doc/2020-05-31/\"><Error><Type>Sender</Type><Code>{TOO_MANY}</Code><Message>{}</Message></Error><RequestId>quota-layer</RequestId></ErrorResponse>",
        xml_escape(message)
    );
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/xml\r\nx-amzn-RequestId: quota-layer\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
