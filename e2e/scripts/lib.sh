# Shared bash for e2e/control-plane, e2e/cluster and e2e/scripts/images.sh. Sourced, not executed.
#
# Process helpers work on a "state directory" and expect these globals from the sourcing script:
#   state      absolute path of the state directory (every launched command line mentions it)
#   logs, run  $state/logs (NAME.log) and $state/run (NAME.pid)
#   pki        certificates (for the PKI helpers)
#   marker     file proving $state was created by the script (checked before `rm -rf`)
#   wait_secs  default deadline of wait_until, in seconds
#   log_prefix the name shown in log lines, e.g. "control-plane"
# shellcheck shell=bash disable=SC2154  # the globals above are set by the sourcing script

log() { printf '[%s %(%H:%M:%S)T] %s\n' "${log_prefix:-cellstack}" -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
# usage: print the script's header comment (from line 2 to the first line not starting with #).
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

# --- scripts that build or fetch one thing into the cache ---------------------------------------

# print_path_args ARGS...: reads such a script's arguments: none, `--print-path` (print where the
# thing is once it is there: done_at), or -h/--help. Sets print_path.
print_path_args() {
  print_path=false
  case "${1:-}" in
    '') ;;
    --print-path) print_path=true ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
}
# done_at PATH: prints PATH when --print-path was given, and ends the script.
done_at() { if $print_path; then printf '%s\n' "$1"; fi; exit 0; }

# --- processes ---------------------------------------------------------------------------------

pid_of() { cat "$run/$1.pid" 2>/dev/null || true; }

# ours PID: true if PID is a live process started for this state directory. A recycled pid fails
# the command-line check, and so does a zombie (empty cmdline) left behind when pid 1 does not
# reap orphans.
ours() {
  local pid="$1" cmdline
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
  [[ "$cmdline" == *"$state/"* ]]
}

# alive PID: true if PID is a running (not zombie) process.
alive() {
  local pid="$1" stat
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  # Field 3 (after the parenthesised command name) is the state; Z is a zombie.
  stat="${stat##*) }"
  [[ "${stat%% *}" != Z ]]
}

# launch NAME COMMAND...: run COMMAND in its own session (so it outlives this script and is not
# hit by a Ctrl-C or hangup aimed at the caller's terminal), output to logs/NAME.log, pid to
# run/NAME.pid. setsid execs in place (a background job is never a process-group leader), so $!
# is the component's own pid. The lock's fd 9 is closed: a component holding it would block every
# later up/down.
launch() {
  local name="$1"; shift
  setsid "$@" </dev/null >"$logs/$name.log" 2>&1 9>&- &
  echo "$!" >"$run/$name.pid"
}

# stop_pid NAME PID: SIGTERM PID (if ours), SIGKILL it if still there after 10 s, verify it is gone.
stop_pid() {
  local name="$1" pid="$2" deadline
  ours "$pid" || return 0
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + 10))
  while ours "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
  ours "$pid" || return 0
  log "$name still running 10s after SIGTERM; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  deadline=$((SECONDS + 5))
  while ours "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
  if ours "$pid"; then die "$name (pid $pid) survived SIGKILL"; fi
}

# stop NAME: stop the process recorded in run/NAME.pid.
stop() { stop_pid "$1" "$(pid_of "$1")"; }

# fail_with_log MESSAGE NAME [LINES]: log MESSAGE and the tail of logs/NAME.log, run the sourcing
# script's dump_debug function if it has one, and exit 1.
fail_with_log() {
  log "error: $1"
  log "last lines of $logs/$2.log:"
  tail -n "${3:-40}" "$logs/$2.log" >&2 || true
  if declare -F dump_debug >/dev/null; then dump_debug || true; fi
  exit 1
}

# wait_until WHAT NAME COMMAND...: poll COMMAND until it succeeds. Fails, showing the tail of
# NAME's log, if NAME's process exits first or the deadline ($wait_secs, or $WAIT_SECS for one
# call) passes.
wait_until() {
  local what="$1" name="$2" secs="${WAIT_SECS:-$wait_secs}" deadline
  deadline=$((SECONDS + secs))
  shift 2
  until "$@" >/dev/null 2>&1; do
    # Liveness, not `ours`: between fork and exec the child still shows the parent's command
    # line, and under load `ours` would call a component that is still starting "exited".
    alive "$(pid_of "$name")" || fail_with_log "$name exited while waiting for $what" "$name"
    ((SECONDS < deadline)) || fail_with_log "timed out after ${secs}s waiting for $what" "$name"
    sleep 0.25
  done
}

# --- setup -------------------------------------------------------------------------------------

# ensure_packages COMMAND=PACKAGE...: install the Debian packages whose command is not on PATH
# (a command may be an absolute path, for files outside PATH). One apt-get run for all of them.
ensure_packages() {
  local spec cmd missing=()
  for spec in "$@"; do
    cmd="${spec%%=*}"
    if [[ "$cmd" == /* ]]; then [ -e "$cmd" ] && continue; else command -v "$cmd" >/dev/null && continue; fi
    missing+=("${spec#*=}")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  [ "$(id -u)" = 0 ] || die "missing Debian packages: ${missing[*]}; install them or run as root"
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# ensure_command COMMAND PACKAGE: install the Debian PACKAGE if COMMAND is not on PATH.
ensure_command() { ensure_packages "$1=$2"; }

# Serialise up/down on one state directory. The lock sits beside the directory, which `down`
# removes.
lock() {
  mkdir -p "$(dirname "$state")"
  exec 9>"$state.lock"
  flock --nonblock 9 && return 0
  log "waiting for another up/down on $state to finish"
  flock 9
}

remove_state() {
  [ -e "$state" ] || return 0
  # Never `rm -rf` a directory this script did not create (say CELLSTACK_CP_DIR=$HOME by mistake).
  if [ ! -f "$marker" ] && [ -n "$(ls -A "$state")" ]; then
    die "$state exists but was not created by $0; not removing it"
  fi
  rm -rf "$state"
}

# pick_ports N [ADDRESS]: N distinct free TCP ports on ADDRESS (default 127.0.0.1), from
# 10000-19999: below Linux's ephemeral range (32768-60999 by default), where every outgoing
# connection takes its source port and could take a port between this choice and the server's bind
# (binding port 0 hands out exactly such ports), and apart from the ports the Rust test kit hands
# out (20000-29999, e2e/testkit/src/ports.rs) and the cluster's NodePorts (30000-32767). Holds every
# port bound until all N are chosen, so they are distinct.
pick_ports() {
  python3 - "$1" "${2:-127.0.0.1}" <<'EOF'
import random, socket, sys
want, address = int(sys.argv[1]), sys.argv[2]
held = []
for port in random.sample(range(10000, 20000), 10000):
    if len(held) == want:
        break
    s = socket.socket()
    try:
        s.bind((address, port))
    except OSError:
        s.close()
        continue
    held.append(s)
if len(held) < want:
    sys.exit(f"no {want} free ports on {address} in 10000-19999")
print(" ".join(str(s.getsockname()[1]) for s in held))
EOF
}

# --- PKI (openssl) -----------------------------------------------------------------------------

new_ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/$1.key"; }

# new_ca NAME CN: a self-signed CA, valid ten years.
new_ca() {
  new_ec_key "$1"
  openssl req -x509 -new -key "$pki/$1.key" -subj "/CN=$2" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$pki/$1.crt"
}

# issue CA NAME SUBJECT EXTENSION...: a key and a one-year certificate for NAME, signed by CA.
issue() {
  local ca="$1" name="$2" subject="$3"
  shift 3
  new_ec_key "$name"
  openssl req -new -key "$pki/$name.key" -subj "$subject" |
    openssl x509 -req -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" -set_serial "0x$(openssl rand -hex 16)" \
      -days 365 -sha256 -out "$pki/$name.crt" \
      -extfile <(printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" "$@")
}

# write_kubeconfig FILE SERVER CLUSTER_NAME CERT: a kubeconfig for SERVER authenticating as
# pki/CERT.{crt,key}, trusting pki/ca.crt.
write_kubeconfig() {
  local file="$1" server="$2" cluster="$3" cert="$4"
  (
    umask 077
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $cluster
  cluster:
    server: $server
    certificate-authority-data: $(base64 --wrap=0 "$pki/ca.crt")
users:
- name: $cert
  user:
    client-certificate-data: $(base64 --wrap=0 "$pki/$cert.crt")
    client-key-data: $(base64 --wrap=0 "$pki/$cert.key")
contexts:
- name: $cluster
  context:
    cluster: $cluster
    user: $cert
current-context: $cluster
EOF
  )
}

# --- Go builds through the module proxy --------------------------------------------------------

# with_heartbeat WHAT COMMAND...: runs COMMAND (output to stderr), logging "still WHAT" every
# 30 s while it runs; returns its exit status. For builds that take minutes.
with_heartbeat() {
  local what="$1" pid ticker rc=0 started=$SECONDS
  shift
  "$@" >&2 &
  pid=$!
  (while sleep 30; do log "still $what ($((SECONDS - started))s elapsed)"; done) 9>&- &
  ticker=$!
  wait "$pid" || rc=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  return "$rc"
}

# go_build_cached OUT MODULE_DIR PACKAGE [LDFLAGS]: `go build` PACKAGE inside the consumer module
# MODULE_DIR into the file OUT, unless OUT exists. Prints progress every 30 s.
go_build_cached() {
  local out="$1" mod="$2" package="$3" ldflags="${4:--s -w}" rc=0 started=$SECONDS
  [ -x "$out" ] && return 0
  command -v go >/dev/null || die "go is required to build $out (Go 1.24+ on PATH)"
  mkdir -p "$(dirname "$out")"
  log "building $package into $out (Go caches: $(go env GOCACHE))"
  with_heartbeat "building $package" \
    bash -c 'cd "$1" && shift && exec "$@"' _ "$mod" env CGO_ENABLED=0 GOTOOLCHAIN=local \
    go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$package" || rc=$?
  [ "$rc" = 0 ] || die "building $package failed (exit $rc)"
  mv -f "$out.tmp" "$out"
  log "built $out in $((SECONDS - started))s"
}
