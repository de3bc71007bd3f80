#!/usr/bin/env bash
# Builds Rancher's local-path-provisioner ($LOCAL_PATH_PROVISIONER_VERSION, pinned in versions.sh)
# through the Go module proxy into a cache outside the work tree,
# $CELLSTACK_CACHE/local-path-provisioner/$LOCAL_PATH_PROVISIONER_VERSION/bin/local-path-provisioner.
# A cached binary is reused, so a second run costs nothing. e2e/cluster packages it as an image
# (e2e/scripts/images.sh binary) and runs it as the cluster's dynamic volume provisioner.
#
#   e2e/scripts/build-local-path-provisioner.sh               build if missing; logs to stderr
#   e2e/scripts/build-local-path-provisioner.sh --print-path  the same, then print the binary's path
#
# The module has no `replace` directives, so `go install module@version` builds it as released
# (its own go.mod picks every dependency; the vendor/ directory in the module zip is ignored). The
# ldflags are those of its scripts/build: static, stripped, and the version in main.VERSION.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=versions.sh
. "$here/versions.sh"
log_prefix=build-local-path-provisioner
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

version="$LOCAL_PATH_PROVISIONER_VERSION"
bin="$LOCAL_PATH_PROVISIONER_BIN"
module=github.com/rancher/local-path-provisioner

print_path_args "$@"

done_() { done_at "$bin"; }

if [ -x "$bin" ]; then
  log "local-path-provisioner $version cached at $bin"
  done_
fi

# Go is needed only to build; a cached binary works without it.
command -v go >/dev/null || die "go is required to build local-path-provisioner $version (Go 1.26+ on PATH)"
bin_dir="$(dirname "$bin")"
mkdir -p "$bin_dir"
# Serialise concurrent builds of the same version (two `up`s starting at once).
exec 9>"$bin_dir/../.lock"
flock 9
if [ -x "$bin" ]; then   # built by whoever held the lock before us
  log "local-path-provisioner $version built meanwhile at $bin"
  done_
fi

log "resolving $module@$version through the Go module proxy"
gomod="$(go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')" ||
  die "the Go module proxy does not serve $module@$version (set LOCAL_PATH_PROVISIONER_VERSION to one it serves: go list -m -versions $module)"
if grep -qE '^\s*replace\b' "$gomod"; then
  die "$module@$version has replace directives; go install cannot build it (needs a consumer module)"
fi

log "building local-path-provisioner $version (a cold build takes 2-4 min on 2 cores; Go's caches live in $(go env GOCACHE))"
start=$SECONDS
tmp="$(mktemp -d "$bin_dir/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
with_heartbeat "building local-path-provisioner" env GOBIN="$tmp" CGO_ENABLED=0 \
  go install -trimpath -ldflags "-s -w -X main.VERSION=$version" "$module@$version"
got="$("$tmp/local-path-provisioner" --version)"
[ "$got" = "local-path-provisioner version $version" ] ||
  die "built local-path-provisioner reports '$got', expected version $version"
mv -f "$tmp/local-path-provisioner" "$bin"
log "built local-path-provisioner $version in $((SECONDS - start))s into $bin"
done_
