//! `cellstack-router`: the router binary.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the request path allocates a few small, short-lived buffers per request (headers,
/// body frames), which mimalloc serves with less CPU than glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = cellstack_router::config::Config::parse();
    let telemetry = cellstack_runtime::telemetry::init(config.log_json, "cellstack-router");
    // The control runtime: the admin port, the acceptor and a file table source. Tenant traffic
    // runs on the workers `run` starts (`--worker-threads`, one per core by default), each a
    // single-threaded runtime of its own (see `cellstack_router::serve`); the Kubernetes table
    // sources run on a thread of their own (`sources::start_kubernetes`). Blocking threads,
    // where tables are decoded and persisted, run at a lower priority than the workers.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(cellstack_router::background::lower_priority)
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("cellstack-router: cannot start the async runtime: {error}");
            telemetry.shutdown();
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cellstack_router::run::run(config));
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cellstack-router: {error:#}");
            ExitCode::FAILURE
        }
    }
}
