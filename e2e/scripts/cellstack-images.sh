#!/usr/bin/env bash
# Images of cellstack's own binaries (cell runtime, router, operator) for the local cluster: takes
# the binaries the workspace build made, strips their debug info, packages each with
# e2e/scripts/images.sh (binary + the shared objects it loads, uid 65532) under a tag that names
# the crate version and the binary's content hash, and imports them into the cluster's containerd.
# Also the Go example service (examples/go-orders, built by build-go-example.sh: a static binary,
# so its image is that one file).
#
# Usage: e2e/scripts/cellstack-images.sh [--no-import]
# Prints `export CELLSTACK_E2E_<NAME>_IMAGE=TAG` lines (CELL, ROUTER, OPERATOR, GO_ORDERS) for
# `eval`.
#
# Environment: CARGO_TARGET_DIR (default target), CELLSTACK_PROFILE (default debug: the binaries
# `cargo build --workspace` made), and what images.sh reads (CELLSTACK_CONTAINERD_ADDRESS, ...).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
log_prefix=cellstack-images
# shellcheck source-path=SCRIPTDIR source=versions.sh
. "$here/versions.sh"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

import=true
[ "${1:-}" = "--no-import" ] && import=false
bin_dir="${CARGO_TARGET_DIR:-$root/target}/${CELLSTACK_PROFILE:-debug}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
[ -n "$version" ] || die "cannot read the workspace version from Cargo.toml"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

tars=()
exports=()
go_orders="$("$here/build-go-example.sh" --print-path)"
for pair in cell:cellstack-cell router:cellstack-router operator:cellstack-operator go_orders:go-orders; do
  name="${pair%%:*}" bin="${pair#*:}"
  if [ "$name" = go_orders ]; then
    cp "$go_orders" "$work/$bin"
  else
    [ -x "$bin_dir/$bin" ] || die "$bin_dir/$bin is missing: build the workspace first (cargo build --workspace)"
    objcopy --strip-debug "$bin_dir/$bin" "$work/$bin"
  fi
  hash="$(sha256sum "$work/$bin" | cut -c1-12)"
  image="${name//_/-}"
  tag="localhost/cellstack/$image:$version-$hash"
  read -r _ tar < <("$here/images.sh" binary "$tag" "$work/$bin")
  # Keep only this build's tarball of the image: every build has a new tag.
  for old in "$(dirname "$tar")/cellstack_${image}_"*.tar; do
    [ "$old" = "$tar" ] || rm -f "$old"
  done
  tars+=("$tar")
  exports+=("export CELLSTACK_E2E_${name^^}_IMAGE=$tag")
done
if $import; then
  "$here/images.sh" import "${tars[@]}"
fi
printf '%s\n' "${exports[@]}"
