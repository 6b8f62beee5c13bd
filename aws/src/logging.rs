//! Log output shared by every Lambda entry point.

/// JSON log lines on stdout, which Lambda (and Lambda@Edge, in the region that served the
/// request) sends to CloudWatch. `RUST_LOG` overrides the level where there is an
/// environment; at the edge there is none, so it is `info`, with the AWS SDK's chatter off.
pub fn init_json_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,aws_config=warn,aws_smithy_runtime=warn")
    });
    // Already installed (a second init, tests, or a host that set its own) is fine.
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init();
}
