#!/usr/bin/env bash
# Builds the OpenTelemetry Collector distribution the trace tests and the demo send spans to
# ($OTELCOL_VERSION, pinned in versions.sh, with the components e2e/otelcol/builder-config.yaml
# lists) into a cache outside the work tree, $CELLSTACK_CACHE/otelcol/<version>/bin. It uses the
# collector's own builder (ocb, go.opentelemetry.io/collector/cmd/builder at the same release),
# which generates the distribution's main package and compiles it; every module comes through
# the Go module proxy. A cached build is reused, so a second run costs nothing.
#
#   e2e/scripts/build-otelcol.sh               build if missing; logs to stderr
#   e2e/scripts/build-otelcol.sh --print-path  the same, then print the bin directory
#
# Why not Debian's package: Debian 12 has no OpenTelemetry Collector.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=versions.sh
. "$here/versions.sh"
log_prefix=build-otelcol
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

print_path_args "$@"

manifest="$here/../otelcol/builder-config.yaml"
bin_dir="$(dirname "$OTELCOL_BIN")"
done_() { done_at "$bin_dir"; }
# A build is reused only for the manifest it was built from.
stamp="$bin_dir/manifest.sha256"
want="$(sha256sum "$manifest" | cut -d' ' -f1)"
built() { [ -x "$OTELCOL_BIN" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; }

if built; then
  log "collector $OTELCOL_VERSION cached in $bin_dir"
  done_
fi
command -v go >/dev/null || die "go is required to build the collector $OTELCOL_VERSION (Go 1.26 on PATH)"
grep -q "version: ${OTELCOL_VERSION#v}\$" "$manifest" ||
  die "$manifest does not build release $OTELCOL_VERSION: change both together"
mkdir -p "$bin_dir"
exec 9>"$bin_dir/../.lock"
flock 9
if built; then done_; fi

log "building the collector $OTELCOL_VERSION with its builder through the Go module proxy (a few minutes, once)"
tmp="$(mktemp -d "$bin_dir/../.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
GOBIN="$tmp/tools" go install -trimpath "go.opentelemetry.io/collector/cmd/builder@$OTELCOL_VERSION" >&2
"$tmp/tools/builder" --config "$manifest" --output-path "$tmp/dist" >&2
mv "$tmp/dist/cellstack-otelcol" "$OTELCOL_BIN"
printf '%s\n' "$want" >"$stamp"
log "collector $OTELCOL_VERSION built in ${SECONDS}s, in $bin_dir"
done_
