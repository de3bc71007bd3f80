#!/usr/bin/env bash
# Move benchmark on the local cluster (e2e/cluster): tenants of 10k and 100k keys moved back and
# forth between two cells (5 moves each) while a checker writes through the router; prints every
# move (rolled-back ones too) with its duration, bulk copy rate (keys/s), write pause (Fence to
# Flip, as the operator recorded it) and the checker's write latency, then per size the moves
# done and rolled back, the pause p50 and p99 (p99 only with >= 100 moves: BENCH_MOVES=100;
# otherwise the maximum) and the mean copy rate. Goals on this machine (#25): pause < 50 ms (the
# maximum of >= 10 moves, p99 with >= 100), copy >= 100k keys/s. Then a drain: 10 tenants of 10k
# keys, each under its own writer, moved out of one cell at once (--drain-concurrency=10): its
# total time and the worst write pause.
#
# Release builds throughout: operator and router binaries, and cell images built from release
# binaries (CELLSTACK_PROFILE=release e2e/scripts/cellstack-images.sh). Each size runs in its
# own test namespace and label; everything it creates is deleted at the end, failure included.
#
# Then the ceiling beside the copy rate: redis-benchmark's pipelined SET (-P 64, 50 clients,
# random keys) against a redis-server on this machine, keys/s.
#
# Environment: BENCH_MOVE_SIZES (10000,100000; empty: none, the drain only), BENCH_MOVES (5),
# BENCH_DRAIN_TENANTS (10; 0: no drain), BENCH_DRAIN_KEYS (10000), BENCH_OPERATOR_BIN (another
# cellstack-operator binary to run instead of this tree's, for an A/B of two builds).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { printf '[bench/moves %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

if ! e2e/cluster status >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "the local cluster is not running; start it as root: sudo e2e/cluster up"
  log "starting the local cluster (e2e/cluster up); it is left running"
  e2e/cluster up >&2
fi
eval "$(e2e/cluster env)"

log "building release binaries (cell, router, operator)"
cargo build --release -q -p cellstack-cell -p cellstack-router -p cellstack-operator --bins
log "building release cell images"
eval "$(CELLSTACK_PROFILE=release e2e/scripts/cellstack-images.sh)"
: "${CELLSTACK_E2E_CELL_IMAGE:?cellstack-images.sh did not export the cell image}"
kubectl apply --server-side --force-conflicts --field-manager cellstack-tests -f crds/ >/dev/null

log "running (cargo bench -p cellstack-operator --bench moves)"
cargo bench -q -p cellstack-operator --bench moves

log "the ceiling: redis-benchmark pipelined SET on this machine"
e2e/scripts/install-deps.sh >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
sets=$(redis-benchmark -p "$port" -t set -P 64 -c 50 -n 2000000 -r 1000000 -q --csv |
  awk -F'"' '$2 == "SET" {print $4}')
echo "ceiling: redis-benchmark SET -P 64 -c 50: ${sets} keys/s"
echo "summary: key=moves.ceiling_set_per_s value=${sets%.*} goal=- what=moves: ceiling, redis-benchmark pipelined SET keys/s"
