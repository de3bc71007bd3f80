#!/usr/bin/env bash
# Installs what the test command and the demo need and the machine lacks: Debian packages
# (only when a command is missing, so a warm machine does no apt work), and checks the
# toolchains that cannot come from Debian (Rust with clippy and rustfmt, Go >= 1.24).
set -euo pipefail

log() { printf '[install-deps %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# command -> Debian package providing it
declare -A need=(
  [redis-server]=redis-server
  [redis-cli]=redis-tools
  [openssl]=openssl
  [flock]=util-linux
  [python3]=python3
  [curl]=curl
  # e2e/demo up --service go-orders rewrites the example cells with it.
  [jq]=jq
  # e2e/cluster: the node's runtime and network, and the images' contents (it installs these
  # itself too; listed here so that one apt run covers everything).
  [containerd]=containerd
  [runc]=runc
  [/usr/lib/cni/bridge]=containernetworking-plugins
  [iptables]=iptables
  # kube-router (the local cluster's NetworkPolicy engine) keeps its address sets in ipsets.
  [ipset]=ipset
  # The edge in front of the routers in the node-loss scenario (cellstack_testkit::edge).
  [haproxy]=haproxy
  [/bin/busybox]=busybox-static
  [gcc]=gcc
  [/usr/lib/x86_64-linux-gnu/libc.a]=libc6-dev
  # e2e/scripts/cellstack-images.sh strips the binaries it packages.
  [objcopy]=binutils
  # The dashboard of the kubectl plugin is tested in a real headless browser.
  [chromium]=chromium
)
missing=()
for cmd in "${!need[@]}"; do
  if [[ "$cmd" == /* ]]; then [ -e "$cmd" ] && continue; else command -v "$cmd" >/dev/null 2>&1 && continue; fi
  missing+=("${need[$cmd]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Packages with a service (redis-server, containerd) would start it from their
  # postinst; policy-rc.d(8) forbids that for the install, unless the machine has its own policy.
  policy=/usr/sbin/policy-rc.d
  if [ -e "$policy" ]; then
    policy=""
  else
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  [ -z "$policy" ] || { rm -f "$policy"; trap - EXIT; }
fi

command -v cargo >/dev/null || { echo "cargo is missing: install Rust stable (rustup) first" >&2; exit 1; }
for component in clippy rustfmt; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    log "adding rustup component $component"
    rustup component add "$component" >&2
  fi
done
# Go builds the Kubernetes binaries (once; they are cached), so an old or missing Go is only a
# problem when something is not cached yet: build-kubernetes.sh says so then.
if command -v go >/dev/null; then
  go_minor="$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
  [ "$go_minor" -ge 24 ] || log "warning: Go $(go env GOVERSION) is older than 1.24, which the Kubernetes build needs"
fi
log "dependencies present"
