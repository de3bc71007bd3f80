#!/usr/bin/env bash
# Fetches prometheus-operator's CRDs for PrometheusRule, ServiceMonitor and PodMonitor
# ($PROMETHEUS_OPERATOR_VERSION, pinned in versions.sh) from the module's zip on the Go module
# proxy (`go mod download`: its example/prometheus-operator-crd/ directory) into a cache outside
# the work tree, $CELLSTACK_CACHE/prometheus-operator/$PROMETHEUS_OPERATOR_VERSION/crds. A cached
# copy is reused. e2e/tests/alerts.rs validates the chart's monitoring objects against them on a
# real API server.
#
#   e2e/scripts/fetch-prometheus-operator-crds.sh               fetch if missing
#   e2e/scripts/fetch-prometheus-operator-crds.sh --print-path  the same, then print the directory
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=versions.sh
. "$here/versions.sh"
log_prefix=prometheus-operator-crds
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

print_path_args "$@"

kinds=(prometheusrules servicemonitors podmonitors)
done_() { done_at "$PROMETHEUS_OPERATOR_CRDS"; }
cached() {
  local kind
  for kind in "${kinds[@]}"; do
    [ -s "$PROMETHEUS_OPERATOR_CRDS/monitoring.coreos.com_$kind.yaml" ] || return 1
  done
}

if cached; then
  log "prometheus-operator $PROMETHEUS_OPERATOR_VERSION CRDs cached in $PROMETHEUS_OPERATOR_CRDS"
  done_
fi
command -v go >/dev/null || die "go is required to fetch prometheus-operator's CRDs (the Go module proxy)"
mkdir -p "$PROMETHEUS_OPERATOR_CRDS"
exec 9>"$PROMETHEUS_OPERATOR_CRDS/../.lock"
flock 9
if cached; then done_; fi

module=github.com/prometheus-operator/prometheus-operator
log "downloading $module@$PROMETHEUS_OPERATOR_VERSION through the Go module proxy"
dir="$(GOFLAGS=-mod=mod go mod download -json "$module@$PROMETHEUS_OPERATOR_VERSION" \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error", "no Dir")))')"
tmp="$(mktemp -d "$PROMETHEUS_OPERATOR_CRDS/.fetch.XXXXXX")"
for kind in "${kinds[@]}"; do
  src="$dir/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml"
  [ -s "$src" ] || die "$src is missing from $module@$PROMETHEUS_OPERATOR_VERSION"
  cp "$src" "$tmp/"
done
mv "$tmp"/*.yaml "$PROMETHEUS_OPERATOR_CRDS/"
rmdir "$tmp"
log "prometheus-operator $PROMETHEUS_OPERATOR_VERSION CRDs in $PROMETHEUS_OPERATOR_CRDS"
done_
