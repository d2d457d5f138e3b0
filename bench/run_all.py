"""Run every `bench/*_bench.py` in turn (what `make bench` calls); extra arguments go to each.

Benchmarks print figures and write bench/results/*.json; they are not tests. This exits
non-zero only when a benchmark itself fails to run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    benches = sorted(HERE.glob("*_bench.py"))
    if not benches:
        print("no bench/*_bench.py found")
        return 1
    failed = []
    for bench in benches:
        print(f"=== {bench.name} ===", flush=True)
        started = time.perf_counter()
        rc = subprocess.run([sys.executable, str(bench), *argv], cwd=HERE.parent).returncode
        print(f"=== {bench.name}: exit {rc} after {time.perf_counter() - started:.0f} s ===",
              flush=True)
        if rc:
            failed.append(bench.name)
    if failed:
        print(f"failed to run: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
