#!/usr/bin/env bash
# Router benchmark: throughput, p50/p99 latency and CPU per request of the same request sent
# directly to a cell, through nginx `proxy_pass` and HAProxy (Debian's packages, upstream
# keep-alive on, one worker each, as their docs advise for this: nginx `keepalive` with HTTP/1.1
# and an emptied Connection header, HAProxy `http-reuse always`) and through cellstack-router
# (one worker thread), from one run with the same load tool (wrk) and settings (ROUNDS
# interleaved rounds, medians compared), then against each peer the ratios
#   throughput router/peer (goal >= 1.2) and added p99 router/peer (goal <= 0.8),
# the same with TLS terminated at the edge (targets nginx-tls, haproxy-tls and router-tls: the
# same self-signed P-256 certificate, TLS 1.3, wrk's keep-alive connections, so the figures are
# the cost of encrypting requests and answers more than of handshakes), and the 1M-tenant
# routing-table figures (cargo bench -p cellstack-router --bench table).
#
# Pinning (on a machine with 2 or more cores): wrk runs on LOAD_CPUS (default: the last core),
# everything else — Redis, the cell, the proxy under test — on SERVER_CPUS (the other cores), so
# the load generator never competes with what it measures, and a proxy's throughput shows what
# its CPU per request leaves the cell.
#
# CPU per request: each process's utime and stime from /proc/<pid>/stat, read just before and
# just after each wrk run, divided by the requests wrk completed in that run; printed for the
# proxy under test (nginx's worker processes, the router) and for the cell, user and kernel
# separately and in total.
#
# Environment:
#   DURATION, CONNECTIONS, THREADS  wrk's -d, -c, -t (10s, 32, 1)
#   ROUNDS                          interleaved rounds (3); each round starts one target later,
#                                   so no target always runs first
#   ROUTER_WORKER_THREADS           the routers' --worker-threads (1: one worker, like the peers)
#   LOAD_CPUS, SERVER_CPUS          taskset CPU lists for wrk and for the rest (see Pinning)
#   ROUTER_PERF                     a path: `perf record -g` of the router (plain HTTP) during
#                                   round N goes to PATH.N (then `perf report -i PATH.1`); its
#                                   figures are then not comparable (sampling costs it CPU)
#   ROUTER_BASELINE                 path of another cellstack-router binary (an older build, say)
#                                   to run as a fourth target, "baseline", in the same rounds;
#                                   the summary then compares router with baseline
#
# Everything listens on 127.0.0.1 and is stopped on exit. Installs nginx and wrk if missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { printf '[bench/router %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

e2e/scripts/install-deps.sh
missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v wrk >/dev/null || missing+=(wrk)
command -v haproxy >/dev/null || missing+=(haproxy)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

DURATION="${DURATION:-10s}" CONNECTIONS="${CONNECTIONS:-32}" THREADS="${THREADS:-1}" ROUNDS="${ROUNDS:-3}"
BASELINE="${ROUTER_BASELINE:-}"
ROUTER_WORKER_THREADS="${ROUTER_WORKER_THREADS:-1}"
cores="$(nproc)"
if [ "$cores" -ge 2 ]; then
  LOAD_CPUS="${LOAD_CPUS:-$((cores - 1))}" SERVER_CPUS="${SERVER_CPUS:-0-$((cores - 2))}"
else
  LOAD_CPUS="${LOAD_CPUS:-0}" SERVER_CPUS="${SERVER_CPUS:-0}"
fi
# Prefix of every server's command: taskset execs it, so $! is the server's own pid (whose CPU
# time is read below), not a subshell's.
server=(taskset -c "$SERVER_CPUS")
if [ -n "$BASELINE" ] && [ ! -x "$BASELINE" ]; then
  echo "ROUTER_BASELINE=$BASELINE is not an executable file" >&2
  exit 1
fi
log "building release binaries"
cargo build --release --locked -q --workspace --bin cellstack-cell --bin cellstack-router --example write_table

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
nginx_tls_port=$(free_port) router_tls_port=$(free_port) router_tls_admin=$(free_port)
haproxy_port=$(free_port) haproxy_tls_port=$(free_port)
baseline_port=$(free_port) baseline_admin=$(free_port)
router_h2_port=$(free_port) router_h2_admin=$(free_port) haproxy_h2_port=$(free_port)
"${server[@]}" redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --dir "$work" >/dev/null &
pids+=($!)
for _ in $(seq 1 200); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis-cli -p "$redis_port" ping >/dev/null || { echo "redis-server did not start" >&2; exit 1; }
echo "bench-admin-token-0123456789" >"$work/token"
"${server[@]}" target/release/cellstack-cell --cell bench --redis-url "redis://127.0.0.1:$redis_port" \
  --listen "127.0.0.1:$cell_port" --admin-listen "127.0.0.1:$cell_admin" \
  --admin-token-file "$work/token" --shed-initial-limit 1024 --drain-delay-secs 0 &
pids+=($!)
cell_pid=$!
wait_http "http://127.0.0.1:$cell_admin/livez"
curl -fsS -X PUT -H 'authorization: Bearer bench-admin-token-0123456789' -H 'content-type: application/json' \
  -d '{"state":"active","epoch":1}' "http://127.0.0.1:$cell_admin/admin/v1/tenants/bench" >/dev/null

target/release/examples/write_table "$work/table.bin" bench "127.0.0.1:$cell_port" bench
# ROUTER_WORKER_THREADS: the router's traffic workers (--worker-threads); default 1, as nginx
# runs one worker process and HAProxy one thread here.
start_router() { # BINARY PORT ADMIN_PORT NAME [ARG...]: starts a router on the table; sets started_pid
  local binary="$1" port="$2" admin="$3" name="$4"
  shift 4
  "${server[@]}" env CELLSTACK_ROUTER_WORKER_THREADS="$ROUTER_WORKER_THREADS" "$binary" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --tenant-from header --table-file "$work/table.bin" --last-known-good "$work/lkg-$name.bin" --drain-delay-secs 0 "$@" &
  pids+=($!)
  started_pid=$!
  wait_http "http://127.0.0.1:$admin/readyz"
}
# One certificate for both TLS targets.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
start_router target/release/cellstack-router "$router_port" "$router_admin" router
router_pid=$started_pid
start_router target/release/cellstack-router "$router_tls_port" "$router_tls_admin" router-tls \
  --tls-cert-file "$work/tls.crt" --tls-key-file "$work/tls.key"
router_tls_pid=$started_pid
# h2 to the lane: one multiplexed connection (prior knowledge) instead of a pool of HTTP/1.1 ones.
start_router target/release/cellstack-router "$router_h2_port" "$router_h2_admin" router-h2 \
  --upstream-protocol h2
router_h2_pid=$started_pid
targets=(direct nginx haproxy router nginx-tls haproxy-tls router-tls haproxy-h2 router-h2)
if [ -n "$BASELINE" ]; then
  start_router "$BASELINE" "$baseline_port" "$baseline_admin" baseline
  baseline_pid=$started_pid
  targets+=(baseline)
  log "baseline router: $BASELINE"
fi

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
  server {
    listen 127.0.0.1:$nginx_tls_port ssl;
    ssl_certificate $work/tls.crt;
    ssl_certificate_key $work/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://cell;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
"${server[@]}" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
pids+=($!)
nginx_pid=$!
wait_http "http://127.0.0.1:$nginx_port/livez" 2>/dev/null || true
nginx_workers="$(pgrep -P "$nginx_pid" | tr '\n' ' ')"
[ -n "$nginx_workers" ] || { echo "no nginx worker process under pid $nginx_pid" >&2; exit 1; }

# HAProxy: one process, one thread, in the foreground; keep-alive both ways (its default
# http-keep-alive mode) and idle server connections shared by every client (http-reuse always:
# the upstream keep-alive its docs advise for a trusted backend).
mkdir -p "$work/haproxy"
cat "$work/tls.crt" "$work/tls.key" >"$work/haproxy/tls.pem"
cat >"$work/haproxy/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend plain
  bind 127.0.0.1:$haproxy_port
  default_backend cell
frontend tls
  bind 127.0.0.1:$haproxy_tls_port ssl crt $work/haproxy/tls.pem alpn http/1.1
  default_backend cell
frontend h2
  bind 127.0.0.1:$haproxy_h2_port
  default_backend cell-h2
backend cell
  server cell 127.0.0.1:$cell_port
backend cell-h2
  server cell 127.0.0.1:$cell_port proto h2
CONF
haproxy -c -q -f "$work/haproxy/haproxy.cfg"
"${server[@]}" haproxy -db -f "$work/haproxy/haproxy.cfg" &
pids+=($!)
haproxy_pid=$!
wait_http "http://127.0.0.1:$haproxy_port/livez" 2>/dev/null || true

clk_tck="$(getconf CLK_TCK)"
cpu_ticks() { # PID...: "utime stime" in clock ticks, summed over the processes (all threads)
  local u=0 s=0 p f
  for p in "$@"; do
    # The fields after "pid (comm) ": f[0] is field 3 (state), f[11] field 14 (utime), f[12]
    # field 15 (stime). The command name may hold spaces, so it is cut off first.
    read -r -a f < <(sed 's/^.*) //' "/proc/$p/stat")
    u=$((u + f[11])) s=$((s + f[12]))
  done
  echo "$u $s"
}

to_ms() { # wrk latency like 1.23ms, 850.00us, 1.02s
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
# Rounds interleave the targets (direct, nginx, router[, baseline], then the next round starting
# one target later) so a slow spell of a shared machine hits all of them alike; the figures
# compared are each target's median over the rounds.
results="$work/results"
: >"$results"
n=${#targets[@]}
for round in $(seq 1 "$ROUNDS"); do
  for i in $(seq 0 $((n - 1))); do
    target=${targets[$(((i + round - 1) % n))]}
    scheme=http
    case $target in
      direct) port=$cell_port proxy_pids="" ;;
      nginx) port=$nginx_port proxy_pids=$nginx_workers ;;
      haproxy) port=$haproxy_port proxy_pids=$haproxy_pid ;;
      haproxy-tls) port=$haproxy_tls_port proxy_pids=$haproxy_pid scheme=https ;;
      router) port=$router_port proxy_pids=$router_pid ;;
      nginx-tls) port=$nginx_tls_port proxy_pids=$nginx_workers scheme=https ;;
      router-tls) port=$router_tls_port proxy_pids=$router_tls_pid scheme=https ;;
      baseline) port=$baseline_port proxy_pids=$baseline_pid ;;
      haproxy-h2) port=$haproxy_h2_port proxy_pids=$haproxy_pid ;;
      router-h2) port=$router_h2_port proxy_pids=$router_h2_pid ;;
    esac
    url="$scheme://127.0.0.1:$port/v1/whoami"
    curl -fsS -k -o /dev/null -H 'x-cellstack-tenant: bench' "$url"
    log "round $round/$ROUNDS: wrk -t$THREADS -c$CONNECTIONS -d$DURATION against $target"
    # shellcheck disable=SC2086 # proxy_pids is a list of pids
    proxy_before=$(if [ -n "$proxy_pids" ]; then cpu_ticks $proxy_pids; else echo "0 0"; fi)
    cell_before=$(cpu_ticks "$cell_pid")
    perf_pid=""
    if [ -n "${ROUTER_PERF:-}" ] && [ "$target" = router ]; then
      perf record -q -F 499 -g -p "$router_pid" -o "$ROUTER_PERF.$round" >/dev/null 2>&1 &
      perf_pid=$!
    fi
    out="$(taskset -c "$LOAD_CPUS" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H 'x-cellstack-tenant: bench' "$url")"
    cell_after=$(cpu_ticks "$cell_pid")
    if [ -n "$perf_pid" ]; then kill -INT "$perf_pid" && wait "$perf_pid" || true; fi
    # shellcheck disable=SC2086
    proxy_after=$(if [ -n "$proxy_pids" ]; then cpu_ticks $proxy_pids; else echo "0 0"; fi)
    errors="$(awk '/Non-2xx|Socket errors/' <<<"$out")"
    [ -z "$errors" ] || log "$target: $errors"
    printf '%s %s %s %s %s %s %s %s %s %s\n' "$round" "$target" \
      "$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")" \
      "$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")" \
      "$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")" \
      "$(awk '/ requests in / { print $1 }' <<<"$out")" \
      "$proxy_before" "$proxy_after" "$cell_before" "$cell_after" >>"$results"
  done
done

printf '\nthe same GET /v1/whoami, wrk -t%s -c%s -d%s on CPUs %s, servers on CPUs %s, router worker threads %s, %s interleaved rounds\n' \
  "$THREADS" "$CONNECTIONS" "$DURATION" "$LOAD_CPUS" "$SERVER_CPUS" "$ROUTER_WORKER_THREADS" "$ROUNDS"
python3 - "$results" "$clk_tck" <<'PY'
import statistics, sys
clk = int(sys.argv[2])
proxy_name = {"direct": None, "nginx": "nginx", "haproxy": "haproxy", "router": "router",
              "nginx-tls": "nginx", "haproxy-tls": "haproxy", "router-tls": "router",
              "haproxy-h2": "haproxy", "router-h2": "router", "baseline": "baseline"}
order = ("direct", "nginx", "haproxy", "router", "nginx-tls", "haproxy-tls", "router-tls",
         "haproxy-h2", "router-h2", "baseline")
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    rnd, target, rps, p50, p99, n = f[0], f[1], float(f[2]), float(f[3]), float(f[4]), int(f[5])
    pu0, ps0, pu1, ps1, cu0, cs0, cu1, cs1 = map(int, f[6:14])
    us = lambda ticks: ticks * 1e6 / clk / n  # CPU µs per request
    cpu = {"cell": (us(cu1 - cu0), us(cs1 - cs0))}
    if proxy_name[target]:
        cpu["proxy"] = (us(pu1 - pu0), us(ps1 - ps0))
    rows.setdefault(target, []).append(dict(rps=rps, p50=p50, p99=p99, cpu=cpu))
    c = "  ".join(f"{k} {u:.1f}+{s:.1f}={u + s:.1f}" for k, (u, s) in cpu.items())
    print(f"  round {rnd} {target:<10} {rps:>8.0f} req/s  p50 {p50:.3f} ms  p99 {p99:.3f} ms  "
          f"CPU µs/req (user+kernel=total): {c}")
targets = [t for t in order if t in rows]
def med(t, key):
    return statistics.median(r[key] for r in rows[t])
def spread(t, key):
    v = [r[key] for r in rows[t]]
    return f"{min(v):.0f}-{max(v):.0f}" if key == "rps" else f"{min(v):.3f}-{max(v):.3f}"
def cpu_med(t, who):
    u = statistics.median(r["cpu"][who][0] for r in rows[t])
    s = statistics.median(r["cpu"][who][1] for r in rows[t])
    tot = [sum(r["cpu"][who]) for r in rows[t]]
    return u, s, statistics.median(tot), min(tot), max(tot)
print("\n  medians over the rounds (min-max in brackets)")
print(f"  {'target':<11} {'req/s':>22} {'p50 ms':>22} {'p99 ms':>22}")
for t in targets:
    print(f"  {t:<11} {med(t, 'rps'):>8.0f} [{spread(t, 'rps'):>11}] {med(t, 'p50'):>7.3f} [{spread(t, 'p50'):>12}]"
          f" {med(t, 'p99'):>7.3f} [{spread(t, 'p99'):>12}]")
print("\n  CPU µs per request, medians (total min-max in brackets)")
print(f"  {'target':<11} {'process':<9} {'user':>6} {'kernel':>7} {'total':>7}")
for t in targets:
    for who in ("proxy", "cell"):
        if who in rows[t][0]["cpu"]:
            u, s, tot, lo, hi = cpu_med(t, who)
            name = proxy_name[t] if who == "proxy" else "cell"
            print(f"  {t:<11} {name:<9} {u:>6.1f} {s:>7.1f} {tot:>7.1f} [{lo:.1f}-{hi:.1f}]")
def added(t, key):
    return med(t, key) - med("direct", key)
def against(router, peers, title):
    """The router's ratios to each peer: throughput, and the latency each adds to direct."""
    print(f"\n  {title}")
    for peer in peers:
        if peer not in rows or router not in rows:
            continue
        tput = med(router, "rps") / med(peer, "rps")
        per_round = ", ".join(f"{r['rps'] / p['rps']:.2f}" for r, p in zip(rows[router], rows[peer]))
        a50, p50 = added(router, "p50"), added(peer, "p50")
        a99, p99 = added(router, "p99"), added(peer, "p99")
        ratio = lambda a, b: a / b if b > 0 else float("nan")
        _, _, rc, _, _ = cpu_med(router, "proxy")
        _, _, pc, _, _ = cpu_med(peer, "proxy")
        kind = router.split("-")[1] if "-" in router else "plain"
        label = {"tls": " (TLS)", "h2": " (h2 to the cell)"}.get(kind, "")
        peer_name = proxy_name[peer] if kind == "tls" else peer.replace("-", "_")
        print(f"summary: key=router.{kind}.throughput_vs_{peer_name} value={tput:.3f} goal=>=1.2 "
              f"what=router{label}: throughput / {peer}'s")
        print(f"summary: key=router.{kind}.added_p99_vs_{peer_name} value={ratio(a99, p99):.3f} goal=<=0.8 "
              f"what=router{label}: added p99 / {peer}'s")
        print(f"    vs {peer:<12} throughput {tput:.2f}x (goal >= 1.2; per round {per_round}); "
              f"added p99 {a99:.3f} vs {p99:.3f} ms = {ratio(a99, p99):.2f}x (goal <= 0.8); "
              f"added p50 {a50:.3f} vs {p50:.3f} ms = {ratio(a50, p50):.2f}x; "
              f"CPU {rc:.1f} vs {pc:.1f} µs/request = {ratio(rc, pc):.2f}x")
        # The proxy, the cell and its Redis share one saturated core, so a target's throughput
        # is about 1 / (the CPU they spend per request). What that predicts, and what the same
        # arithmetic gives for a router that spent no user time at all (only the kernel's part,
        # as measured): the most any change to the router's own code could reach here. Redis's
        # CPU is not read; it would add the same to both sides and bring both ratios nearer 1.
        _, _, rcell, _, _ = cpu_med(router, "cell")
        _, _, pcell, _, _ = cpu_med(peer, "cell")
        _, rk, _, _, _ = cpu_med(router, "proxy")
        print(f"    {'':<15} CPU per request predicts {ratio(pcell + pc, rcell + rc):.2f}x; with no user "
              f"time in the router at all: {ratio(pcell + pc, rcell + rk):.2f}x")
against("router", ("nginx", "haproxy"), "router against each peer (HTTP/1.1 keep-alive in, keep-alive to the cell)")
against("router-tls", ("nginx-tls", "haproxy-tls"), "with TLS at the edge (same certificate, keep-alive connections)")
against("router-h2", ("nginx", "haproxy", "haproxy-h2"),
        "h2 to the cell (router --upstream-protocol h2, HAProxy `proto h2`; nginx proxies HTTP/1.1 only)")
if "router-tls" in rows and "router" in rows:
    for t, plain in (("nginx-tls", "nginx"), ("haproxy-tls", "haproxy"), ("router-tls", "router")):
        if t in rows and plain in rows:
            _, _, with_tls, _, _ = cpu_med(t, "proxy")
            _, _, without, _, _ = cpu_med(plain, "proxy")
            print(f"    {proxy_name[t]} CPU µs/request with TLS {with_tls:.1f}, without {without:.1f}: "
                  f"TLS costs {with_tls - without:+.1f} µs/request")
if "baseline" in rows:
    ab = med("baseline", "p50") - med("direct", "p50")
    print(f"\n  router against baseline (ROUTER_BASELINE), same rounds:")
    print(f"    throughput ratio router/baseline {med('router', 'rps') / med('baseline', 'rps'):.3f}"
          f" (per round: " + ", ".join(f"{r['rps'] / b['rps']:.3f}" for r, b in zip(rows["router"], rows["baseline"])) + ")")
    print(f"    added p50 latency: router {added('router', 'p50'):.3f} ms, baseline {ab:.3f} ms")
    ru, rs, rt, _, _ = cpu_med("router", "proxy")
    bu, bs, bt, _, _ = cpu_med("baseline", "proxy")
    print(f"    router CPU µs/request: router {rt:.2f} ({ru:.2f} user + {rs:.2f} kernel), "
          f"baseline {bt:.2f} ({bu:.2f} + {bs:.2f}), difference {rt - bt:+.2f}")
PY
echo
cargo bench --locked -q --workspace --bench table 2>/dev/null | sed -n '/routing table/,$p'
