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
#   SUMMARY_OF  a results directory of an earlier invocation (bench/results/<date>): print its
#               summary table again, over the runs its logs hold, and run nothing (for example
#               after an invocation was stopped before its last run)
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
if [ -n "${SUMMARY_OF:-}" ]; then
  out="$SUMMARY_OF"
  [ -d "$out" ] || { log "SUMMARY_OF: no directory $out"; exit 2; }
  # The runs whose every benchmark finished: a run stopped part-way is left out whole.
  RUNS=$(find "$out" -name '*.log' | sed -E 's/.*\.([0-9]+)\.log$/\1/' | sort -n | uniq -c |
    awk -v want="$(find "$out" -name '*.1.log' | wc -l)" '$1 == want {n = $2} END {print n + 0}')
  commit="$(cat "$out/commit" 2>/dev/null || echo unknown)"
else
  out="bench/results/$(date -u +%Y%m%dT%H%M%SZ)"
  mkdir -p "$out"
  commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  git diff --quiet HEAD 2>/dev/null || commit="$commit with uncommitted changes"
  echo "$commit" >"$out/commit"
fi
[ -n "${SUMMARY_OF:-}" ] || log "benchmarking commit $commit, $RUNS run(s) of: $BENCHES"
for run in $( [ -n "${SUMMARY_OF:-}" ] || seq 1 "$RUNS"); do
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
    run = re.match(r".*\.(\d+)\.log$", log.name)
    if not run or int(run.group(1)) > runs:  # a run stopped part-way (SUMMARY_OF)
        continue
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
undefined = []
for key, (goal, what, values) in figures.items():
    # A ratio of two differences is undefined when the one below is not positive (an "added
    # latency" when the direct run's own p99 came out above the proxied one): left out of the
    # median and said.
    defined = [v for v in values if v == v]
    if len(defined) < len(values):
        undefined.append(f"{key} ({len(values) - len(defined)} of {len(values)})")
    if not defined:
        print(f"{what[:58]:<58} {goal:>9} {'undefined':>11} {'':>21} {len(values):>4}")
        continue
    med = statistics.median(defined)
    spread = f"{min(defined):.4g}-{max(defined):.4g}"
    print(f"{what[:58]:<58} {goal:>9} {med:>11.4g} {spread:>21} {len(defined):>4}  {meets(goal, med)}")
if undefined:
    print(f"\nundefined in some runs, left out of their median: {', '.join(undefined)}")
missing = [k for k, (_, _, v) in figures.items() if len(v) != runs]
if missing:
    print(f"\nfigures not printed by every run: {', '.join(missing)}")
PY
