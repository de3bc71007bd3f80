#!/usr/bin/env bash
# Builds Helm ($HELM_VERSION, pinned in versions.sh) through the Go module proxy into a cache
# outside the work tree, $CELLSTACK_CACHE/helm/$HELM_VERSION/bin/helm. A cached binary is reused,
# so a second run (or a fresh clone on the same machine) costs nothing.
#
#   e2e/scripts/build-helm.sh                 build if missing; logs go to stderr, nothing to stdout
#   e2e/scripts/build-helm.sh --print-path    the same, then print the binary's path on stdout
#
# helm.sh/helm/v3 has no `replace` directives, so `go install module@version` builds it as
# released, without a consumer module. The ldflags are those of Helm's Makefile: the version, and
# the Kubernetes version Helm assumes when there is no cluster (`helm template`, `helm lint`),
# which the Makefile derives from the k8s.io/client-go it links. Without them `helm template`
# would claim Kubernetes v1.20 and fail the chart's `kubeVersion: >=1.30.0-0`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=versions.sh
. "$here/versions.sh"
log_prefix=build-helm
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"


print_path_args "$@"

done_() { done_at "$HELM_BIN"; }

if [ -x "$HELM_BIN" ]; then
  log "helm $HELM_VERSION cached at $HELM_BIN"
  done_
fi

# Go is needed only to build; a cached binary works without it.
command -v go >/dev/null || { echo "go is required to build helm $HELM_VERSION (Go 1.26+ on PATH)" >&2; exit 1; }
bin_dir="$(dirname "$HELM_BIN")"
mkdir -p "$bin_dir"
# Serialise concurrent builds of the same version (two test runs starting at once).
exec 9>"$bin_dir/../.lock"
flock 9
if [ -x "$HELM_BIN" ]; then   # built by whoever held the lock before us
  log "helm $HELM_VERSION built meanwhile at $HELM_BIN"
  done_
fi

module=helm.sh/helm/v3
log "resolving $module@$HELM_VERSION through the Go module proxy"
gomod="$(go mod download -json "$module@$HELM_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
if grep -qE '^\s*replace\b' "$gomod"; then
  echo "$module@$HELM_VERSION has replace directives; go install cannot build it (needs a consumer module)" >&2
  exit 1
fi
client_go="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$gomod")"   # e.g. v0.37.0
[[ "$client_go" =~ ^v0\.([0-9]+)\. ]] || { echo "cannot find k8s.io/client-go's version in $gomod" >&2; exit 1; }
k8s_minor="${BASH_REMATCH[1]}"

ldflags="-s -w"
ldflags+=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
ldflags+=" -X helm.sh/helm/v3/internal/version.metadata="
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$k8s_minor"
done

log "building helm $HELM_VERSION (default Kubernetes version v1.$k8s_minor; a cold build takes 3-10 min on 2 cores; Go's caches live in $(go env GOCACHE))"
start=$SECONDS
tmp="$(mktemp -d "$bin_dir/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
with_heartbeat "building helm" env GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" "$module/cmd/helm@$HELM_VERSION"
got="$("$tmp/helm" version --template '{{.Version}}')"
[ "$got" = "$HELM_VERSION" ] || { echo "built helm reports version '$got', expected $HELM_VERSION" >&2; exit 1; }
mv -f "$tmp/helm" "$HELM_BIN"
log "built helm $HELM_VERSION in $((SECONDS - start))s into $HELM_BIN"
done_
