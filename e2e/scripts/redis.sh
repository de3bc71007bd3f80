#!/usr/bin/env bash
# A throwaway redis-server on a free loopback port, for tests that need Redis.
#
# Usage: e2e/scripts/redis.sh up|down|env|--help
#   up    install redis-server from Debian if missing, start a private instance without
#         persistence on a free 127.0.0.1 port and wait until it answers PING. Does nothing if
#         this instance is already up; cleans up first if a previous run left a dead one behind.
#   down  stop the instance `up` started (by recorded pid) and remove its state directory.
#         Safe to run when nothing is up.
#   env   print `export CELLSTACK_TEST_REDIS_URL=redis://127.0.0.1:PORT`;
#         use as: eval "$(e2e/scripts/redis.sh env)"
#
# Environment:
#   CELLSTACK_REDIS_DIR      state directory: pid, port and log (default /tmp/cellstack-redis).
#                            Instances with different directories run side by side.
#   CELLSTACK_REDIS_TIMEOUT  seconds to wait for the server to answer (default 30).
#
# The distro's redis-server service (port 6379) is never used, and the install does not start it.
set -euo pipefail

state="$(realpath -m "${CELLSTACK_REDIS_DIR:-/tmp/cellstack-redis}")"
wait_secs="${CELLSTACK_REDIS_TIMEOUT:-30}"
pid_file="$state/redis.pid"
port_file="$state/port"
log_file="$state/redis.log"
marker="$state/.cellstack-redis"   # proves the directory is ours before `rm -rf`

log() { printf '[redis %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

# ours PID: true if PID is a live redis-server started for this state directory (its --dir is
# under it). A recycled pid fails that check, and so does a zombie (empty cmdline).
ours() {
  local pid="$1" cmdline
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
  [[ "$cmdline" == *"$state/"* ]]
}

recorded_pid() { cat "$pid_file" 2>/dev/null || true; }
answers_ping() { [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]; }

# Serialise up/down on one state directory. The lock sits beside the directory, which `down` removes.
lock() {
  mkdir -p "$(dirname "$state")"
  exec 9>"$state.lock"
  flock --nonblock 9 && return 0
  log "waiting for another up/down on $state to finish"
  flock 9
}

install_redis() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "redis-server not found; install the Debian package redis-server"
  log "redis-server not found; installing the Debian package"
  # The package's postinst starts the distro service on 6379 unless policy-rc.d(8) forbids it.
  # Forbid it for the duration of the install, unless the machine already has a policy.
  local policy=/usr/sbin/policy-rc.d rc=0
  if [ -e "$policy" ]; then
    policy=""
  else
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
  fi
  {
    apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server
  } >&2 || rc=$?
  [ -z "$policy" ] || rm -f "$policy"
  [ "$rc" = 0 ] || die "installing redis-server failed (apt-get exit status $rc)"
}

# stop: SIGTERM the recorded server, SIGKILL it if still there after 10 s, verify it is gone.
stop() {
  local pid deadline
  pid="$(recorded_pid)"
  ours "$pid" || return 0
  log "stopping redis-server (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + 10))
  while ours "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
  ours "$pid" || return 0
  log "redis-server still running 10s after SIGTERM; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  deadline=$((SECONDS + 5))
  while ours "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
  if ours "$pid"; then die "redis-server (pid $pid) survived SIGKILL"; fi
}

remove_state() {
  [ -e "$state" ] || return 0
  # Never `rm -rf` a directory this script did not create.
  if [ ! -f "$marker" ] && [ -n "$(ls -A "$state")" ]; then
    die "$state exists but was not created by $0; not removing it"
  fi
  rm -rf "$state"
}

# A port outside the ephemeral range (lib.sh's pick_ports says why).
free_port() { (
  # shellcheck source-path=SCRIPTDIR source=lib.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
  pick_ports 1
); }

fail_with_log() {
  log "error: $1"
  log "last lines of $log_file:"
  tail -n 40 "$log_file" >&2 || true
  stop || true
  exit 1
}

cmd_up() {
  local port pid deadline
  install_redis
  lock

  if [ -f "$port_file" ] && ours "$(recorded_pid)" && answers_ping "$(cat "$port_file")"; then
    log "already up on 127.0.0.1:$(cat "$port_file") (pid $(recorded_pid))"
    return 0
  fi
  if [ -e "$state" ]; then
    log "found a stale or unhealthy instance in $state; cleaning it up"
    stop
    remove_state
  fi

  mkdir -p "$state/data"
  : >"$marker"
  port="$(free_port)"
  echo "$port" >"$port_file"
  log "starting $(redis-server --version | cut -d' ' -f1-3) on 127.0.0.1:$port"
  # setsid: own session, so the server outlives this script and ignores the caller's Ctrl-C;
  # it execs in place (a background job is never a process-group leader), so $! is its pid.
  # --save '' --appendonly no: no persistence at all; --dir only keeps stray files in $state.
  # --set-proc-title no: keep the real command line, which `ours` checks before signalling.
  # --logfile '': log to stdout, i.e. the log file.
  # 9>&-: the server must not inherit the lock's fd, or it would block every later up/down.
  setsid redis-server \
    --bind 127.0.0.1 \
    --port "$port" \
    --save '' \
    --appendonly no \
    --dir "$state/data" \
    --daemonize no \
    --set-proc-title no \
    --logfile '' \
    </dev/null >"$log_file" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$pid_file"

  deadline=$((SECONDS + wait_secs))
  until answers_ping "$port"; do
    ours "$pid" || fail_with_log "redis-server exited before answering PING"
    ((SECONDS < deadline)) || fail_with_log "timed out after ${wait_secs}s waiting for PONG on port $port"
    sleep 0.1
  done
  log "redis-server is up (pid $pid); use it with:"
  echo "  export CELLSTACK_TEST_REDIS_URL=redis://127.0.0.1:$port   # or: eval \"\$($0 env)\"" >&2
}

cmd_down() {
  lock
  if [ ! -e "$state" ]; then
    log "nothing to stop: $state does not exist"
    return 0
  fi
  stop
  remove_state
  log "stopped; removed $state"
}

cmd_env() {
  [ -f "$port_file" ] || die "no redis in $state; run: $0 up"
  echo "export CELLSTACK_TEST_REDIS_URL=redis://127.0.0.1:$(cat "$port_file")"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
