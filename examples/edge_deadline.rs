//! How long a pathological but legal miss takes to answer at the edge's minimum render
//! deadline: a big JPEG asked for as a 4096×4096 PNG, through the real `EdgeHandler` with
//! in-memory adapters. Prints the status, the wall time to the answer and the handler's own
//! `render_ms`.
//!
//!     cargo run --release -p edgethumb --features edge --example edge_deadline [MP] [DEADLINE_MS]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: a failed unwrap ends the run

use std::sync::Arc;
use std::time::Instant;

use edgethumb::edge::cloudfront::Event;
use edgethumb::edge::{BucketLocation, EdgeConfig, EdgeHandler, EdgeOutcome};
use edgethumb::queue::memory::MemoryQueue;
use edgethumb::store::memory::MemoryStore;
use edgethumb::store::{ObjectStore, PutRequest};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let megapixels: f64 = args.get(1).map_or(76.0, |a| a.parse().unwrap());
    let deadline_ms: u64 = args.get(2).map_or(1000, |a| a.parse().unwrap());
    let width = (megapixels * 1e6 * 4.0 / 3.0).sqrt() as u32;
    let height = width * 3 / 4;
    eprintln!("encoding a {width}x{height} JPEG ...");
    let rgb: Vec<u8> = (0..height)
        .flat_map(|y| {
            (0..width).flat_map(move |x| [(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 256) as u8])
        })
        .collect();
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, 90)
        .encode(
            &rgb,
            width as u16,
            height as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .unwrap();
    drop(rgb);
    let store = Arc::new(MemoryStore::new("photos-bucket"));
    store
        .put("big.jpg", jpeg.into(), PutRequest::default())
        .await
        .unwrap();
    let text = format!(
        r#"{{"queue_url": "memory://jobs", "queue_region": "us-east-1",
            "render_deadline_ms": {deadline_ms}, "max_source_pixels": 200000000,
            "max_source_bytes": 500000000}}"#
    );
    let config = EdgeConfig::from_json(&text, "example").unwrap();
    let s = store.clone();
    let stores = move |_: &BucketLocation| s.clone() as Arc<dyn ObjectStore>;
    let handler = EdgeHandler::new(config, Arc::new(MemoryQueue::new("jobs")), stores);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/events/origin-response-miss-404.json"
    );
    let mut event: Event = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    event.records[0].cf.request.uri = "/big.jpg@4096w_4096h.png".into();
    let started = Instant::now();
    let outcome = handler.handle(&event).await;
    let answered = started.elapsed();
    let EdgeOutcome::Generated { response, timings } = outcome else {
        panic!("pass-through");
    };
    println!(
        "{width}x{height} ({megapixels} MP) -> 4096x4096 PNG, deadline {deadline_ms} ms: status {}, answered after {} ms, render_ms {}",
        response.status,
        answered.as_millis(),
        timings.render.as_millis()
    );
    // Let an uninterruptible step still running in the background finish before exiting.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}
