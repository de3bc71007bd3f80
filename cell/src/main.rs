//! `cellstack-cell`: the cell runtime binary, and (`cellstack-cell datastore-init ...`) the init
//! container of a cell's managed Redis pods.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    // A subcommand by hand: the runtime's flags (some required) stay top-level, as the
    // operator's lanes pass them.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "datastore-init")
    {
        let args = cellstack_cell::datastore_init::Args::parse_from(std::env::args_os().skip(1));
        return match cellstack_cell::datastore_init::run(args).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("cellstack-cell datastore-init: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let config = cellstack_cell::config::Config::parse();
    let telemetry = cellstack_runtime::telemetry::init(config.log_json, "cellstack-cell");
    let result = cellstack_cell::run::run(config).await;
    // Blocks until the queued spans are sent (bounded by the exporter's timeout).
    tokio::task::block_in_place(|| telemetry.shutdown());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("cellstack-cell: {error:#}");
            ExitCode::FAILURE
        }
    }
}
