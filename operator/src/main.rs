//! `cellstack-operator` binary: parses the configuration and runs until a signal.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = cellstack_operator::config::Config::parse();
    cellstack_runtime::init_tracing(config.log_json);
    match cellstack_operator::run::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("cellstack-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
