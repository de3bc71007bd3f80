#!/usr/bin/env bash
# Builds kube-router ($KUBE_ROUTER_VERSION, pinned in versions.sh) through the Go module proxy into
# a cache outside the work tree, $KUBE_ROUTER_BIN. A cached binary is reused, so a second run
# costs nothing. e2e/cluster runs it on every node with only its network policy controller on
# (--run-firewall; no routing, no service proxy): the engine that enforces NetworkPolicy in the
# local cluster (see docs/local-cluster.md for why this engine and this version).
#
#   e2e/scripts/build-kube-router.sh               build if missing; logs to stderr
#   e2e/scripts/build-kube-router.sh --print-path  the same, then print the binary's path
#
# The module has no `replace` directives, so `go install module/cmd/kube-router@version` builds it
# as released. The ldflags set the version variables its Makefile sets.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=versions.sh
. "$here/versions.sh"
log_prefix=build-kube-router
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

version="$KUBE_ROUTER_VERSION"
bin="$KUBE_ROUTER_BIN"
module=github.com/cloudnativelabs/kube-router/v2

print_path_args "$@"

done_() { done_at "$bin"; }

if [ -x "$bin" ]; then
  log "kube-router $version cached at $bin"
  done_
fi

command -v go >/dev/null || die "go is required to build kube-router $version (Go 1.26+ on PATH)"
bin_dir="$(dirname "$bin")"
mkdir -p "$bin_dir"
# Serialise concurrent builds of the same version.
exec 9>"$bin_dir/../.lock"
flock 9
if [ -x "$bin" ]; then
  log "kube-router $version built meanwhile at $bin"
  done_
fi

log "resolving $module@$version through the Go module proxy"
gomod="$(go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')" ||
  die "the Go module proxy does not serve $module@$version (set KUBE_ROUTER_VERSION to one it serves: go list -m -versions $module)"
if grep -qE '^\s*replace\b' "$gomod"; then
  die "$module@$version has replace directives; go install cannot build it (needs a consumer module)"
fi

log "building kube-router $version (a cold build takes a few minutes on 2 cores; Go's caches live in $(go env GOCACHE))"
start=$SECONDS
tmp="$(mktemp -d "$bin_dir/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
with_heartbeat "building kube-router" env GOBIN="$tmp" CGO_ENABLED=0 \
  go install -trimpath \
  -ldflags "-s -w -X $module/pkg/version.Version=$version -X $module/pkg/version.BuildDate=cellstack" \
  "$module/cmd/kube-router@$version"
"$tmp/kube-router" --version >&2 || die "the built kube-router does not run"
mv -f "$tmp/kube-router" "$bin"
log "built kube-router $version in $((SECONDS - start))s into $bin"
done_
