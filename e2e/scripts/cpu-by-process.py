#!/usr/bin/env python3
"""CPU used by each process name on this machine over a window, from /proc (utime + stime).

Prints the total and the busiest names as a percentage of one core, e.g. while a scenario runs:

    python3 e2e/scripts/cpu-by-process.py 3     (a 3-second window; default 3)

docs/e2e.md quotes what it printed during the noisy-tenant scenario (lanes are
`cellstack-cell`, routers `cellstack-route`: /proc truncates names to 15 characters).
"""

import os
import sys
import time


def snapshot() -> dict[str, tuple[str, int]]:
    ticks = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # the process ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks[pid] = (name, int(fields[11]) + int(fields[12]))
    return ticks


def main() -> None:
    window = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    hz = os.sysconf("SC_CLK_TCK")
    before, started = snapshot(), time.monotonic()
    time.sleep(window)  # the measurement window itself
    after, elapsed = snapshot(), time.monotonic() - started
    by_name: dict[str, int] = {}
    for pid, (name, ticks) in after.items():
        if pid in before:
            by_name[name] = by_name.get(name, 0) + ticks - before[pid][1]
    share = lambda t: 100.0 * t / hz / elapsed  # noqa: E731 - % of one core
    print(f"total {share(sum(by_name.values())):.0f}% of one core over {elapsed:.1f}s")
    for name, ticks in sorted(by_name.items(), key=lambda kv: -kv[1])[:18]:
        print(f"  {name:20s} {share(ticks):6.1f}%")


if __name__ == "__main__":
    main()
