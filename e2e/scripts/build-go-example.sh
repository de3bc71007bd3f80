#!/usr/bin/env bash
# Builds the Go example service (examples/go-orders, standard library only) into a static
# binary, ${CARGO_TARGET_DIR:-target}/go/go-orders, with the Go toolchain on PATH. Go's own
# build cache makes a second run cost about a second.
#
#   e2e/scripts/build-go-example.sh                 build; logs go to stderr, nothing to stdout
#   e2e/scripts/build-go-example.sh --print-path    the same, then print the binary's path
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
log_prefix=build-go-example
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

print_path_args "$@"
command -v go >/dev/null || die "go is required to build examples/go-orders (Go 1.22+ on PATH)"
out="${CARGO_TARGET_DIR:-$root/target}/go/go-orders"
mkdir -p "$(dirname "$out")"
# Serialise concurrent builds (test binaries asking at once).
exec 9>"$out.lock"
flock 9
(cd "$root/examples/go-orders" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$out.new" .)
mv -f "$out.new" "$out"
log "examples/go-orders built at $out"
done_at "$out"
