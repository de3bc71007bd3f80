//! Writes the generated CRD YAML (`crds/*.yaml`), or with `--check` fails when the files on disk
//! differ from what the types generate.

use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let files = match cellstack_api::crd::files() {
        Ok(files) => files,
        Err(err) => {
            eprintln!("crdgen: cannot render the CRDs: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut stale = vec![];
    for (name, yaml) in &files {
        let path = dir.join(name);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk == *yaml {
            continue;
        }
        if check {
            stale.push(path.display().to_string());
        } else if let Err(err) = std::fs::write(&path, yaml) {
            eprintln!("crdgen: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("wrote {}", path.display());
        }
    }
    if !stale.is_empty() {
        eprintln!(
            "crdgen: generated CRDs are stale: {}\nrun `cargo run -p cellstack-api --bin crdgen` and commit the result",
            stale.join(", ")
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
