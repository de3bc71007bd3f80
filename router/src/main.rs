//! `cellstack-router`: placeholder until issue 6 builds it. It refuses to run rather than pretend.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "cellstack-router {}: not implemented yet (issue 6); the API it will serve is cellstack.dev/{}",
        env!("CARGO_PKG_VERSION"),
        cellstack_api::v1alpha1::VERSION,
    );
    ExitCode::from(2)
}
