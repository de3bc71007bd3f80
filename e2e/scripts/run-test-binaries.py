#!/usr/bin/env python3
"""Runs the workspace's test binaries, several at a time, and prints what `cargo test` would.

`cargo test` runs one test binary after another. Ours mostly wait (for pods, for polls: the
cores stay largely idle during the cluster suites). So this runs up to JOBS
binaries at once, longest first (by the durations the last run recorded), and each binary's output as one
block when it ends, in cargo's own format, so e2e/scripts/test-summary.sh reads it unchanged:

         Running tests/moves.rs (target/debug/deps/moves-63e57014e4c30fff)
    ...the binary's output...
    error: test failed, to rerun pass `-p cellstack-operator --test moves`

Binaries named in --alone (the e2e scenarios: they stop the API server and freeze whole nodes)
run after all the others, by themselves, their output printed as it comes. The doc tests are not run here (`cargo test --doc`).

Usage: run-test-binaries.py --artifacts FILE [--jobs N] [--alone NAME]... [--durations FILE]
                            [-- ARGS for every binary]
  FILE: the JSON messages of `cargo test --no-run --message-format=json`.
Exit status: 0 when every binary exited 0, else 101 (cargo's).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def binaries(artifacts: Path):
    """Every test executable cargo built: (name, package, how cargo names it, path, package dir)."""
    seen = set()
    for line in artifacts.read_text().splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue  # cargo's own lines, when mixed in
        if msg.get("reason") != "compiler-artifact" or not msg.get("profile", {}).get("test"):
            continue
        exe = msg.get("executable")
        if not exe or exe in seen:
            continue
        seen.add(exe)
        target = msg["target"]
        pkg_dir = Path(msg["manifest_path"]).parent
        src = os.path.relpath(target["src_path"], pkg_dir)
        kind = target["kind"][0]
        shown = src if kind == "test" else f"unittests {src}"
        rel_exe = os.path.relpath(exe, os.getcwd())
        package = msg["package_id"]
        # "path+file:///…/operator#cellstack-operator@0.1.0" → cellstack-operator
        # (or "…/crds#0.1.0" when the name is the directory's)
        url, _, name_at = package.rpartition("#")
        pkg_name = name_at.split("@", 1)[0] if "@" in name_at else Path(url).name
        rerun = {"test": f"--test {target['name']}", "bin": f"--bin {target['name']}"}.get(
            kind, "--lib"
        )
        yield {
            "name": target["name"],
            "key": f"{pkg_name}/{kind}/{target['name']}",
            "header": f"     Running {shown} ({rel_exe})",
            "rerun": f"-p {pkg_name} {rerun}",
            "exe": exe,
            "dir": str(pkg_dir),
            "package": pkg_name,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", required=True, type=Path)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--alone", action="append", default=[])
    parser.add_argument("--durations", type=Path)
    parser.add_argument("args", nargs="*")
    opts = parser.parse_args()
    if opts.jobs < 1:
        parser.error("--jobs must be at least 1")

    bins = list(binaries(opts.artifacts))
    if not bins:
        print("run-test-binaries: cargo built no test binary", file=sys.stderr)
        return 101
    last = {}
    if opts.durations and opts.durations.is_file():
        for line in opts.durations.read_text().splitlines():
            key, _, secs = line.partition("\t")
            try:
                last[key] = float(secs)
            except ValueError:
                pass
    alone = [b for b in bins if b["name"] in opts.alone]
    pooled = [b for b in bins if b["name"] not in opts.alone]
    # Longest first, so no long one starts last; unknown ones (new) count as long.
    pooled.sort(key=lambda b: -last.get(b["key"], 60.0))

    lock = threading.Lock()
    results = {}
    done = [0]
    total = len(bins)

    def run(b, live=False):
        """Runs one binary; its output as one block when it ends, or as it comes (`live`)."""
        env = dict(os.environ, CARGO_MANIFEST_DIR=b["dir"], CARGO_PKG_NAME=b["package"])
        started = time.monotonic()
        cmd = [b["exe"], *opts.args]
        if live:
            print(b["header"], flush=True)
            status = subprocess.call(cmd, cwd=b["dir"], env=env, stderr=subprocess.STDOUT)
            text = None
        else:
            with tempfile.TemporaryFile() as out:
                status = subprocess.call(
                    cmd, cwd=b["dir"], env=env, stdout=out, stderr=subprocess.STDOUT
                )
                out.seek(0)
                text = out.read().decode("utf-8", "replace")
        secs = time.monotonic() - started
        with lock:
            done[0] += 1
            results[b["key"]] = (status, secs)
            block = [] if live else [b["header"], text.rstrip("\n")]
            if status != 0:
                block.append(f"error: test failed, to rerun pass `{b['rerun']}`")
            verdict = "ok" if status == 0 else f"FAILED (exit {status})"
            block.append(
                f"[run-test-binaries {done[0]}/{total}] {b['key']}: {verdict} in {secs:.1f}s"
            )
            print("\n".join(block), flush=True)

    with ThreadPoolExecutor(max_workers=opts.jobs) as pool:
        list(pool.map(run, pooled))
    for b in alone:
        run(b, live=True)

    if opts.durations:
        merged = dict(last)
        merged.update({k: secs for k, (_, secs) in results.items()})
        opts.durations.parent.mkdir(parents=True, exist_ok=True)
        opts.durations.write_text("".join(f"{k}\t{v:.1f}\n" for k, v in sorted(merged.items())))
    failed = sorted(k for k, (status, _) in results.items() if status != 0)
    if failed:
        print(f"error: {len(failed)} targets failed:", flush=True)
        for k in failed:
            print(f"    {k}", flush=True)
        return 101
    return 0


if __name__ == "__main__":
    sys.exit(main())
