//! Self-test of the closing line of the README's test command (`e2e/scripts/test-summary.sh`),
//! run on recorded `cargo test --no-fail-fast` logs in `tests/fixtures/`.

use std::{path::Path, process::Command};

/// The summary line the script prints for `fixture`, as if the run had exited with `status`.
fn summary(fixture: &str, status: i32) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/test-summary.sh"))
        .arg(root.join("tests/fixtures").join(fixture))
        .arg(status.to_string())
        .output()
        .expect("bash runs the summary script");
    assert!(
        out.status.success(),
        "the summary script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("the summary is UTF-8")
        .trim_end()
        .to_owned()
}

#[test]
fn ignored_tests_are_counted_as_skipped() {
    assert_eq!(
        summary("cargo-test-clean.log", 0),
        "3 passed, 0 failed, 2 skipped"
    );
}

/// One binary aborts after one passing test, one has a failing test, one passes its tests and
/// then exits 1 (a teardown that failed): each exit cargo reports is one failure at least.
#[test]
fn a_crashed_binary_and_a_failed_teardown_count_as_failed() {
    assert_eq!(
        summary("cargo-test-crash-fail-teardown.log", 101),
        "4 passed, 3 failed, 1 skipped"
    );
}

#[test]
fn a_build_that_failed_counts_as_failed() {
    assert_eq!(
        summary("cargo-test-build-failure.log", 101),
        "0 passed, 1 failed, 0 skipped"
    );
}

#[test]
fn a_non_zero_exit_with_no_failure_in_the_log_counts_one() {
    assert_eq!(
        summary("cargo-test-clean.log", 1),
        "3 passed, 1 failed, 2 skipped"
    );
}
