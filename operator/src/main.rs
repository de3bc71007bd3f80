//! `cellstack-operator` binary: parses the configuration and runs until a signal.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before the runtime's threads exist: an arena one of them made first would stay.
    let arenas_limited = cellstack_operator::heap::limit_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cellstack-operator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(arenas_limited))
}

async fn run(arenas_limited: bool) -> ExitCode {
    let config = cellstack_operator::config::Config::parse();
    let telemetry = cellstack_runtime::telemetry::init(config.log_json, "cellstack-operator");
    tracing::debug!(
        arenas = cellstack_operator::heap::ARENAS,
        arenas_limited,
        "malloc arenas (MALLOC_ARENA_MAX, when set, decides instead)"
    );
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
