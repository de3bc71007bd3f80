#!/usr/bin/env bash
# Builds krew ($KREW_VERSION, pinned in versions.sh) and its manifest validator through the Go
# module proxy into a cache outside the work tree, $CELLSTACK_CACHE/krew/$KREW_VERSION/bin/
# {krew,validate-krew-manifest}. Cached binaries are reused.
#
#   e2e/scripts/build-krew.sh                 build if missing; logs go to stderr
#   e2e/scripts/build-krew.sh --print-path    the same, then print the bin directory on stdout
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=versions.sh
. "$here/versions.sh"
log_prefix=build-krew
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

print_path_args "$@"

done_() { done_at "$KREW_BIN_DIR"; }

if [ -x "$KREW_BIN_DIR/krew" ] && [ -x "$KREW_BIN_DIR/validate-krew-manifest" ]; then
  log "krew $KREW_VERSION cached in $KREW_BIN_DIR"
  done_
fi

command -v go >/dev/null || { echo "go is required to build krew $KREW_VERSION (Go 1.26+ on PATH)" >&2; exit 1; }
mkdir -p "$KREW_BIN_DIR"
exec 9>"$KREW_BIN_DIR/../.lock"
flock 9
if [ -x "$KREW_BIN_DIR/krew" ] && [ -x "$KREW_BIN_DIR/validate-krew-manifest" ]; then
  log "krew $KREW_VERSION built meanwhile in $KREW_BIN_DIR"
  done_
fi

log "building krew $KREW_VERSION and validate-krew-manifest (about a minute cold on 2 cores)"
start=$SECONDS
tmp="$(mktemp -d "$KREW_BIN_DIR/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
for cmd in krew validate-krew-manifest; do
  with_heartbeat "building $cmd" env GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "sigs.k8s.io/krew/cmd/$cmd@$KREW_VERSION"
done
mv -f "$tmp/krew" "$tmp/validate-krew-manifest" "$KREW_BIN_DIR/"
log "built krew $KREW_VERSION in $((SECONDS - start))s into $KREW_BIN_DIR"
done_
