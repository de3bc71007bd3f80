#!/usr/bin/env bash
# A router swapping in a 1M-tenant routing table under load, once for each source in
# BENCH_TABLE_SOURCES ("file kubernetes"):
#   - file: the table is written to a file (a new file renamed over it) that the router reads
#     with --table-file: the router's own cost of a swap (read, decode, index, persist, free);
#   - kubernetes: the operator's Publisher publishes it into a scratch namespace of the local
#     cluster (e2e/cluster) and the router reads it with --kubernetes, the chart's source: the
#     same, plus receiving 27 MB of ConfigMaps from an API server on the same 2 cores.
# For each:
#   1. a synthetic table of BENCH_TABLE_TENANTS tenants is delivered and the router serves it;
#   2. BENCH_CONNECTIONS closed loops of `GET /v1/whoami` for one tenant of that table, served
#      by a real cell (cellstack-cell on a host Redis), go through the router for
#      BENCH_STEADY_SECS of steady state; then a second table (every synthetic tenant's epoch
#      changed) is delivered under that load, and the loops go on until 1 s after the router
#      serves it;
#   3. the latency (p50, p99, p99.9, max) of the requests started in the steady window and of
#      those started between the second delivery and 1 s after the router served it, and the
#      ratio of the two p99.9s (goal <= 1.2); from Kubernetes, the pickup of the second table
#      (goal < 10 s).
# The router, the cell and Redis run on SERVER_CPUS, the load on LOAD_CPUS (as in bench/router.sh).
# The publisher (a thread of the load generator's process) and the local cluster's control plane
# and node agents (etcd, the API server, the controller manager, the scheduler, the kubelets...)
# run under SCHED_IDLE while this measures (BENCH_CONTROL_PLANE_IDLE=1, put back on exit): they
# stand in for machines of their own. At normal priority on 2 cores they take the load
# generator's or the router's CPU in the swap window, and every wake-up they delay is counted by
# the load generator as the router's latency. The router's own table work runs at the priorities
# it ships with.
#
# Environment: BENCH_TABLE_TENANTS (1000000), BENCH_TABLE_IDS (uuid: random UUID-shaped tenant
# ids, which the published table's zstd barely shrinks; sequential: tenant-0000000 on, which it
# shrinks about 40 times), BENCH_TABLE_COMPRESSION (zstd, the operator's default, or none: how
# the published chunks store the table), BENCH_CONNECTIONS (8), BENCH_STEADY_SECS (10),
# BENCH_TABLE_SOURCES (file kubernetes), BENCH_ROUTER_ARGS (extra router flags),
# BENCH_CONTROL_PLANE_IDLE (1; 0 leaves the cluster's processes as they are), BENCH_ROUTER_BIN
# (another cellstack-router binary to measure instead of this tree's, for an A/B of two builds
# in interleaved runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { printf '[bench/table-swap %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

tenants="${BENCH_TABLE_TENANTS:-1000000}"
connections="${BENCH_CONNECTIONS:-8}"
steady="${BENCH_STEADY_SECS:-10}"
sources="${BENCH_TABLE_SOURCES:-file kubernetes}"
ids="${BENCH_TABLE_IDS:-uuid}"
compression="${BENCH_TABLE_COMPRESSION:-zstd}"
case "$compression" in zstd | none) ;; *) die "BENCH_TABLE_COMPRESSION must be zstd or none (got '$compression')" ;; esac
case "$ids" in uuid | sequential) ;; *) die "BENCH_TABLE_IDS must be uuid or sequential (got '$ids')" ;; esac
cores="$(nproc)"
if [ "$cores" -ge 2 ]; then
  LOAD_CPUS="${LOAD_CPUS:-$((cores - 1))}" SERVER_CPUS="${SERVER_CPUS:-0-$((cores - 2))}"
else
  LOAD_CPUS="${LOAD_CPUS:-0}" SERVER_CPUS="${SERVER_CPUS:-0}"
fi
server=(taskset -c "$SERVER_CPUS")

e2e/scripts/install-deps.sh
if ! e2e/cluster status >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "the local cluster is not running; start it as root: sudo e2e/cluster up"
  log "starting the local cluster (e2e/cluster up); it is left running"
  e2e/cluster up >&2
fi
eval "$(e2e/cluster env)"
cluster_state="${CELLSTACK_CLUSTER_DIR:-/tmp/cellstack-cluster}"
control_idle="${BENCH_CONTROL_PLANE_IDLE:-1}"
# cluster_policy idle|other: every thread of every process the cluster recorded a pid for.
cluster_policy() {
  local pid flag=-o
  [ "$1" = idle ] && flag=-i
  for pid in $(cat "$cluster_state"/control-plane/run/*.pid "$cluster_state"/run/*.pid 2>/dev/null); do
    chrt -a "$flag" -p 0 "$pid" >/dev/null 2>&1 || true
  done
}

log "building release binaries (cellstack-cell, cellstack-router, the bench example)"
# --workspace, as bench/router.sh builds: the same features, so the two share their build.
cargo build --release --locked -q --workspace --bin cellstack-cell --bin cellstack-router --example bench_operator
bin=target/release
router_bin="${BENCH_ROUTER_BIN:-$bin/cellstack-router}"
[ -x "$router_bin" ] || die "no router binary at $router_bin"
log "router under test: $router_bin"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() { # URL
  for _ in $(seq 1 200); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.05; done
  die "not ready: $1"
}
id="s$(printf '%04x%04x' $$ "$RANDOM" | cut -c1-7)"
ns="cellstack-bench-$id"
work="$(mktemp -d /tmp/cellstack-bench-table-swap.XXXXXX)"
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  [ "$control_idle" = 0 ] || cluster_policy other
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

redis_port=$(free_port) cell_port=$(free_port) cell_admin=$(free_port)
"${server[@]}" redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --dir "$work" >/dev/null &
pids+=($!)
for _ in $(seq 1 200); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
echo "bench-admin-token-0123456789" >"$work/token"
"${server[@]}" "$bin/cellstack-cell" --cell served --redis-url "redis://127.0.0.1:$redis_port" \
  --listen "127.0.0.1:$cell_port" --admin-listen "127.0.0.1:$cell_admin" \
  --admin-token-file "$work/token" --drain-delay-secs 0 >"$work/cell.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$cell_admin/livez"
curl -fsS -X PUT -H 'authorization: Bearer bench-admin-token-0123456789' -H 'content-type: application/json' \
  -d '{"state":"active","epoch":1}' "http://127.0.0.1:$cell_admin/admin/v1/tenants/bench" >/dev/null

kubectl create namespace "$ns" >/dev/null
kubectl label namespace "$ns" cellstack.dev/bench="$id" >/dev/null
[ "$control_idle" = 0 ] || cluster_policy idle

figure() { awk -F= -v k="figure $2" '$1 == k {print $2}' "$1"; }
summaries=()
# swap_run SOURCE: a router fed from SOURCE (file: --table-file, which the publisher thread
# writes; kubernetes: --kubernetes, which it publishes into $ns), the load, the second table.
swap_run() {
  local source="$1" router_port router_admin router_pid rss_kib out="$work/swap-$1.out" delivered
  local from=() file_arg=()
  router_port=$(free_port) router_admin=$(free_port)
  case "$source" in
    file)
      from=(--table-file "$work/table.bin" --table-poll-ms 200)
      file_arg=(--table-file "$work/table.bin")
      delivered="written to a file (--table-file, polled every 200 ms)" ;;
    kubernetes)
      from=(--kubernetes --namespace "$ns")
      delivered="published with the operator's Publisher (--kubernetes)" ;;
    *) die "BENCH_TABLE_SOURCES: unknown source $source (file, kubernetes)" ;;
  esac
  # shellcheck disable=SC2086 # BENCH_ROUTER_ARGS is a list of flags
  "${server[@]}" "$router_bin" --listen "127.0.0.1:$router_port" --admin-listen "127.0.0.1:$router_admin" \
    --tenant-from header "${from[@]}" --last-known-good "$work/lkg-$source.bin" \
    --drain-delay-secs 0 ${BENCH_ROUTER_ARGS:-} >"$work/router-$source.log" 2>&1 &
  router_pid=$!
  pids+=("$router_pid")
  wait_http "http://127.0.0.1:$router_admin/livez"

  log "$source: a table of $tenants tenants; $connections connections through the router, ${steady}s steady, then a second table"
  taskset -c "$LOAD_CPUS" "$bin/examples/bench_operator" table-swap --namespace "$ns" --tenants "$tenants" \
    --router "http://127.0.0.1:$router_port" --router-metrics "http://127.0.0.1:$router_admin/metrics" \
    --lane "127.0.0.1:$cell_port" --tenant bench --connections "$connections" --steady-secs "$steady" \
    --ids "$ids" --compression "$compression" "${file_arg[@]}" >"$out" || { tail -20 "$work/router-$source.log" >&2; die "table-swap ($source) failed"; }
  rss_kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$router_pid/status")
  kill "$router_pid" 2>/dev/null
  wait "$router_pid" 2>/dev/null || true

  f() { figure "$out" "$1"; }
  cat <<EOF

-- table from $source: $(f table_tenants) tenants ($ids ids$([ "$source" = kubernetes ] && echo ", chunks: $compression")), $delivered
  first table: delivered in $(f first_publish_seconds) s, served by the router $(f first_pickup_seconds) s after delivery began
  second table, under load: delivered in $(f swap_publish_seconds) s, served $(f swap_pickup_seconds) s after delivery began (goal < 10 s)
  router RSS after the swap: $((rss_kib / 1024)) MiB
  requests through the router ($connections closed loops, one tenant)
    window   requests  errors   req/s    p50 ms   p99 ms   p99.9 ms  max ms
    steady   $(printf '%8s %7s %7s %8s %8s %9s %8s' "$(f steady_requests)" "$(f steady_errors)" "$(f steady_per_second)" "$(f steady_p50_ms)" "$(f steady_p99_ms)" "$(f steady_p999_ms)" "$(f steady_max_ms)")
    swap     $(printf '%8s %7s %7s %8s %8s %9s %8s' "$(f swap_requests)" "$(f swap_errors)" "$(f swap_per_second)" "$(f swap_p50_ms)" "$(f swap_p99_ms)" "$(f swap_p999_ms)" "$(f swap_max_ms)")
    p99.9 during the swap / steady: $(f swap_p999_ratio) (goal <= 1.2)
EOF
  summaries+=(
    "summary: key=router.table_swap_p999_ratio_$source value=$(f swap_p999_ratio) goal=<=1.2 what=router: p99.9 while a $tenants-tenant table swaps in ($source) / steady"
    "summary: key=router.table_swap_errors_$source value=$(f swap_errors) goal=<=0 what=router: failed requests while a $tenants-tenant table swaps in ($source)"
  )
  if [ "$source" = kubernetes ]; then
    summaries+=("summary: key=router.table_${tenants}_pickup_s value=$(f swap_pickup_seconds) goal=<10 what=router: a $tenants-tenant table published and served under load (s)")
  fi
}

cat <<EOF

== bench/table-swap.sh: $(date -u +%FT%TZ), $(nproc) cores, release build; router and cell on CPUs $SERVER_CPUS, load on $LOAD_CPUS
publisher under SCHED_IDLE, the cluster's processes $([ "$control_idle" = 0 ] && echo 'as they were' || echo 'under SCHED_IDLE'); the router's table work at its own priority (nice 5)
EOF
for source in $sources; do swap_run "$source"; done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%s\n' "${summaries[@]}"
