//! The worker Lambda (provided.al2023, `bootstrap`): SQS batches in, `batchItemFailures`
//! out. All logic is in `edgethumb::worker` (wired to S3 and SQS by `edgethumb_aws::worker`); configuration is read once at cold start
//! (`EDGETHUMB_*` variables, see docs/worker.md), and a bad setting fails the start.

use std::sync::Arc;
use std::time::SystemTime;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use edgethumb_aws::init_json_logs;
use edgethumb_aws::worker::{handle_sqs_event, lambda_worker_from_env};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_json_logs();
    let worker = Arc::new(lambda_worker_from_env().await?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let worker = Arc::clone(&worker);
        async move {
            // The context deadline is wall-clock; the batch wants a monotonic instant.
            let remaining = event
                .context
                .deadline()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let deadline = tokio::time::Instant::now() + remaining;
            Ok::<SqsBatchResponse, Error>(handle_sqs_event(&worker, event.payload, deadline).await)
        }
    }))
    .await
}
