#!/usr/bin/env bash
# Runs the benchmarks RUNS times (default 3) and prints one table of goal against measured: for
# every figure a benchmark marks as a summary line, the median over the runs, the spread
# (lowest-highest) and whether the median meets the goal. Each run's whole output is kept in
# bench/results/<date>/ (ignored by git) so any figure can be traced to the run that printed it.
#
# A benchmark marks a figure with a line of its own output:
#   summary: key=<id> value=<number> goal=<op><number>|- what=<text to the end of the line>
# (op: >=, <=, <, >; `-` for a figure shown without a goal).
#
# Environment:
#   RUNS        runs of every benchmark (3)
#   BENCHES     which, space-separated, in order (default: every one that prints summary lines:
#               cell-limits router table-swap operator moves); the cluster ones (table-swap,
#               operator, moves) start the local cluster when it is down; operator and moves
#               take 10-30 minutes each, so three runs of all of them take about two hours here
#   BENCH_MOVE_SIZES, BENCH_MOVES
#               passed to bench/moves.sh; here 1000000 and 10 (the performance goals are about a
#               1M-key tenant's pause at the maximum of >= 10 moves), where bench/moves.sh alone
#               moves tenants of 10k and 100k keys 5 times each
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { printf '[bench/all %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

RUNS="${RUNS:-3}"
export BENCH_MOVE_SIZES="${BENCH_MOVE_SIZES:-1000000}" BENCH_MOVES="${BENCH_MOVES:-10}"
BENCHES="${BENCHES:-cell-limits router table-swap operator moves}"
out="bench/results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD 2>/dev/null || commit="$commit with uncommitted changes"
log "benchmarking commit $commit, $RUNS run(s) of: $BENCHES"
for run in $(seq 1 "$RUNS"); do
  for b in $BENCHES; do
    [ -x "bench/$b.sh" ] || { log "no benchmark bench/$b.sh"; exit 2; }
    log "run $run/$RUNS: bench/$b.sh (output: $out/$b.$run.log)"
    if ! "bench/$b.sh" >"$out/$b.$run.log" 2>&1; then
      log "bench/$b.sh failed in run $run; its output:"
      tail -40 "$out/$b.$run.log" >&2
      exit 1
    fi
  done
done

log "summary of $RUNS runs of commit $commit (whole outputs in $out)"
python3 - "$out" "$RUNS" <<'PY'
import pathlib, re, statistics, sys
out, runs = pathlib.Path(sys.argv[1]), int(sys.argv[2])
line = re.compile(r"^summary: key=(\S+) value=(\S+) goal=(\S+) what=(.*)$")
figures = {}  # key -> (goal, what, [values])
for log in sorted(out.glob("*.log")):
    for l in log.read_text(errors="replace").splitlines():
        m = line.match(l.strip())
        if m:
            key, value, goal, what = m.groups()
            figures.setdefault(key, (goal, what, []))[2].append(float(value))
def meets(goal, v):
    if goal == "-":
        return ""
    op, n = re.match(r"(>=|<=|<|>)(.*)", goal).groups()
    n = float(n)
    ok = {">=": v >= n, "<=": v <= n, "<": v < n, ">": v > n}[op]
    return "met" if ok else "NOT met"
print(f"\n{'figure':<58} {'goal':>9} {'median':>11} {'spread':>21} {'runs':>4}  verdict")
for key, (goal, what, values) in figures.items():
    med = statistics.median(values)
    spread = f"{min(values):.4g}-{max(values):.4g}"
    print(f"{what[:58]:<58} {goal:>9} {med:>11.4g} {spread:>21} {len(values):>4}  {meets(goal, med)}")
missing = [k for k, (_, _, v) in figures.items() if len(v) != runs]
if missing:
    print(f"\nfigures not printed by every run: {', '.join(missing)}")
PY
