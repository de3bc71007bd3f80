#!/usr/bin/env bash
# Operator benchmark on the local cluster (e2e/cluster), from one run:
#   1. publication of a synthetic 1M-tenant routing table with the operator's Publisher into a
#      scratch namespace: chunks, objects, bytes, seconds; the time to read it back and verify
#      it (as a router does), and for `kubectl cellstack blast-radius` to answer from it;
#   2. the time for 1k, then 10k, then 100k TenantAssignments (BENCH_STEPS) to converge with the
#      operator running:
#      placed, provisioned (the status carries the marker of the tenant's record in its cell) and
#      published (the operator's last routing table holds all of them), counted from the last
#      create (goals: 10k < 15 s, 100k < 60 s);
#   3. the operator's RSS (VmRSS, and its peak VmHWM, from /proc/<pid>/status) at each step: when
#      it converged, and settled BENCH_SETTLE_SECS later with nothing changing (the operator gives
#      the heap a burst freed back at most every 20 s, operator/src/heap.rs); per tenant over its
#      RSS with the cells only (goal at 100k < 256 MiB, settled);
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
# Environment: BENCH_STEPS ("1000 10000 100000": ascending tenant counts), BENCH_TABLE_TENANTS
# (1000000), BENCH_TABLE_IDS (uuid: random UUID-shaped tenant ids in the 1M table; sequential:
# tenant-0000000 on, which its zstd compression shrinks about 40 times), BENCH_PARALLELISM (32), BENCH_STEP_TIMEOUT_SECS (1800: each step's deadline),
# BENCH_SETTLE_SECS (30: how long after each step's convergence the settled RSS is read; a fixed
# interval, not a synchronisation), BENCH_OPERATOR_ARGS (extra flags),
# BENCH_OPERATOR_BIN (another operator binary to measure, e.g. an earlier build kept aside for an
# A/B run; default: the release build of this tree), BENCH_LOG_DIR (~/.cache/cellstack: where the
# operator's log of the run is kept, gzipped, so a slow step can be looked into afterwards).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { printf '[bench/operator %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The tenant counts measured in turn, ascending: a curve of time and memory against tenants.
read -r -a steps <<<"${BENCH_STEPS:-1000 10000 100000}"
table_tenants="${BENCH_TABLE_TENANTS:-1000000}"
table_ids="${BENCH_TABLE_IDS:-uuid}"
case "$table_ids" in uuid | sequential) ;; *) die "BENCH_TABLE_IDS must be uuid or sequential (got '$table_ids')" ;; esac
parallelism="${BENCH_PARALLELISM:-32}"
step_timeout="${BENCH_STEP_TIMEOUT_SECS:-1800}"
settle="${BENCH_SETTLE_SECS:-30}"
[[ "$settle" =~ ^[0-9]+$ ]] || die "BENCH_SETTLE_SECS must be a number of seconds (got '$settle')"
prev=0
for n in "${steps[@]}"; do
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -gt "$prev" ] ||
    die "BENCH_STEPS must be ascending tenant counts, such as '1000 10000 100000' (got '${BENCH_STEPS:-}')"
  prev=$n
done

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
  if [ -f "$work/operator.log" ]; then
    local kept="${BENCH_LOG_DIR:-$HOME/.cache/cellstack}/bench-operator-$id-operator.log.gz"
    mkdir -p "$(dirname "$kept")" && gzip -c "$work/operator.log" >"$kept" && log "operator log kept: $kept"
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
timeout 900 "$bin/examples/bench_operator" publish-table --namespace "$table_ns" --tenants "$table_tenants" \
  --ids "$table_ids" | tee "$work/table.out"
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

# 3. The steps: tenants created up to each count in turn, the operator running throughout.
prev=0
step_ok=()
for n in "${steps[@]}"; do
  log "creating $((n - prev)) TenantAssignments ($parallelism at a time), to $n, and waiting until all $n are placed"
  ok=true
  # Memory is measured even if not every tenant is placed by the deadline (the summary says so).
  timeout $((step_timeout + 60)) "$bin/examples/bench_operator" tenants --label "$label" --prefix "$id" \
    --from "$prev" --to "$n" --parallelism "$parallelism" --timeout-secs "$step_timeout" \
    --published-metrics "http://127.0.0.1:$port/metrics" \
    >"$work/step_$n.out" 2> >(tee "$work/step_$n.err" >&2) || ok=false
  cat "$work/step_$n.out"
  read -r r h < <(rss "$op_pid")
  log "operator RSS at $n tenants: $r MiB (peak $h MiB); reading it again in ${settle} s"
  sleep "$settle"
  read -r s _ < <(rss "$op_pid")
  echo "$r $h $s" >"$work/rss_$n"
  log "operator RSS at $n tenants, ${settle} s later: $s MiB"
  step_ok+=("$ok")
  $ok || break
  prev=$n
done
kill -0 "$op_pid" 2>/dev/null || die "the operator exited"
published=$(published_tenants || true)
events_dropped=$(curl -fsS --max-time 5 "http://127.0.0.1:$port/metrics" 2>/dev/null |
  awk '$1 == "cellstack_operator_events_dropped_total" {print $2}' || true)

# 4. The API server's ceiling: the operator stopped, a bare client writes as many statuses as
# each step placed tenants.
log "stopping the operator; the bare client's status writes (the API server's ceiling)"
kill "$op_pid"
wait "$op_pid" 2>/dev/null || true
op_pid=""
for i in "${!step_ok[@]}"; do
  n=${steps[$i]}
  ${step_ok[$i]} || continue
  timeout 1800 "$bin/examples/bench_operator" status-ceiling --label "$label" --count "$n" \
    --parallelism "$parallelism" | tee "$work/ceiling_$n.out"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "nan"}'; }
goal_seconds() { # the issue's goals: 10k < 15 s, 100k < 60 s; none below 10k
  if [ "$1" -ge 100000 ]; then echo "<60"; elif [ "$1" -ge 10000 ]; then echo "<15"; else echo "-"; fi
}

cat <<EOF

== bench/operator.sh: $(date -u +%FT%TZ), $(nproc) cores, release build (cargo build --release -p cellstack-operator)
1M-tenant routing table ($(figure "$work/table.out" table_cells) cells, 8 lanes, k=2, $table_ids tenant ids)
  encoded size                 $(figure "$work/table.out" table_bytes) bytes
  stored (chunks' bytes)       $(figure "$work/table.out" table_stored_bytes) bytes
  objects                      $(figure "$work/table.out" table_objects) ConfigMaps ($(figure "$work/table.out" table_chunks) chunks + pointer)
  build + encode               $(figure "$work/table.out" table_build_seconds) s
  publish (Publisher)          $(figure "$work/table.out" table_publish_seconds) s
  read back + verify + decode  $(figure "$work/table.out" table_read_verify_seconds) s
  kubectl cellstack blast-radius $cli_secs s (read, verify, count one cell)
TenantAssignments on 3 cells, the operator running; its RSS with the cells only: $rss_idle MiB (peak $hwm_idle MiB)
EOF
printf '  %8s  %9s  %-28s  %-26s  %5s  %8s  %8s  %10s  %s\n' tenants created "after the last create (s)" \
  "bare client, same writes" ratio "RSS MiB" "peak MiB" "settled MiB" "KiB/tenant over idle, settled"
for i in "${!step_ok[@]}"; do
  n=${steps[$i]}
  read -r r h s <"$work/rss_$n"
  per=$(awk -v r="$s" -v i="$rss_idle" -v n="$n" 'BEGIN {printf "%.2f", (r - i) * 1024 / n}')
  if ${step_ok[$i]}; then
    after=$(figure "$work/step_$n.out" after_last_create_seconds)
    ceiling=$(figure "$work/ceiling_$n.out" ceiling_seconds)
    printf '  %8s  %9s  %-28s  %-26s  %5s  %8s  %8s  %10s  %s\n' "$n" "$(figure "$work/step_$n.out" create_seconds) s" \
      "$after (goal $(goal_seconds "$n"))" "$ceiling s ($(figure "$work/ceiling_$n.out" ceiling_per_second)/s)" \
      "$(ratio "$after" "$ceiling")" "$r" "$h" "$s" "$per"
  else
    printf '  %8s  NOT converged within %s s: %s; RSS %s MiB (peak %s), %s MiB %s s later\n' "$n" "$step_timeout" \
      "$(grep -o 'only [0-9]* of [0-9]* tenants placed.*' "$work/step_$n.err" | tail -1)" "$r" "$h" "$s" "$settle"
  fi
done
echo
[ -n "$published" ] && echo "tenants in the operator's last published table: $published"
echo "placement Events dropped (queue full; the statuses say the same): ${events_dropped:-?}"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (the machine's other work included)"

# Lines for bench/all.sh's table: every step's RSS, when converged and settled; convergence and
# its ratio to the ceiling for the steps the issue sets goals for (10k and 100k); the RSS goal at
# 100k, on the settled RSS (what the operator holds while nothing changes).
for i in "${!step_ok[@]}"; do
  n=${steps[$i]}
  read -r r _ s <"$work/rss_$n"
  rss_goal="-"
  [ "$n" -ge 100000 ] && rss_goal="<256"
  echo "summary: key=operator.rss_${n}_mib value=$r goal=- what=operator: RSS at $n tenants when converged (MiB)"
  echo "summary: key=operator.rss_${n}_settled_mib value=$s goal=$rss_goal what=operator: RSS at $n tenants, ${settle} s after converging (MiB)"
  if ${step_ok[$i]} && [ "$n" -ge 10000 ]; then
    after=$(figure "$work/step_$n.out" after_last_create_seconds)
    echo "summary: key=operator.converge_${n}_s value=$after goal=$(goal_seconds "$n") what=operator: $n tenants converged, s after the last create"
    echo "summary: key=operator.converge_${n}_vs_ceiling value=$(ratio "$after" "$(figure "$work/ceiling_$n.out" ceiling_seconds)") goal=<=1.5 what=operator: $n converged / bare-client status writes"
  fi
done
