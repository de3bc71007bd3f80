#!/usr/bin/env bash
# The closing line of a `cargo test --no-fail-fast` run: every test binary's results summed, as
#   N passed, M failed, K skipped
# (K: ignored tests). It agrees with the run's exit status:
#   - a binary that ended without its `test result:` line (crashed, aborted, killed) counts its
#     tests that finished as they finished, plus one failure for the binary, at least;
#   - a binary whose summary says 0 failed but that exited non-zero (a harness whose teardown
#     failed after its tests) counts one failure;
#   - a build that failed counts one failure;
#   - given STATUS, a non-zero status with no failure counted above counts one.
#
# Usage: e2e/scripts/test-summary.sh LOG [STATUS]
# Self-tested by e2e/tests/test_summary.rs on the logs in e2e/tests/fixtures/.
set -euo pipefail
log="${1:?usage: test-summary.sh LOG [STATUS]}"
status="${2:-0}"
[ -r "$log" ] || { echo "test-summary: cannot read $log" >&2; exit 2; }

awk -v status="$status" '
  function field(line, word,   re) {
    re = "[0-9]+ " word
    if (match(line, re)) return substr(line, RSTART, RLENGTH) + 0
    return 0
  }
  # A new test binary starts: cargo announces each one.
  /^[[:space:]]+(Running|Doc-tests) / { in_bin = 1; summarized = 0; bin_failed = 0; ok = 0; bad = 0; ign = 0; next }
  /^test .* \.\.\. ok$/ { ok++ }
  /^test .* \.\.\. FAILED$/ { bad++ }
  /^test .* \.\.\. ignored(, .*)?$/ { ign++ }
  /^test result: / {
    p += field($0, "passed"); bin_failed = field($0, "failed"); f += bin_failed
    s += field($0, "ignored"); summarized = 1; next
  }
  # cargo: this binary exited non-zero.
  /^error: test failed, to rerun pass / {
    if (!in_bin) { f++; next }
    if (!summarized) {
      p += ok; s += ign; f += (bad > 0 ? bad : 1)
      crashed++
    } else if (bin_failed == 0) {
      f++; teardown++
    }
    in_bin = 0; next
  }
  /^error: could not compile / { f++; build++ }
  END {
    if (crashed) printf "test-summary: %d test binaries ended without their summary (crashed or killed)\n", crashed > "/dev/stderr"
    if (teardown) printf "test-summary: %d test binaries passed their tests but exited non-zero (teardown?)\n", teardown > "/dev/stderr"
    if (build) printf "test-summary: the build failed\n" > "/dev/stderr"
    if (status != 0 && f == 0) {
      printf "test-summary: the run exited %d outside any test: counted as one failure\n", status > "/dev/stderr"
      f = 1
    }
    printf "%d passed, %d failed, %d skipped\n", p, f, s
  }
' "$log"
