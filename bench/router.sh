#!/usr/bin/env bash
# Router benchmark: throughput and p50/p99 latency of the same request sent directly to a cell,
# through nginx `proxy_pass` (Debian's nginx, upstream keepalive) and through cellstack-router,
# from one run with the same load tool (wrk) and settings (ROUNDS interleaved rounds, medians
# compared), then the ratios
#   added latency router/nginx (goal <= 1.2) and throughput router/nginx (goal >= 1.0),
# and the 1M-tenant routing-table figures (cargo bench -p cellstack-router --bench table).
#
# Everything listens on 127.0.0.1 and is stopped on exit. Installs nginx and wrk if missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { printf '[bench/router %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

e2e/scripts/install-deps.sh
missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v wrk >/dev/null || missing+=(wrk)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

DURATION="${DURATION:-10s}" CONNECTIONS="${CONNECTIONS:-32}" THREADS="${THREADS:-1}" ROUNDS="${ROUNDS:-3}"
log "building release binaries"
cargo build --release --locked -q -p cellstack-cell -p cellstack-router --bins --examples

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
work="$(mktemp -d /tmp/cellstack-bench-router.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
wait_http() { # URL
  for _ in $(seq 1 200); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "not ready: $1" >&2; return 1
}

redis_port=$(free_port) cell_port=$(free_port) cell_admin=$(free_port) nginx_port=$(free_port) router_port=$(free_port) router_admin=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --dir "$work" >/dev/null &
pids+=($!)
for _ in $(seq 1 200); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis-cli -p "$redis_port" ping >/dev/null || { echo "redis-server did not start" >&2; exit 1; }
echo "bench-admin-token-0123456789" >"$work/token"
target/release/cellstack-cell --cell bench --redis-url "redis://127.0.0.1:$redis_port" \
  --listen "127.0.0.1:$cell_port" --admin-listen "127.0.0.1:$cell_admin" \
  --admin-token-file "$work/token" --shed-initial-limit 1024 --drain-delay-secs 0 &
pids+=($!)
wait_http "http://127.0.0.1:$cell_admin/livez"
curl -fsS -X PUT -H 'authorization: Bearer bench-admin-token-0123456789' -H 'content-type: application/json' \
  -d '{"state":"active","epoch":1}' "http://127.0.0.1:$cell_admin/admin/v1/tenants/bench" >/dev/null

target/release/examples/write_table "$work/table.bin" bench "127.0.0.1:$cell_port" bench
# ROUTER_WORKER_THREADS: the router's traffic workers (--worker-threads); default: one per
# core. nginx here runs one worker process.
env ${ROUTER_WORKER_THREADS:+CELLSTACK_ROUTER_WORKER_THREADS=$ROUTER_WORKER_THREADS} target/release/cellstack-router --listen "127.0.0.1:$router_port" --admin-listen "127.0.0.1:$router_admin" \
  --table-file "$work/table.bin" --last-known-good "$work/lkg.bin" --drain-delay-secs 0 &
pids+=($!)
wait_http "http://127.0.0.1:$router_admin/readyz"

mkdir -p "$work/nginx/logs"
cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream cell { server 127.0.0.1:$cell_port; keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://cell;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
pids+=($!)
wait_http "http://127.0.0.1:$nginx_port/livez" 2>/dev/null || true

to_ms() { # wrk latency like 1.23ms, 850.00us, 1.02s
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
# Rounds interleave the targets (direct, nginx, router, direct, ...) so a slow spell of a shared
# machine hits all three alike; the figures compared are each target's median over the rounds.
results="$work/results"
: >"$results"
for round in $(seq 1 "$ROUNDS"); do
  for target in direct nginx router; do
    case $target in
      direct) port=$cell_port ;;
      nginx) port=$nginx_port ;;
      router) port=$router_port ;;
    esac
    url="http://127.0.0.1:$port/v1/whoami"
    curl -fsS -o /dev/null -H 'x-cellstack-tenant: bench' "$url"
    log "round $round/$ROUNDS: wrk -t$THREADS -c$CONNECTIONS -d$DURATION against $target"
    out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H 'x-cellstack-tenant: bench' "$url")"
    errors="$(awk '/Non-2xx|Socket errors/' <<<"$out")"
    [ -z "$errors" ] || log "$target: $errors"
    printf '%s %s %s %s %s\n' "$round" "$target" \
      "$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")" \
      "$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")" \
      "$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")" >>"$results"
  done
done

printf '\nthe same GET /v1/whoami, wrk -t%s -c%s -d%s, %s interleaved rounds\n' "$THREADS" "$CONNECTIONS" "$DURATION" "$ROUNDS"
python3 - "$results" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
by = {}
for rnd, target, rps, p50, p99 in rows:
    by.setdefault(target, []).append((float(rps), float(p50), float(p99)))
    print(f"  round {rnd} {target:<7} {float(rps):>10.0f} req/s  p50 {float(p50):.3f} ms  p99 {float(p99):.3f} ms")
med = {t: [statistics.median(v[i] for v in vals) for i in range(3)] for t, vals in by.items()}
print(f"  {'median':<8} {'req/s':>12} {'p50_ms':>10} {'p99_ms':>10}")
for t in ("direct", "nginx", "router"):
    rps, p50, p99 = med[t]
    print(f"  {t:<8} {rps:>12.0f} {p50:>10.3f} {p99:>10.3f}")
an = med["nginx"][1] - med["direct"][1]
ar = med["router"][1] - med["direct"][1]
ratio = ar / an if an > 0 else float("nan")
print(f"  added p50 latency: nginx {an:.3f} ms, router {ar:.3f} ms, ratio router/nginx {ratio:.2f} (goal <= 1.2)")
print(f"  throughput ratio router/nginx {med['router'][0] / med['nginx'][0]:.2f} (goal >= 1.0)")
PY
echo
cargo bench --locked -q -p cellstack-router --bench table 2>/dev/null | sed -n '/routing table/,$p'
