//! `cellstack-router`: the router binary.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = cellstack_router::config::Config::parse();
    cellstack_runtime::init_tracing(config.log_json);
    match cellstack_router::run::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cellstack-router: {error:#}");
            ExitCode::FAILURE
        }
    }
}
