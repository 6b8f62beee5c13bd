//! Any bytes as a CloudFront origin-response event, against an in-memory bucket that holds
//! the originals the sample events name: the handler must answer (or refuse the JSON) without
//! panicking, and whatever it answers must be a response CloudFront would accept.
#![no_main]

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use bytes::Bytes;
use edgethumb::edge::cloudfront::Response;
use edgethumb::edge::{BucketLocation, EdgeConfig, EdgeHandler};
use edgethumb::queue::memory::MemoryQueue;
use edgethumb::store::memory::MemoryStore;
use edgethumb::store::{ObjectStore, PutRequest};
use libfuzzer_sys::fuzz_target;

type StoreFactory = Box<dyn Fn(&BucketLocation) -> Arc<dyn ObjectStore> + Send + Sync>;

struct Rig {
    runtime: tokio::runtime::Runtime,
    handler: EdgeHandler<Arc<MemoryQueue>, StoreFactory>,
}

/// CloudFront's limit for a generated response, body and headers included.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let store = Arc::new(MemoryStore::new("photos-bucket"));
        let photo = Bytes::from_static(include_bytes!("../seeds/cat.jpg"));
        runtime.block_on(async {
            for key in ["photos/cat.jpg", "photos/summer 2026/café & crêpe.jpg"] {
                let request = PutRequest {
                    content_type: "image/jpeg".into(),
                    ..PutRequest::default()
                };
                store
                    .put(key, photo.clone(), request)
                    .await
                    .expect("seed the bucket");
            }
        });
        let config = EdgeConfig::from_json(
            r#"{"queue_url": "memory://jobs", "queue_region": "us-east-1"}"#,
            "fuzz",
        )
        .expect("edge config");
        let stores: StoreFactory =
            Box::new(move |_: &BucketLocation| store.clone() as Arc<dyn ObjectStore>);
        let handler = EdgeHandler::new(config, Arc::new(MemoryQueue::new("jobs")), stores);
        Rig { runtime, handler }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(event) = std::str::from_utf8(data) else {
        return;
    };
    let rig = rig();
    if let Ok(Some(answer)) = rig.runtime.block_on(rig.handler.handle_json(event)) {
        let response: Response = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("the handler answered invalid JSON: {e}"));
        assert!(answer.len() <= MAX_RESPONSE_BYTES, "{} bytes", answer.len());
        if response.body_encoding.as_deref() == Some("base64") {
            let body = response.body.as_deref().unwrap_or_default();
            assert!(
                base64::engine::general_purpose::STANDARD
                    .decode(body)
                    .is_ok(),
                "a base64 body that does not decode"
            );
        }
    }
});
