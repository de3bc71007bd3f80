//! `cellstack-router`: placeholder until the request path lands (issue 6). It refuses to run
//! rather than pretend.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "cellstack-router {}: the request path is not built yet (issue 6); the routing-table store is",
        env!("CARGO_PKG_VERSION"),
    );
    ExitCode::from(2)
}
