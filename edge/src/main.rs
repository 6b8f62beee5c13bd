//! The edge handler as a regular `lambda_runtime` function: a regional deployment (which,
//! unlike Lambda@Edge, has environment variables) and local runs with sample events
//! (`cargo lambda watch` + `cargo lambda invoke --data-file events/...`).
//!
//! Configuration: `EDGETHUMB_CONFIG` (path to an edgethumb.json) or `EDGETHUMB_CONFIG_JSON`
//! (the JSON itself), read once at cold start.

use std::sync::Arc;

use edgethumb_aws::edge::{self as service, EdgeService};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

fn main() -> Result<(), Error> {
    service::init_json_logs();
    service::edge_runtime()?.block_on(async {
        let service = Arc::new(EdgeService::from_env().await?);
        lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
            let service = Arc::clone(&service);
            async move { Ok::<Value, Error>(service.handle_value(event.payload).await) }
        }))
        .await
    })
}
