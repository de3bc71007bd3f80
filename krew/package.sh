#!/usr/bin/env bash
# Packages `kubectl-cellstack` for krew: an archive with the binary and LICENSE, and the plugin
# manifest (krew/cellstack.yaml) with that archive's sha256 and the workspace's version.
#
#   krew/package.sh OUT_DIR [BINARY]
#
# BINARY defaults to target/release/kubectl-cellstack (built if missing). Writes
# OUT_DIR/kubectl-cellstack_linux_amd64.tar.gz and OUT_DIR/cellstack.yaml; prints the manifest's
# path. Upload the archive to the release the manifest's uri names, then submit the manifest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: krew/package.sh OUT_DIR [BINARY]}"
bin="${2:-$root/target/release/kubectl-cellstack}"
if [ ! -x "$bin" ]; then
  (cd "$root" && cargo build --release --locked -p cellstack-operator --bin kubectl-cellstack >&2)
fi
version="v$(awk -F'"' '/^version = / { print $2; exit }' "$root/Cargo.toml")"
mkdir -p "$out"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp "$bin" "$stage/kubectl-cellstack"
cp "$root/LICENSE" "$stage/LICENSE"
archive="$out/kubectl-cellstack_linux_amd64.tar.gz"
# Fixed order, owner and times: the same binary gives the same archive.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$stage" -czf "$archive" kubectl-cellstack LICENSE
sha="$(sha256sum "$archive" | cut -d' ' -f1)"
sed -e "s|^  version: .*|  version: $version|" \
    -e "s|releases/download/v[^/]*/|releases/download/$version/|" \
    -e "s|^      sha256: .*|      sha256: \"$sha\"|" \
    "$root/krew/cellstack.yaml" >"$out/cellstack.yaml"
echo "$out/cellstack.yaml"
