#!/usr/bin/env bash
# Operator memory after a restart, A/B: N TenantAssignments are created and placed once (the
# first binary running), then each binary of BINS is started in turn against them, ROUNDS
# interleaved rounds; for each start it prints the seconds until its published table holds all
# N tenants and its RSS (and peak) SETTLE seconds after that (default 30, longer than the 20 s
# after which the operator gives freed heap back, operator/src/heap.rs: a fixed settling interval
# before reading memory, not a synchronisation). Everything is labelled cellstack.dev/bench=<id> and deleted at
# the end. On the local cluster (e2e/cluster up first), release builds of the bench example.
#
#   BINS="/tmp/op-before target/release/cellstack-operator" N=40000 ROUNDS=2 bench/operator-restart.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${BINS:?BINS: the operator binaries to compare, space-separated}"
e2e/cluster status >/dev/null 2>&1 || { echo "the local cluster is not running: e2e/cluster up" >&2; exit 1; }
eval "$(e2e/cluster env)"
cargo build --release -q -p cellstack-operator --examples
eval "$(e2e/scripts/cellstack-images.sh 2>/dev/null)"
kubectl apply --server-side --force-conflicts --field-manager cellstack-tests -f crds/ >/dev/null
N="${N:-40000}"; ROUNDS="${ROUNDS:-2}"; SETTLE="${SETTLE:-30}"; read -r -a BINS <<<"$BINS"; oplog="$(mktemp)"
bin=target/release
id="ab$(printf '%04x' $RANDOM)"; label="cellstack.dev/bench=$id"; ns="cellstack-bench-$id"
cells=("$id-c0" "$id-c1" "$id-c2")
kubectl create namespace "$ns" >/dev/null; kubectl label namespace "$ns" "$label" >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start_op() { "$1" --namespace "$ns" --identity bench --selector "$label" --cell-image "$CELLSTACK_E2E_CELL_IMAGE" --redis-image "$CELLSTACK_E2E_REDIS_IMAGE" --image-pull-policy Never --metrics-listen "127.0.0.1:$port" >"$oplog" 2>&1 & op=$!; }
stop_op() { kill "$op" 2>/dev/null; wait "$op" 2>/dev/null || true; op=""; }
published() { curl -fsS --max-time 5 "http://127.0.0.1:$port/metrics" 2>/dev/null | awk '$1 == "cellstack_operator_routing_table_tenants" {print $2}'; }
op=""
cleanup() { # the tenants and cells with an operator running (it releases their finalizers)
  set +e
  [ -n "$op" ] && stop_op
  start_op "${BINS[0]}"
  timeout 900 "$bin/examples/bench_operator" delete-tenants --label "$label" --timeout-secs 840 >/dev/null 2>&1
  kubectl delete cells -l "$label" --wait=true --timeout=120s >/dev/null 2>&1
  stop_op
  kubectl delete namespace "$ns" "${cells[@]/#/cell-}" --ignore-not-found --wait=false >/dev/null 2>&1
  rm -f "$oplog"
}
trap cleanup EXIT
start_op "${BINS[0]}"
for c in "${cells[@]}"; do kubectl apply -f - >/dev/null <<Y
apiVersion: cellstack.dev/v1alpha1
kind: Cell
metadata: {name: $c, labels: {cellstack.dev/bench: "$id"}}
spec: {lanes: 1, capacity: {maxTenants: 1000000, weight: 100}, datastore: {managed: {storage: Ephemeral}}}
Y
done
for c in "${cells[@]}"; do kubectl wait --for=condition=Ready "cell/$c" --timeout=300s >/dev/null; done
"$bin/examples/bench_operator" tenants --label "$label" --prefix "$id" --from 0 --to "$N" --parallelism 32 --timeout-secs 900 --published-metrics "http://127.0.0.1:$port/metrics" | grep after_last
stop_op
for r in $(seq 1 $ROUNDS); do for b in "${BINS[@]}"; do
  t0=$(date +%s); start_op "$b"
  until [ "$(published)" = "$N" ]; do sleep 1; [ $(( $(date +%s) - t0 )) -lt 300 ] || { echo "timeout $b"; break; }; done
  t1=$(date +%s); sleep "$SETTLE"
  echo "round $r $b: published $N after $((t1-t0)) s; $(awk '/^VmRSS:/ {r=$2} /^VmHWM:/ {h=$2} END {printf "RSS %.0f MiB peak %.0f MiB", r/1024, h/1024}' /proc/$op/status)"
  stop_op
done; done
