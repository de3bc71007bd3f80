#!/usr/bin/env bash
# Container images for the local cluster, built from local binaries: no Docker, no registry.
#
# Each image is one deterministic layer written by e2e/images/mkimage.py as a docker-archive tar
# (manifest.json with RepoTags, a config with entrypoint/user/env and rootfs.diff_ids, the layer),
# runs as uid/gid 65532 and has an explicit tag under `localhost/cellstack/` (never :latest). The
# `localhost/` registry name means a pull, should anything ever attempt one, goes to loopback and
# never to the network. Tarballs go to $CELLSTACK_IMAGES_DIR (default ~/.cache/cellstack/images).
#
# Usage: e2e/scripts/images.sh COMMAND [ARGS]
#   build [NAME...]    build the standard images (default: all of pause coredns busybox redis) and
#                      print one "TAG PATH" line per image on stdout:
#                        pause    e2e/images/pause.c compiled `gcc -static -Os`: the pod sandbox
#                        coredns  CoreDNS (e2e/images/coredns/main.go, pinned version) built
#                                 through the Go module proxy, cached in ~/.cache/cellstack/coredns
#                        busybox  Debian's busybox-static with every applet linked, and
#                                 /www/index.html for `httpd -f -p 8080 -h /www`
#                        redis    Debian's redis-server plus the shared libraries ldd lists
#   binary NAME:TAG BINARY [ARG...]
#                      package one BINARY as an image (entrypoint BINARY ARG..., plus /etc/passwd,
#                      CA certificates and, when it is dynamically linked, the shared objects it
#                      loads); prints "TAG PATH". A NAME without a '/' becomes localhost/cellstack/NAME.
#   import TAR...      import image tarballs into containerd's k8s.io namespace (the one the
#                      CRI, hence kubelet, sees) with `ctr images import`
#   tags               print `export CELLSTACK_E2E_<NAME>_IMAGE=TAG` for the standard images
#
# Environment:
#   CELLSTACK_IMAGES_DIR           where tarballs are written
#   CELLSTACK_CONTAINERD_ADDRESS   containerd socket(s) for `import`, space-separated (default: every
#                                  node's of e2e/cluster, ${CELLSTACK_CLUSTER_DIR:-/tmp/cellstack-cluster}/nodes/*/containerd/containerd.sock)
#   CELLSTACK_SNAPSHOTTER          snapshotter to unpack into on import (default overlayfs)
#   COREDNS_VERSION                CoreDNS module version to build (default pinned below)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
images_src="$(cd "$here/../images" && pwd)"
log_prefix=images
# shellcheck source-path=SCRIPTDIR source=versions.sh
. "$here/versions.sh"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

# CoreDNS version: see versions.sh (the newest release whose go.mod builds with Go >= 1.25).
PAUSE_TAG=localhost/cellstack/pause:1.0
out_dir="${CELLSTACK_IMAGES_DIR:-$CELLSTACK_CACHE/images}"
addresses="${CELLSTACK_CONTAINERD_ADDRESS:-$(echo "${CELLSTACK_CLUSTER_DIR:-/tmp/cellstack-cluster}"/nodes/*/containerd/containerd.sock)}"
snapshotter="${CELLSTACK_SNAPSHOTTER:-overlayfs}"
nonroot=65532
common=()

# Debian's version without epoch and revision: 1:1.35.0-4+deb12u1 -> 1.35.0
upstream_version() {
  local v
  v="$(dpkg-query -W -f='${Version}' "$1")"
  v="${v#*:}"
  echo "${v%%-*}"
}

busybox_tag() { echo "localhost/cellstack/busybox:$(upstream_version busybox-static)"; }
redis_tag() { echo "localhost/cellstack/redis:$(upstream_version redis-server)"; }
coredns_tag() { echo "localhost/cellstack/coredns:${COREDNS_VERSION#v}"; }

# common_files DIR: set `common` to the mkimage arguments every image gets: a passwd/group naming
# root and the non-root user images run as, its home, and a world-writable /tmp.
common_files() {
  local dir="$1"
  printf '%s\n' "root:x:0:0:root:/root:/sbin/nologin" "nonroot:x:$nonroot:$nonroot:nonroot:/home/nonroot:/sbin/nologin" >"$dir/passwd"
  printf '%s\n' "root:x:0:" "nonroot:x:$nonroot:" >"$dir/group"
  common=(--file "$dir/passwd:/etc/passwd:0644" --file "$dir/group:/etc/group:0644"
    --dir "/home/nonroot:0755:$nonroot:$nonroot" --dir "/tmp:1777")
}

# mkimage TAG FILE ARGS...: write the archive FILE; print "TAG FILE".
mkimage() {
  local tag="$1" file="$2"
  shift 2
  mkdir -p "$(dirname "$file")"
  python3 "$images_src/mkimage.py" --tag "$tag" --out "$file" "$@"
  echo "$tag $file"
}

archive_path() { local t="${1#localhost/}"; echo "$out_dir/${t//[\/:]/_}.tar"; }

build_pause() {
  local work="$1" tag="$PAUSE_TAG"
  ensure_packages gcc=gcc /usr/lib/x86_64-linux-gnu/libc.a=libc6-dev
  gcc -static -Os -Wall -Wextra -Werror -s -o "$work/pause" "$images_src/pause.c"
  common_files "$work"
  mkimage "$tag" "$(archive_path "$tag")" "${common[@]}" \
    --file "$work/pause:/pause:0755" --entrypoint '["/pause"]'
}

build_coredns() {
  local work="$1" tag mod bin
  tag="$(coredns_tag)"
  mod="$CELLSTACK_CACHE/coredns/$COREDNS_VERSION/module"
  bin="$CELLSTACK_CACHE/coredns/$COREDNS_VERSION/bin/coredns"
  if [ ! -x "$bin" ] || ! cmp -s "$images_src/coredns/main.go" "$mod/main.go"; then
    rm -f "$bin"
    mkdir -p "$mod"
    # A consumer module whose main package imports only the plugins we use (see main.go).
    if [ ! -f "$mod/go.mod" ]; then
      log "resolving github.com/coredns/coredns@$COREDNS_VERSION through the Go module proxy"
      (cd "$mod" && GOTOOLCHAIN=local go mod init cellstack.dev/coredns-build &&
        GOTOOLCHAIN=local go mod edit -require "github.com/coredns/coredns@$COREDNS_VERSION") >&2 2>&1
    fi
    cp "$images_src/coredns/main.go" "$mod/main.go"
    (cd "$mod" && GOTOOLCHAIN=local go mod tidy) >&2 2>&1
    go_build_cached "$bin" "$mod" cellstack.dev/coredns-build "-s -w -X github.com/coredns/coredns/coremain.GitCommit=cellstack"
  fi
  common_files "$work"
  mkimage "$tag" "$(archive_path "$tag")" "${common[@]}" \
    --file "$bin:/coredns:0755" --entrypoint '["/coredns"]' --port 1053/udp --port 1053/tcp
}

build_busybox() {
  local work="$1" tag applet args=()
  ensure_packages /bin/busybox=busybox-static
  tag="$(busybox_tag)"
  # A static busybox (the busybox package would be dynamic): one file, every applet a symlink.
  ldd /bin/busybox >/dev/null 2>&1 && die "/bin/busybox is dynamically linked; install busybox-static"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || args+=(--symlink "/bin/$applet:busybox")
  done
  printf '%s\n' '<!doctype html><title>cellstack</title><p>cellstack busybox httpd</p>' >"$work/index.html"
  common_files "$work"
  mkimage "$tag" "$(archive_path "$tag")" "${common[@]}" \
    --file /bin/busybox:/bin/busybox:0755 "${args[@]}" \
    --file "$work/index.html:/www/index.html:0644" --cmd '["sh"]'
}

# library_files BINARY: one mkimage argument per line (`--file` then `SRC:DEST:0755`) for every
# shared object BINARY loads, each at the path the loader looks for it (ldd prints
# "name => /path (addr)" and the interpreter as "/lib64/ld-linux-x86-64.so.2 (addr)"). Symlinks
# are resolved: the image holds the real file under the linked name. glibc >= 2.34 has its NSS
# "files" and "dns" modules inside libc.so.6, so name resolution needs no further libraries.
library_files() {
  local lib
  while read -r lib; do
    printf '%s\n' --file "$(realpath "$lib"):$lib:0755"
  done < <(ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
}

build_redis() {
  local work="$1" tag lib args=()
  ensure_packages redis-server=redis-server
  tag="$(redis_tag)"
  # The binary plus every shared object it loads, each at the path the loader looks for it
  # (ldd prints "name => /path (addr)" and the interpreter as "/lib64/ld-linux-x86-64.so.2 (addr)").
  # Symlinks are resolved: the image holds the real file under the linked name.
  while read -r lib; do args+=("$lib"); done < <(library_files /usr/bin/redis-server)
  [ "${#args[@]}" -gt 0 ] || die "ldd found no libraries for /usr/bin/redis-server"
  common_files "$work"
  mkimage "$tag" "$(archive_path "$tag")" "${common[@]}" \
    --file "$(realpath /usr/bin/redis-server):/usr/bin/redis-server:0755" "${args[@]}" \
    --dir "/data:0755:$nonroot:$nonroot" --workdir /data --port 6379/tcp \
    --entrypoint '["/usr/bin/redis-server"]' \
    --cmd '["--bind","0.0.0.0","--port","6379","--protected-mode","no","--save","","--appendonly","no"]'
}

# is_static FILE: true if the ELF file has no program interpreter (PT_INTERP), i.e. needs no
# dynamic loader. Static-pie binaries (Rust's +crt-static) pass; `ldd` is not reliable for them.
is_static() {
  python3 - "$1" <<'EOF'
import struct, sys
with open(sys.argv[1], "rb") as f:
    head = f.read(64)
    if head[:4] != b"\x7fELF" or head[4] != 2:
        sys.exit("not a 64-bit ELF file")
    phoff, = struct.unpack_from("<Q", head, 32)
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    f.seek(phoff)
    table = f.read(phentsize * phnum)
PT_INTERP = 3
types = [struct.unpack_from("<I", table, i * phentsize)[0] for i in range(phnum)]
sys.exit(1 if PT_INTERP in types else 0)
EOF
}

cmd_binary() {
  [ "$#" -ge 2 ] || die "usage: $0 binary NAME:TAG BINARY [ARG...]"
  local tag="$1" binary="$2" work name entrypoint lib certs=() libs=()
  shift 2
  [[ "$tag" == */* ]] || tag="localhost/cellstack/$tag"
  [[ "${tag##*/}" == *:* ]] || die "$tag: give an explicit tag (NAME:TAG)"
  [[ "$tag" != *:latest ]] || die "$tag: use an explicit version tag, not :latest"
  [ -x "$binary" ] || die "$binary is not an executable file"
  name="$(basename "$binary")"
  # A dynamically linked binary gets the shared objects it loads; a static one needs none.
  if ! is_static "$binary"; then
    while read -r lib; do libs+=("$lib"); done < <(library_files "$binary")
    [ "${#libs[@]}" -gt 0 ] || die "ldd found no libraries for the dynamically linked $binary"
  fi
  entrypoint="$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "/usr/local/bin/$name" "$@")"
  [ -f /etc/ssl/certs/ca-certificates.crt ] && certs=(--file /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:0644)
  work="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand now: work is local
  trap "rm -rf '$work'" EXIT
  common_files "$work"
  mkimage "$tag" "$(archive_path "$tag")" "${common[@]}" "${certs[@]}" \
    --file "$binary:/usr/local/bin/$name:0755" "${libs[@]}" --entrypoint "$entrypoint"
}

cmd_build() {
  local names=("$@") name work
  [ "${#names[@]}" -gt 0 ] || names=(pause coredns busybox redis)
  work="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  for name in "${names[@]}"; do
    case "$name" in
      pause | coredns | busybox | redis) mkdir -p "$work/$name" && "build_$name" "$work/$name" ;;
      *) die "unknown image '$name'; known: pause coredns busybox redis" ;;
    esac
  done
}

# import_into ADDRESS TAR...: every TAR into the containerd at ADDRESS.
import_into() {
  local address="$1" tar
  shift
  for tar in "$@"; do
    # k8s.io is the namespace containerd's CRI plugin uses; images elsewhere are invisible to kubelet.
    ctr --address "$address" --namespace k8s.io images import --snapshotter "$snapshotter" "$tar" >&2 ||
      die "importing $tar into $address failed"
  done
}

# cmd_import TAR...: into every containerd of CELLSTACK_CONTAINERD_ADDRESS (every node), at once.
cmd_import() {
  [ "$#" -gt 0 ] || die "usage: $0 import TAR..."
  local address pids=() failed=0 pid
  for address in $addresses; do
    [ -S "$address" ] || die "no containerd socket at $address (is the cluster up? set CELLSTACK_CONTAINERD_ADDRESS)"
  done
  [ -n "$addresses" ] || die "no containerd to import into (is the cluster up? set CELLSTACK_CONTAINERD_ADDRESS)"
  for address in $addresses; do
    import_into "$address" "$@" &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
  [ "$failed" = 0 ] || die "importing into $failed of ${#pids[@]} containerd instances failed"
}

cmd_tags() {
  printf 'export CELLSTACK_E2E_%s_IMAGE=%q\n' PAUSE "$PAUSE_TAG" COREDNS "$(coredns_tag)" \
    BUSYBOX "$(busybox_tag)" REDIS "$(redis_tag)"
}

case "${1:-}" in
  build) shift && cmd_build "$@" ;;
  binary) shift && cmd_binary "$@" ;;
  import) shift && cmd_import "$@" ;;
  tags) cmd_tags ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
