"""``make bench``: the default ``bigembed bench`` run, then every ``benchmarks/bench_*.py`` suite.

The default run (every stage, peers side by side, default sizes, within its time budget)
writes ``benchmarks/results/bench-default.json`` and ``.html``; each suite writes its own
``benchmarks/results/<stage>.json`` through the same harness (:mod:`bigembed.bench.harness`).

    python -m benchmarks.run_all [--only bench|suites] [--budget 13m] [-- extra bench args]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def suites() -> list[str]:
    """Module names of the stage suites in benchmarks/ (bench_<stage>.py), sorted."""
    return [f"benchmarks.{p.stem}" for p in sorted(HERE.glob("bench_*.py"))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["bench", "suites"], help="run only one part")
    p.add_argument("--budget", default="13m", help="time budget of the default bench run")
    p.add_argument("extra", nargs="*", help="more `bigembed bench` arguments (after --)")
    args = p.parse_args(argv)
    failed = []
    if args.only in (None, "bench"):
        cmd = [sys.executable, "-m", "bigembed", "bench", "--compare", "--budget", args.budget,
               "--out", str(RESULTS), "--name", "bench-default", *args.extra]
        print("$ python", " ".join(cmd[1:]), flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=HERE.parent)
        print(f"bigembed bench: exit {rc} after {time.perf_counter() - t0:.0f}s", flush=True)
        if rc:
            failed.append("bigembed bench")
    if args.only in (None, "suites"):
        for mod in suites():
            print("$ python -m", mod, flush=True)
            rc = subprocess.call([sys.executable, "-m", mod], cwd=HERE.parent)
            if rc:
                failed.append(mod)
    if failed:
        print("failed:", ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
