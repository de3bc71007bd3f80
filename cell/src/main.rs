//! `cellstack-cell`: the cell runtime binary.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = cellstack_cell::config::Config::parse();
    cellstack_runtime::init_tracing(config.log_json);
    match cellstack_cell::run::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("cellstack-cell: {error:#}");
            ExitCode::FAILURE
        }
    }
}
