#!/usr/bin/env bash
# Prometheus as a process on this machine, scraping the cluster in KUBECONFIG through
# Kubernetes service discovery (e2e/prometheus/prometheus.yml) and evaluating the rules put in its
# rules directory: the chart's alert and recording rules for the demo and the e2e suites.
#
# Usage: e2e/scripts/prometheus.sh up|down|env|rules FILE|alerts|--help
#   up          start it on a free 127.0.0.1 port (KUBECONFIG must name the cluster) and wait
#               until it is ready. Does nothing if this instance is already up.
#   down        stop it and remove its state directory. Safe when nothing is up.
#   env         print `export CELLSTACK_PROMETHEUS_URL=... CELLSTACK_PROMETHEUS_RULES_DIR=...`.
#   rules FILE  put the rules file FILE (e.g. the chart's cellstack.rules.yaml) into its rules
#               directory and reload; fails if Prometheus refuses it.
#   alerts      print the alerts that are firing (or pending), one per line.
#
# Environment:
#   CELLSTACK_PROMETHEUS_DIR  state directory: pid, port, config, rules, data, log (default
#                             /tmp/cellstack-prometheus). Instances with different ones coexist.
#
# Prometheus and promtool are the pinned build of e2e/scripts/build-prometheus.sh (through the Go
# module proxy; `up` builds it when missing): Debian 12's package lacks Kubernetes discovery.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=versions.sh
. "$here/versions.sh"
log_prefix=prometheus
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

state="$(realpath -m "${CELLSTACK_PROMETHEUS_DIR:-/tmp/cellstack-prometheus}")"
pid_file="$state/prometheus.pid"
port_file="$state/port"
marker="$state/.cellstack-prometheus"

# ours PID: a live prometheus started for this state directory.
ours_pid() {
  local pid="$1" cmdline
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
  [[ "$cmdline" == *"$state/"* ]]
}
recorded_pid() { cat "$pid_file" 2>/dev/null || true; }
url() { printf 'http://127.0.0.1:%s' "$(cat "$port_file")"; }
ready() { curl -fsS --max-time 2 "$(url)/-/ready" >/dev/null 2>&1; }

stop() {
  local pid
  pid="$(recorded_pid)"
  ours_pid "$pid" || return 0
  log "stopping prometheus (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do ours_pid "$pid" || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

up() {
  "$here/build-prometheus.sh"
  [ -n "${KUBECONFIG:-}" ] && [ -f "$KUBECONFIG" ] || die "KUBECONFIG must name the cluster to scrape (eval \"\$(e2e/cluster env)\")"
  if ours_pid "$(recorded_pid)" && ready; then
    log "already up at $(url)"
    return 0
  fi
  stop
  [ -e "$marker" ] && rm -rf "$state"
  mkdir -p "$state/rules" "$state/data"
  touch "$marker"
  pick_ports 1 >"$port_file"
  sed -e "s#@KUBECONFIG@#$(realpath "$KUBECONFIG")#" -e "s#@RULES_DIR@#$state/rules#" \
    "$here/../prometheus/prometheus.yml" >"$state/prometheus.yml"
  "$PROMTOOL_BIN" check config "$state/prometheus.yml" >&2 || die "promtool refused $state/prometheus.yml"
  setsid "$PROMETHEUS_BIN" \
    --config.file="$state/prometheus.yml" \
    --storage.tsdb.path="$state/data" \
    --storage.tsdb.retention.time=6h \
    --web.listen-address="127.0.0.1:$(cat "$port_file")" \
    --web.enable-lifecycle \
    >"$state/prometheus.log" 2>&1 </dev/null &
  echo $! >"$pid_file"
  for _ in $(seq 300); do
    if ready; then log "up at $(url) (log $state/prometheus.log)"; return 0; fi
    ours_pid "$(recorded_pid)" || { tail -20 "$state/prometheus.log" >&2; die "prometheus exited"; }
    sleep 0.1
  done
  die "prometheus did not get ready within 30 s; see $state/prometheus.log"
}

rules() {
  local file="$1"
  [ -f "$file" ] || die "no rules file $file"
  "$PROMTOOL_BIN" check rules "$file" >&2 || die "promtool refused $file"
  cp "$file" "$state/rules/$(basename "$file")"
  curl -fsS --max-time 10 -X POST "$(url)/-/reload" >/dev/null || die "prometheus refused to reload (see $state/prometheus.log)"
  log "loaded rules $(basename "$file")"
}

alerts() {
  curl -fsS --max-time 10 "$(url)/api/v1/alerts" | python3 -c '
import json, sys
for a in json.load(sys.stdin)["data"]["alerts"]:
    labels = ",".join(f"{k}={v}" for k, v in sorted(a["labels"].items()) if k not in ("alertname",))
    state, name = a["state"], a["labels"]["alertname"]
    print(f"{state:8} {name} {labels}")
'
}

case "${1:-}" in
  up) up ;;
  down) stop; [ -e "$marker" ] && rm -rf "$state"; true ;;
  env)
    [ -f "$port_file" ] || die "not up (e2e/scripts/prometheus.sh up)"
    printf 'export CELLSTACK_PROMETHEUS_URL=%s CELLSTACK_PROMETHEUS_RULES_DIR=%s\n' "$(url)" "$state/rules" ;;
  rules) [ -n "${2:-}" ] || die "usage: rules FILE"; rules "$2" ;;
  alerts) alerts ;;
  -h | --help) usage ;;
  *) usage >&2; exit 2 ;;
esac
