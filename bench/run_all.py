"""Run every `bench/*_bench.py` in turn (what `make bench` calls).

`--only NAME[,NAME]` runs just those (e.g. `--only core,sync`); each bench takes its own options
when run directly (`python bench/core_bench.py --sizes 10000`).

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
    if argv[:1] == ["--only"] and len(argv) == 2:
        wanted = {f"{name}_bench.py" for name in argv[1].split(",")}
        benches = [b for b in benches if b.name in wanted]
    elif argv:
        print("usage: run_all.py [--only NAME[,NAME]]")
        return 2
    if not benches:
        print("no bench/*_bench.py found")
        return 1
    failed = []
    for bench in benches:
        print(f"=== {bench.name} ===", flush=True)
        started = time.perf_counter()
        rc = subprocess.run([sys.executable, str(bench)], cwd=HERE.parent).returncode
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
