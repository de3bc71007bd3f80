#!/usr/bin/env bash
# How long a cell's writes stop when its primary Redis dies: the e2e scenario
# `failing_over_again_and_again_loses_no_acknowledged_write` with more rounds. The chart installed
# on the local cluster with examples/ (3 cells of 3 Redis pods with Sentinel), a checker writing
# ~80 sequence-numbered items/s through the router to one tenant of a cell, and that cell's primary
# killed (SIGKILL, pod deleted) ROUNDS times, each time once the datastore is whole again. Prints
# each failover and the time from the kill to the first acknowledged write sent after it, at p50
# and max; fails if any acknowledged write is lost or a failover takes over 20 s.
#
# Usage: bench/failover.sh [ROUNDS]   (default 10, at least 5)
# Uses a running local cluster (e2e/cluster up) or starts and removes its own. Needs root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR source=../e2e/scripts/versions.sh
. e2e/scripts/versions.sh
rounds="${1:-10}"
case "$rounds" in ''|*[!0-9]*) echo "bench/failover.sh: ROUNDS must be a number, not '$rounds'" >&2; exit 2 ;; esac
e2e/scripts/install-deps.sh
e2e/scripts/build-kubernetes.sh etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
e2e/scripts/build-helm.sh
if ! e2e/cluster status >/dev/null 2>&1; then
  export CELLSTACK_CLUSTER_DIR
  CELLSTACK_CLUSTER_DIR="$(mktemp -d /tmp/cellstack-bench-failover.XXXXXX)"
  trap 'e2e/cluster down || true; rm -rf "$CELLSTACK_CLUSTER_DIR"' EXIT
  e2e/cluster up
fi
exports="$(e2e/cluster env)"
eval "$exports"
cargo build --locked --workspace
exports="$(e2e/scripts/cellstack-images.sh)"
eval "$exports"
export CELLSTACK_HELM="$HELM_BIN" KUBECTL="$K8S_BIN_DIR/kubectl"
CELLSTACK_TEST_TIER=full CELLSTACK_E2E_FAILOVERS="$rounds" \
  cargo test --locked -p cellstack-e2e --test scenarios -- \
  --exact failing_over_again_and_again_loses_no_acknowledged_write
