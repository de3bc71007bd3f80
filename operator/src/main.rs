//! `cellstack-operator` binary: parses the configuration and runs until a signal.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = cellstack_operator::config::Config::parse();
    let telemetry = cellstack_runtime::telemetry::init(config.log_json, "cellstack-operator");
    let result = cellstack_operator::run::run(config).await;
    // Blocks until the queued spans are sent (bounded by the exporter's timeout).
    tokio::task::block_in_place(|| telemetry.shutdown());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("cellstack-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
