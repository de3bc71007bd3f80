//! `cellstack-router`: the router binary.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let config = cellstack_router::config::Config::parse();
    cellstack_runtime::init_tracing(config.log_json);
    // A worker per core (or `TOKIO_WORKER_THREADS`) unless told. A single-threaded runtime was
    // measured slower than two workers on a 2-core machine shared with the load and the cell.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        builder.worker_threads(config.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("cellstack-router: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cellstack_router::run::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cellstack-router: {error:#}");
            ExitCode::FAILURE
        }
    }
}
