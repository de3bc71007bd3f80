#!/usr/bin/env bash
# Where the operator's heap goes at N tenants: bench/operator.sh (BENCH_STEPS=N) with the
# operator run under heaptrack (Debian's package, installed when missing). When the bench stops
# the operator after its settled reading, the wrapper below records the operator's RSS and kills
# it with SIGKILL, so what heaptrack reports as "leaked" is the heap live at that moment. Prints
# that live heap beside the RSS (the difference is free memory the allocator holds between live
# blocks), the peak heap, the allocation calls, and the TOP call sites holding the live heap and
# making the most allocations.
#
# heaptrack records every allocation and slows the operator several times over: the bench's own
# convergence times are not figures of record in this run, and the RSS it prints is the
# wrapper's. The heap figures are the operator's.
#
# Environment: N (20000 tenants), TOP (12 call sites of each kind), HEAP_OUT (a directory for
# the profile; default a new one under ~/.cache/cellstack), and bench/operator.sh's own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { printf '[bench/operator-heap %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

n="${N:-20000}"
top="${TOP:-12}"
[[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -gt 0 ] || die "N must be a number of tenants (got '$n')"
[[ "$top" =~ ^[0-9]+$ ]] || die "TOP must be a number (got '$top')"

if ! command -v heaptrack >/dev/null || ! command -v heaptrack_print >/dev/null; then
  [ "$(id -u)" = 0 ] || die "heaptrack is not installed; as root: apt-get install heaptrack"
  log "installing heaptrack (Debian's package)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq heaptrack >/dev/null
fi

out="${HEAP_OUT:-$HOME/.cache/cellstack/operator-heap-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
# The operator is a copy, so that its path names it alone (the wrapper finds it by it) and a
# rebuild during the run does not change what is measured.
cargo build --release -q -p cellstack-operator --bins
cp target/release/cellstack-operator "$out/cellstack-operator"
cat >"$out/wrapper" <<EOF
#!/usr/bin/env bash
# Runs the operator under heaptrack; on TERM records its RSS and kills it outright.
heaptrack -o "$out/profile" "$out/cellstack-operator" "\$@" &
stop() {
  pid=\$(pgrep -f "^$out/cellstack-operator " | head -n 1)
  if [ -n "\$pid" ]; then
    awk '/^VmRSS:/ {printf "%.0f\n", \$2/1024}' "/proc/\$pid/status" >"$out/rss-mib" || true
    kill -KILL "\$pid"
  fi
  wait
}
trap stop TERM INT
wait
EOF
chmod +x "$out/wrapper"

log "bench/operator.sh with BENCH_STEPS=$n, the operator under heaptrack (profile in $out)"
BENCH_STEPS="$n" BENCH_OPERATOR_BIN="$out/wrapper" bash bench/operator.sh >"$out/bench.log" 2>&1 ||
  log "bench/operator.sh failed (exit $?): the profile covers the run up to then; $out/bench.log"
profile=$(ls "$out"/profile*.zst "$out"/profile*.gz 2>/dev/null | head -n 1)
[ -n "$profile" ] || die "heaptrack wrote no profile to $out ($out/bench.log)"

log "reading the profile (a minute or more)"
heaptrack_print -f "$profile" --print-leaks 1 --print-peaks 0 --print-allocators 1 \
  --print-temporary 0 --print-histogram 0 --print-massif 0 --print-flamegraph 0 \
  -n "$top" -s 0 >"$out/report.txt"

# Call sites: the first frame under each top-level entry, shortened to its function's path.
sites() { # HEADER-REGEX
  awk -v re="$1" -v top="$top" '
    $0 ~ re { head = $1 " " $2; getline f; sub(/^[ \t]+/, "", f);
              gsub(/\$LT\$/, "<", f); gsub(/\$GT\$/, ">", f); gsub(/\$u20\$/, " ", f);
              gsub(/\$RF\$/, "\\&", f); gsub(/\$C\$/, ",", f); gsub(/\.\./, "::", f); sub(/::h[0-9a-f]+$/, "", f); sub(/^_</, "<", f);
              if (++k <= top) printf "  %-26s %s\n", head, substr(f, 1, 150) }' "$out/report.txt"
}
live=$(awk -F': ' '/^total memory leaked/ {print $2}' "$out/report.txt")
echo "== bench/operator-heap.sh: $n tenants, $(date -u +%FT%TZ), profile $profile"
echo "live heap when the operator was stopped: ${live:-?}; its RSS then: $(cat "$out/rss-mib" 2>/dev/null || echo '?') MiB"
grep -E '^(peak heap memory consumption|calls to allocation functions|temporary memory allocations)' "$out/report.txt"
echo "the live heap by call site (bytes over allocations still live):"
sites 'leaked over [0-9]+ calls from$'
echo "allocations by call site (calls, whole run):"
sites '^[0-9]+ calls to allocation functions with .* from$'
