#!/usr/bin/env bash
# Operator benchmark on the local cluster (e2e/cluster), from one run:
#   1. publication of a synthetic 1M-tenant routing table with the operator's Publisher into a
#      scratch namespace: chunks, objects, bytes, seconds; the time to read it back and verify
#      it (as a router does), and for `kubectl cellstack blast-radius` to answer from it;
#   2. the time for 10k, then 100k, TenantAssignments to converge with the operator running:
#      placed, provisioned (the status carries the marker of the tenant's record in its cell) and
#      published (the operator's last routing table holds all of them), counted from the last
#      create (goals: 10k < 15 s, 100k < 60 s);
#   3. the operator's RSS (VmRSS, and its peak VmHWM, from /proc/<pid>/status) at 10k and 100k
#      tenants (goal at 100k < 256 MiB);
#   4. the API server's own ceiling, with the operator stopped: the same number of status writes
#      (the operator's merge patch, a new marker) made by a bare client, 32 in flight; the
#      operator's time from the last create over it is the ratio to the physical limit (goal
#      <= 1.5).
# Release binaries (cargo build --release -p cellstack-operator). The cells run the debug images
# of e2e/scripts/cellstack-images.sh, like the tests.
#
# It creates a scratch namespace for the operator (Lease + published tables), one for the 1M
# table, three Cells (1 lane, ephemeral Redis, maxTenants 1,000,000) and the TenantAssignments,
# all labelled cellstack.dev/bench=<id> so only this run's operator sees them; everything is
# deleted on exit, failure included. Every wait has a deadline.
#
# Environment: BENCH_TENANTS_SMALL (10000), BENCH_TENANTS_LARGE (100000; 0 skips), BENCH_TABLE_TENANTS
# (1000000), BENCH_PARALLELISM (32), BENCH_LARGE_TIMEOUT_SECS (1800), BENCH_OPERATOR_ARGS (extra flags),
# BENCH_OPERATOR_BIN (another operator binary to measure, e.g. an earlier build kept aside for an
# A/B run; default: the release build of this tree).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { printf '[bench/operator %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

small="${BENCH_TENANTS_SMALL:-10000}"
large="${BENCH_TENANTS_LARGE:-100000}"
table_tenants="${BENCH_TABLE_TENANTS:-1000000}"
parallelism="${BENCH_PARALLELISM:-32}"
large_timeout="${BENCH_LARGE_TIMEOUT_SECS:-1800}"

if ! e2e/cluster status >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "the local cluster is not running; start it as root: sudo e2e/cluster up"
  log "starting the local cluster (e2e/cluster up); it is left running"
  e2e/cluster up >&2
fi
eval "$(e2e/cluster env)"

log "building release binaries (cellstack-operator, cellstack, the bench example)"
cargo build --release -q -p cellstack-operator --bins --examples
log "building the debug cell image (e2e/scripts/cellstack-images.sh)"
cargo build -q -p cellstack-cell -p cellstack-router -p cellstack-operator --bins
eval "$(e2e/scripts/cellstack-images.sh)"
: "${CELLSTACK_E2E_CELL_IMAGE:?cellstack-images.sh did not export the cell image}"
: "${CELLSTACK_E2E_REDIS_IMAGE:?e2e/cluster env did not export the Redis image}"
kubectl apply --server-side --force-conflicts --field-manager cellstack-tests -f crds/ >/dev/null

bin=target/release
id="b$(printf '%04x%04x' $$ "$RANDOM" | cut -c1-7)"
label="cellstack.dev/bench=$id"
ns="cellstack-bench-$id"
table_ns="cellstack-bench-$id-table"
cells=("$id-c0" "$id-c1" "$id-c2")
work="$(mktemp -d /tmp/cellstack-bench-operator.XXXXXX)"
op_pid=""

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  log "cleaning up ($label)"
  # Tenants first, while the operator still runs: it releases the cells' finalizers once their
  # tenants are gone.
  timeout 900 "$bin/examples/bench_operator" delete-tenants --label "$label" --timeout-secs 840 >&2
  kubectl delete cells -l "$label" --wait=false >/dev/null 2>&1
  for _ in $(seq 1 120); do
    [ -z "$(kubectl get cells -l "$label" -o name 2>/dev/null)" ] && break
    sleep 1
  done
  # No operator to release them (or it did not in time): drop the finalizers.
  for c in $(kubectl get cells -l "$label" -o name 2>/dev/null); do
    kubectl patch "$c" --type merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1
  done
  if [ -n "$op_pid" ]; then
    kill "$op_pid" 2>/dev/null
    for _ in $(seq 1 40); do kill -0 "$op_pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$op_pid" 2>/dev/null
    wait "$op_pid" 2>/dev/null
  fi
  kubectl delete namespace "$ns" "$table_ns" "${cells[@]/#/cell-}" --ignore-not-found --wait=false >/dev/null 2>&1
  kubectl wait --for=delete namespace "$ns" "$table_ns" "${cells[@]/#/cell-}" --timeout=180s >/dev/null 2>&1
  if [ "$rc" != 0 ] && [ -f "$work/operator.log" ]; then
    log "operator log (last 40 lines):"
    tail -40 "$work/operator.log" >&2
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'log "failed: line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT TERM

figure() { # FILE NAME
  sed -n "s/^figure $2=//p" "$1" | tail -1
}
published_tenants() { # the operator's last published table's tenant count, from its /metrics
  curl -fsS --max-time 5 "http://127.0.0.1:$port/metrics" 2>/dev/null |
    awk '$1 == "cellstack_operator_routing_table_tenants" {print $2}'
}
rss() { # PID -> "VmRSS VmHWM" in MiB
  awk '/^VmRSS:/ {r=$2} /^VmHWM:/ {h=$2} END {printf "%.0f %.0f\n", r/1024, h/1024}' "/proc/$1/status"
}

kubectl create namespace "$ns" >/dev/null
kubectl create namespace "$table_ns" >/dev/null
kubectl label namespace "$ns" "$table_ns" "$label" >/dev/null

# 1. The 1M-tenant table, while the cluster is otherwise idle.
log "publishing a $table_tenants-tenant routing table into $table_ns"
timeout 900 "$bin/examples/bench_operator" publish-table --namespace "$table_ns" --tenants "$table_tenants" | tee "$work/table.out"
start=$(date +%s%N)
timeout 300 "$bin/kubectl-cellstack" blast-radius cell-000 --namespace "$table_ns" >"$work/cli.out"
cli_secs=$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN {printf "%.2f", (b - a) / 1e9}')
head -1 "$work/cli.out" >&2
kubectl delete namespace "$table_ns" --wait=false >/dev/null

# 2. Cells and the operator.
log "creating cells ${cells[*]} and starting the operator (selector $label)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# shellcheck disable=SC2086 # BENCH_OPERATOR_ARGS is a list of flags
"${BENCH_OPERATOR_BIN:-$bin/cellstack-operator}" --namespace "$ns" --identity bench --selector "$label" \
  --cell-image "$CELLSTACK_E2E_CELL_IMAGE" --redis-image "$CELLSTACK_E2E_REDIS_IMAGE" \
  --image-pull-policy Never --metrics-listen "127.0.0.1:$port" ${BENCH_OPERATOR_ARGS:-} \
  >"$work/operator.log" 2>&1 &
op_pid=$!
for c in "${cells[@]}"; do
  kubectl apply -f - >/dev/null <<EOF
apiVersion: cellstack.dev/v1alpha1
kind: Cell
metadata:
  name: $c
  labels: {cellstack.dev/bench: "$id"}
spec:
  lanes: 1
  capacity: {maxTenants: 1000000, weight: 100}
  datastore: {managed: {storage: Ephemeral}}
EOF
done
for c in "${cells[@]}"; do
  kubectl wait --for=condition=Ready "cell/$c" --timeout=300s >/dev/null ||
    die "cell $c not Ready within 300s: $(kubectl get cell "$c" -o jsonpath='{.status}')"
done
kill -0 "$op_pid" 2>/dev/null || die "the operator exited"
read -r rss_idle hwm_idle < <(rss "$op_pid")
log "cells Ready; operator RSS ${rss_idle} MiB"

# 3. 10k tenants.
log "creating $small TenantAssignments ($parallelism at a time) and waiting until all are placed"
timeout 700 "$bin/examples/bench_operator" tenants --label "$label" --prefix "$id" \
  --from 0 --to "$small" --parallelism "$parallelism" --timeout-secs 600 \
  --published-metrics "http://127.0.0.1:$port/metrics" | tee "$work/small.out"
read -r rss_small hwm_small < <(rss "$op_pid")
log "operator RSS at $small tenants: ${rss_small} MiB (peak ${hwm_small} MiB)"

# 4. 100k tenants.
if [ "$large" -gt "$small" ]; then
  log "creating $((large - small)) more TenantAssignments and waiting until all $large are placed"
  # Memory is measured even if not every tenant is placed by the deadline (the summary says so).
  large_ok=true
  timeout $((large_timeout + 60)) "$bin/examples/bench_operator" tenants --label "$label" --prefix "$id" \
    --from "$small" --to "$large" --parallelism "$parallelism" --timeout-secs "$large_timeout" \
    --published-metrics "http://127.0.0.1:$port/metrics" \
    >"$work/large.out" 2> >(tee "$work/large.err" >&2) || large_ok=false
  cat "$work/large.out"
  read -r rss_large hwm_large < <(rss "$op_pid")
  log "operator RSS at $large tenants: ${rss_large} MiB (peak ${hwm_large} MiB)"
fi
kill -0 "$op_pid" 2>/dev/null || die "the operator exited"
published=$(published_tenants || true)
events_dropped=$(curl -fsS --max-time 5 "http://127.0.0.1:$port/metrics" 2>/dev/null |
  awk '$1 == "cellstack_operator_events_dropped_total" {print $2}' || true)

# 5. The API server's ceiling: the operator stopped, a bare client writes the same statuses.
log "stopping the operator; the bare client's status writes (the API server's ceiling)"
kill "$op_pid"
wait "$op_pid" 2>/dev/null || true
op_pid=""
timeout 900 "$bin/examples/bench_operator" status-ceiling --label "$label" --count "$small" \
  --parallelism "$parallelism" | tee "$work/ceiling_small.out"
if [ "$large" -gt "$small" ] && $large_ok; then
  timeout 1800 "$bin/examples/bench_operator" status-ceiling --label "$label" --count "$large" \
    --parallelism "$parallelism" | tee "$work/ceiling_large.out"
fi
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "nan"}'; }

cat <<EOF

== bench/operator.sh: $(date -u +%FT%TZ), $(nproc) cores, release build (cargo build --release -p cellstack-operator)
1M-tenant routing table ($(figure "$work/table.out" table_cells) cells, 8 lanes, k=2)
  encoded size                 $(figure "$work/table.out" table_bytes) bytes
  objects                      $(figure "$work/table.out" table_objects) ConfigMaps ($(figure "$work/table.out" table_chunks) chunks + pointer)
  build + encode               $(figure "$work/table.out" table_build_seconds) s
  publish (Publisher)          $(figure "$work/table.out" table_publish_seconds) s
  read back + verify + decode  $(figure "$work/table.out" table_read_verify_seconds) s
  kubectl cellstack blast-radius$cli_secs s (read, verify, count one cell)
$small TenantAssignments, 3 cells, operator running
  created                      $(figure "$work/small.out" create_seconds) s ($parallelism in flight)
  placed + provisioned         $(figure "$work/small.out" placed_seconds) s after the first create
  converged (+ published)      $(figure "$work/small.out" converge_seconds) s after the first create
  after the last create        $(figure "$work/small.out" after_last_create_seconds) s (goal < 15 s)
  bare client, $small status writes $(figure "$work/ceiling_small.out" ceiling_seconds) s ($(figure "$work/ceiling_small.out" ceiling_per_second)/s): ratio $(ratio "$(figure "$work/small.out" after_last_create_seconds)" "$(figure "$work/ceiling_small.out" ceiling_seconds)") (goal <= 1.5)
operator RSS (VmRSS / peak VmHWM)
  cells only                   $rss_idle MiB / $hwm_idle MiB
  at $small tenants            $rss_small MiB / $hwm_small MiB
EOF
if [ "$large" -gt "$small" ]; then
  cat <<EOF
  at $large tenants           $rss_large MiB / $hwm_large MiB
$((large - small)) more TenantAssignments (to $large)
  created                      $(sed -n 's/.*created \([0-9]*\) TenantAssignments in \(.*\); waiting.*/\2 (\1 created)/p' "$work/large.err" | tail -1)
EOF
  if $large_ok; then
    echo "  converged (+ published)      $(figure "$work/large.out" converge_seconds) s after the first of them"
    echo "  after the last create        $(figure "$work/large.out" after_last_create_seconds) s (goal < 60 s)"
    echo "  bare client, $large status writes $(figure "$work/ceiling_large.out" ceiling_seconds) s ($(figure "$work/ceiling_large.out" ceiling_per_second)/s): ratio $(ratio "$(figure "$work/large.out" after_last_create_seconds)" "$(figure "$work/ceiling_large.out" ceiling_seconds)") (goal <= 1.5)"
  else
    echo "  NOT converged within ${large_timeout} s: $(grep -o 'only [0-9]* of [0-9]* tenants placed.*' "$work/large.err" | tail -1)"
  fi
fi
[ -n "$published" ] && echo "tenants in the operator's last published table: $published"
echo "placement Events dropped (queue full; the statuses say the same): ${events_dropped:-?}"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (the machine's other work included)"

# Lines for bench/all.sh's table.
small_after=$(figure "$work/small.out" after_last_create_seconds)
small_ceiling=$(figure "$work/ceiling_small.out" ceiling_seconds)
echo "summary: key=operator.converge_${small}_s value=$small_after goal=<15 what=operator: $small tenants converged, s after the last create"
echo "summary: key=operator.converge_${small}_vs_ceiling value=$(ratio "$small_after" "$small_ceiling") goal=<=1.5 what=operator: $small converged / bare-client status writes"
echo "summary: key=operator.rss_${small}_mib value=$rss_small goal=- what=operator: RSS at $small tenants (MiB)"
if [ "$large" -gt "$small" ]; then
  echo "summary: key=operator.rss_${large}_mib value=$rss_large goal=<256 what=operator: RSS at $large tenants (MiB)"
  if $large_ok; then
    large_after=$(figure "$work/large.out" after_last_create_seconds)
    echo "summary: key=operator.converge_${large}_s value=$large_after goal=<60 what=operator: $large tenants converged, s after the last create"
    echo "summary: key=operator.converge_${large}_vs_ceiling value=$(ratio "$large_after" "$(figure "$work/ceiling_large.out" ceiling_seconds)") goal=<=1.5 what=operator: $large converged / bare-client status writes"
  fi
fi
