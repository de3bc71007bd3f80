#!/usr/bin/env bash
# Builds Prometheus and promtool ($PROMETHEUS_VERSION, pinned in versions.sh) through the Go
# module proxy into a cache outside the work tree, $CELLSTACK_CACHE/prometheus/<version>/bin. A
# cached build is reused, so a second run costs nothing.
#
#   e2e/scripts/build-prometheus.sh               build if missing; logs to stderr
#   e2e/scripts/build-prometheus.sh --print-path  the same, then print the bin directory
#
# Why not Debian's prometheus package: Debian 12 builds it without Kubernetes service discovery
# (no kubernetes_sd_configs), which is how the demo's and the suites' Prometheus finds the
# operator, the routers and every lane. The build tags keep only that discovery (Prometheus'
# plugins/ mechanism: remove_all_sd, enable_kubernetes_sd), which also keeps the build small. The
# web UI's assets are an npm build and are not embedded: the HTTP API (what the suites and the
# demo use) works, the UI pages do not.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=versions.sh
. "$here/versions.sh"
log_prefix=build-prometheus
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

print_path_args "$@"

bin_dir="$(dirname "$PROMETHEUS_BIN")"
done_() { done_at "$bin_dir"; }
built() { [ -x "$PROMETHEUS_BIN" ] && [ -x "$PROMTOOL_BIN" ]; }

if built; then
  log "prometheus $PROMETHEUS_VERSION cached in $bin_dir"
  done_
fi
command -v go >/dev/null || die "go is required to build prometheus $PROMETHEUS_VERSION (Go 1.26.7+ on PATH)"
mkdir -p "$bin_dir"
exec 9>"$bin_dir/../.lock"
flock 9
if built; then done_; fi

module=github.com/prometheus/prometheus
log "building $module/cmd/{prometheus,promtool}@$PROMETHEUS_VERSION through the Go module proxy (a few minutes, once)"
# Module v0.MMmm.p is Prometheus vM.mm.p (v0.316.0 is v3.16.0): the version `--version` prints.
[[ "$PROMETHEUS_VERSION" =~ ^v0\.([0-9]+)([0-9]{2})\.([0-9]+)$ ]] ||
  die "cannot tell the Prometheus release of module version $PROMETHEUS_VERSION"
release="${BASH_REMATCH[1]}.$((10#${BASH_REMATCH[2]})).${BASH_REMATCH[3]}"
tmp="$(mktemp -d "$bin_dir/../.build.XXXXXX")"
GOFLAGS=-mod=mod GOBIN="$tmp" go install -trimpath \
  -tags remove_all_sd,enable_kubernetes_sd \
  -ldflags "-X github.com/prometheus/common/version.Version=$release -X github.com/prometheus/common/version.Revision=$module@$PROMETHEUS_VERSION" \
  "$module/cmd/prometheus@$PROMETHEUS_VERSION" "$module/cmd/promtool@$PROMETHEUS_VERSION" >&2
mv "$tmp/prometheus" "$tmp/promtool" "$bin_dir/"
rmdir "$tmp"
log "prometheus and promtool $PROMETHEUS_VERSION built in ${SECONDS}s, in $bin_dir"
done_
