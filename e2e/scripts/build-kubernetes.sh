#!/usr/bin/env bash
# Builds the Kubernetes binaries (and etcd) named on the command line through the Go module proxy
# at the pinned versions, into a cache outside the work tree. Binaries already cached are skipped,
# so a second run (or a fresh clone on the same machine) costs nothing.
#
#   e2e/scripts/build-kubernetes.sh etcd kube-apiserver kube-controller-manager kubectl
#
# k8s.io/kubernetes requires its ~30 staging modules at v0.0.0, which does not exist outside its
# own tree; a small consumer module with a `replace` per staging module makes it buildable.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/versions.sh"
log_prefix=build-kubernetes
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"


[ "$#" -gt 0 ] || set -- etcd kube-apiserver kube-controller-manager kubectl

declare -A pkg=(
  [etcd]=go.etcd.io/etcd/server/v3
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
  [kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
  [kubelet]=k8s.io/kubernetes/cmd/kubelet
  [kube-proxy]=k8s.io/kubernetes/cmd/kube-proxy
  [kubectl]=k8s.io/kubernetes/cmd/kubectl
)
missing=()
for b in "$@"; do
  [ -n "${pkg[$b]:-}" ] || { echo "unknown binary '$b'; known: ${!pkg[*]}" >&2; exit 2; }
  [ -x "$K8S_BIN_DIR/$b" ] || missing+=("$b")
done
if [ "${#missing[@]}" -eq 0 ]; then
  log "all of [$*] cached in $K8S_BIN_DIR"
  exit 0
fi

# Go is needed only to build; cached binaries work without it.
command -v go >/dev/null || { echo "go is required to build ${missing[*]} (Go 1.24+ on PATH)" >&2; exit 1; }
mod="$CELLSTACK_CACHE/kubernetes/$K8S_VERSION/module"
mkdir -p "$mod" "$K8S_BIN_DIR"
# Serialise concurrent builds of the same version (two test runs starting at once).
exec 9>"$mod/.lock"
flock 9

if [ ! -f "$mod/go.sum.done" ]; then
  log "resolving k8s.io/kubernetes@$K8S_VERSION and its staging modules through the Go module proxy"
  cd "$mod"
  rm -f go.mod go.sum
  go mod init cellstack.dev/kubernetes-build >/dev/null 2>&1
  gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  minor="${K8S_VERSION#v1.}"   # 34.4
  staging_version="v0.$minor"
  {
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    grep -E '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$gomod" | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
    for b in "${!pkg[@]}"; do echo "tool ${pkg[$b]}"; done
  } >> go.mod
  go mod tidy >&2
  touch go.sum.done
fi

cd "$mod"
ldflags="-s -w"
minor_only="${K8S_VERSION#v1.}"; minor_only="${minor_only%%.*}"
for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor_only -X $v.gitTreeState=clean"
done
ldflags+=" -X go.etcd.io/etcd/api/v3/version.GitSHA=cellstack"
pkgs=(); for b in "${missing[@]}"; do pkgs+=("${pkg[$b]}"); done
log "building ${missing[*]} (a cold build takes 10-40 min on 2 cores; Go's caches live in $(go env GOCACHE))"
start=$SECONDS
tmp="$(mktemp -d "$K8S_BIN_DIR/.build.XXXXXX")"
# One `go build` for all packages shares the compile graph; output names are the package dirs.
with_heartbeat building env CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}"
for b in "${missing[@]}"; do
  src="$tmp/$(basename "${pkg[$b]}")"
  # Go names a binary after the last path element that is not a major-version suffix.
  [ "$b" = etcd ] && src="$tmp/server"
  mv -f "$src" "$K8S_BIN_DIR/$b"
done
rmdir "$tmp"
log "built ${missing[*]} in $((SECONDS - start))s into $K8S_BIN_DIR"
