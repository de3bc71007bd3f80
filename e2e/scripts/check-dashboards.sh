#!/usr/bin/env bash
# Checks the chart's Grafana dashboards (charts/cellstack/dashboards/*.json, or the files given)
# against Grafana's dashboard schema and what the schema does not say (docs/dashboards.md):
#
#   1. schema: the Grafana Foundation SDK's Go types ($GRAFANA_FOUNDATION_SDK_VERSION, through
#      the Go module proxy), decoding each file strictly (no unknown field, no wrong type, no
#      missing required field, in the dashboard, its variables, every panel's options and
#      fieldConfig by panel type, every target as a Prometheus query), then the SDK's Validate
#      (gridPos bounds, ...), and closed enums (e2e/scripts/check-dashboards/main.go);
#   2. plain: unique uids and panel ids, every panel, target and variable on the ${datasource}
#      variable, every target with an expression, no unknown $variable
#      (e2e/scripts/check-dashboards/plain.py);
#   3. PromQL: every expression (targets, query variables, annotations), Grafana's variables
#      replaced by sample values, parsed by `promtool check rules` (the pinned Prometheus build).
#
# The SDK is vendored and the checker built once into
# $CELLSTACK_CACHE/grafana-foundation-sdk/<version> (rebuilt offline when the checker's source
# changes); later runs need no network. Exits 1 naming the file and the offending field when a
# check fails.
#
#   e2e/scripts/check-dashboards.sh                 check charts/cellstack/dashboards/*.json
#   e2e/scripts/check-dashboards.sh FILE...         check these files instead
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=versions.sh
. "$here/versions.sh"
log_prefix=check-dashboards
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  -*) echo "unknown option '$1' (see --help)" >&2; exit 2 ;;
esac

# The SDK's Go module: v0.0.22 is the newest version the module proxy lists (its types follow
# Grafana 12's schemas, like npm's and PyPI's 0.0.x releases). The checksums pin its content.
GRAFANA_FOUNDATION_SDK_VERSION="${GRAFANA_FOUNDATION_SDK_VERSION:-v0.0.22}"
sdk_module=github.com/grafana/grafana-foundation-sdk/go
sdk_sums="$sdk_module v0.0.22 h1:bE+NJ+nE/ouwQaXtPQTz98yIzevuXlyZ4L5pdPLyiC4=
$sdk_module v0.0.22/go.mod h1:48EA8jF85SrReYflLa39Sk34b6NpxwJPBwjF3TJgRpE="

root="$(cd "$here/../.." && pwd)"
if [ "$#" -gt 0 ]; then
  files=("$@")
else
  files=("$root"/charts/cellstack/dashboards/*.json)
fi
for f in "${files[@]}"; do [ -f "$f" ] || die "no such dashboard file: $f"; done

# --- the SDK and the checker, built once ---------------------------------------------------------
cache="$CELLSTACK_CACHE/grafana-foundation-sdk/$GRAFANA_FOUNDATION_SDK_VERSION"
src="$cache/src"
checker="$cache/bin/check-dashboards"
sdk_dir="$src/vendor/$sdk_module"
source_sum="$(sha256sum <"$here/check-dashboards/main.go" | cut -d' ' -f1)"
built() { [ -x "$checker" ] && [ "$(cat "$checker.source-sha256" 2>/dev/null)" = "$source_sum" ] && [ -d "$sdk_dir" ]; }

if ! built; then
  command -v go >/dev/null || die "go is required to build the dashboard checker (Go 1.24+ on PATH)"
  mkdir -p "$cache/bin" "$src"
  exec 9>"$cache/.lock"
  flock 9
  if ! built; then
    cp "$here/check-dashboards/main.go" "$src/main.go"
    if [ ! -d "$sdk_dir" ]; then
      log "vendoring $sdk_module@$GRAFANA_FOUNDATION_SDK_VERSION through the Go module proxy into $src/vendor (once)"
      printf 'module cellstack.dev/check-dashboards\n\ngo 1.24\n\nrequire %s %s\n' \
        "$sdk_module" "$GRAFANA_FOUNDATION_SDK_VERSION" >"$src/go.mod"
      if [ "$GRAFANA_FOUNDATION_SDK_VERSION" = v0.0.22 ]; then
        printf '%s\n' "$sdk_sums" >"$src/go.sum"
      fi
      (cd "$src" && GOFLAGS=-mod=mod go mod tidy >&2 && go mod vendor >&2) ||
        die "vendoring $sdk_module@$GRAFANA_FOUNDATION_SDK_VERSION failed"
    fi
    log "building the dashboard checker against the vendored SDK"
    (cd "$src" && GOFLAGS=-mod=vendor GOPROXY=off go build -trimpath -o "$checker.tmp" . >&2) ||
      die "building the dashboard checker failed"
    mv -f "$checker.tmp" "$checker"
    printf '%s\n' "$source_sum" >"$checker.source-sha256"
  fi
  exec 9>&-
fi

# promtool of the pinned Prometheus build (built once by build-prometheus.sh, or the one the test
# command names).
promtool="${CELLSTACK_PROMTOOL:-}"
if [ -z "$promtool" ]; then
  promtool="$("$here/build-prometheus.sh" --print-path)/promtool"
fi

# --- the checks ----------------------------------------------------------------------------------
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
status=0

log "1/3 Grafana's dashboard schema (grafana-foundation-sdk $GRAFANA_FOUNDATION_SDK_VERSION, strict decoding)"
"$checker" -sdk "$sdk_dir" "${files[@]}" || status=1

log "2/3 datasource, ids, uids, expressions, variables"
python3 "$here/check-dashboards/plain.py" --rules "$tmp/dashboards.rules.json" "${files[@]}" || status=1

log "3/3 every expression parses as PromQL (promtool check rules)"
if [ -s "$tmp/dashboards.rules.json" ]; then
  if ! out="$("$promtool" check rules --lint-fatal "$tmp/dashboards.rules.json" 2>&1)"; then
    # promtool names the group (the dashboard's file) and the rule (panel_<id>_<refId>,
    # variable_<name> or annotation_<i>).
    printf '%s\n' "$out" | sed "s#$tmp/dashboards.rules.json#expressions of ${files[*]}#"
    status=1
  else
    printf '%s\n' "$out" | sed -n 's/^ *SUCCESS: \([0-9]*\) rules found.*/\1 expressions parse as PromQL/p'
  fi
fi

if [ "$status" != 0 ]; then
  log "error: dashboards failed the checks above"
  exit 1
fi
log "${#files[@]} dashboard(s) pass every check"
