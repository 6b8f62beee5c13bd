//! `edgethumb.node`: the Lambda@Edge origin-response handler as a Node.js addon.
//!
//! Lambda@Edge runs only Node.js or Python, so `index.mjs` loads this addon, calls [`init`]
//! once per container (cold start) and [`handle`] per event. All logic is in
//! `edgethumb::edge` (wired to AWS by `edgethumb_aws::edge`); this file only crosses the FFI boundary, and never lets a panic or an
//! unexpected error cross it.

use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;

use edgethumb_aws::edge::{self as service, EdgeService};
use futures::FutureExt as _;
use napi::bindgen_prelude::{Error, Result, Status};
use napi_derive::napi;

/// One service per container: config, S3 client cache and SQS client are built once and
/// reused by every event the container handles.
static SERVICE: OnceLock<EdgeService> = OnceLock::new();

/// Our own Tokio runtime, created when node loads the addon: one I/O worker is enough for a
/// handler that serves one event at a time, and rendering runs on the blocking pool anyway.
/// If building it fails, napi falls back to its default runtime.
#[napi_derive::module_init]
fn create_runtime() {
    if let Ok(runtime) = service::edge_runtime() {
        napi::bindgen_prelude::create_custom_tokio_runtime(runtime);
    }
}

/// Read `edgethumb.json` and build the clients. Throws (at import of `index.mjs`, so at cold
/// start) with a message naming the file and the problem; calling it again is a no-op.
#[napi(catch_unwind)]
pub fn init(config_path: String) -> Result<()> {
    if SERVICE.get().is_some() {
        return Ok(());
    }
    service::init_json_logs();
    let built = napi::bindgen_prelude::block_on(EdgeService::from_config_file(
        std::path::Path::new(&config_path),
    ))
    .map_err(|e| Error::new(Status::InvalidArg, format!("edgethumb: {e}")))?;
    // A concurrent init (not possible in Lambda, one event at a time) would just drop ours.
    let _ = SERVICE.set(built);
    Ok(())
}

/// Handle one origin-response event (its JSON). Resolves to the generated response's JSON,
/// or `null` for "return CloudFront's response unchanged". Never rejects for a request
/// problem: those are HTTP responses; a panic becomes a 500 response and a log line.
#[napi]
pub async fn handle(event_json: String) -> Result<Option<String>> {
    let Some(service) = SERVICE.get() else {
        return Err(Error::new(
            Status::GenericFailure,
            "edgethumb: handle() called before init()",
        ));
    };
    let outcome = AssertUnwindSafe(service.handle_json(&event_json))
        .catch_unwind()
        .await;
    Ok(outcome.unwrap_or_else(|panic| Some(service::panic_response(panic.as_ref()))))
}
