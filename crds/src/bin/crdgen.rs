//! Writes the generated CRD YAML into every place that carries a copy — `crds/*.yaml` and the Helm
//! chart's `charts/cellstack/crds/*.yaml` — or with `--check` fails when any copy on disk differs
//! from what the types generate.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

/// The directories that hold a copy of the generated CRDs, relative to this crate (`crds/`).
const TARGETS: &[&str] = &[
    ".",
    // Helm installs (never upgrades) what it finds in a chart's `crds/` directory.
    "../charts/cellstack/crds",
];

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let files = match cellstack_api::crd::files() {
        Ok(files) => files,
        Err(err) => {
            eprintln!("crdgen: cannot render the CRDs: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut stale = vec![];
    for target in TARGETS {
        let dir = crate_dir.join(target);
        if let Err(err) = sync(&dir, &files, check, &mut stale) {
            eprintln!("crdgen: {err}");
            return ExitCode::FAILURE;
        }
    }
    if !stale.is_empty() {
        eprintln!(
            "crdgen: generated CRDs are stale or missing: {}\nrun `cargo run -p cellstack-api --bin crdgen` and commit the result",
            stale.join(", ")
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Writes `files` into `dir` where they differ and removes generated files no type generates any
/// more (a renamed kind); with `check` only records those paths in `stale`.
fn sync(
    dir: &Path,
    files: &[(String, String)],
    check: bool,
    stale: &mut Vec<String>,
) -> Result<(), String> {
    if !check {
        std::fs::create_dir_all(dir)
            .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    }
    for (name, yaml) in files {
        let path = dir.join(name);
        let on_disk = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => return Err(format!("cannot read {}: {err}", path.display())),
        };
        if on_disk.as_deref() == Some(yaml.as_str()) {
            continue;
        }
        if check {
            stale.push(display(&path));
        } else {
            std::fs::write(&path, yaml)
                .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
            println!("wrote {}", display(&path));
        }
    }
    for path in leftovers(dir, files)? {
        if check {
            stale.push(format!("{} (no longer generated)", display(&path)));
        } else {
            std::fs::remove_file(&path)
                .map_err(|err| format!("cannot remove {}: {err}", path.display()))?;
            println!("removed {}", display(&path));
        }
    }
    Ok(())
}

/// YAML files in `dir` that carry the generator's header but are not among `files`.
fn leftovers(dir: &Path, files: &[(String, String)]) -> Result<Vec<PathBuf>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(err) => return Err(format!("cannot list {}: {err}", dir.display())),
    };
    let mut found = vec![];
    for entry in entries {
        let path = entry
            .map_err(|err| format!("cannot list {}: {err}", dir.display()))?
            .path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.ends_with(".yaml") || files.iter().any(|(f, _)| f == name) {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        if text.starts_with(cellstack_api::crd::GENERATED_HEADER) {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// `path` without the `crds/../` detour, for messages.
fn display(path: &Path) -> String {
    let mut clean = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    clean.display().to_string()
}
