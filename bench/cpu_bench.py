"""CPU per `Gate.scan` / `Gate.check` and the raw floor, without fsync: instructions and p50.

Prints figures; not a test. The wall-clock of a durable scan is mostly its fsync, which hides
what the Python and SQL around it cost; this measures that part alone (issue 18, part A):

    .venv/bin/python bench/cpu_bench.py            # p50 µs and instructions per op (valgrind)
    .venv/bin/python bench/cpu_bench.py --time     # p50 µs only

Each opens a 10k-item cache built by `core_bench.build_cache` (once, under the temporary
directory) and a fresh journal with `synchronous=OFF`, warm the gate with 300 codes, then run
the measured codes (80% hits, as core_bench). `floor` is core_bench's raw floor (the indexed
SELECT + INSERT/COMMIT) with its file at `synchronous=OFF` too, measured in the same run.
Instructions per op = (instructions of a run with N measured ops - those of a run with none)
/ N, so start-up, the warm-up and making the codes cancel out (every run makes the same
codes; until issue 18's last session they were made per op and counted, ~60k per op); counts
are exact to about 1% from run to run whatever the machine's load, unlike times.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import core_bench  # noqa: E402
from benchfile import save_results  # noqa: E402

from agent.runtime.gate import Gate  # noqa: E402
from agent.store import lean  # noqa: E402
from agent.store.cache import TicketCache  # noqa: E402
from agent.store.journal import Journal  # noqa: E402

SIZE, WARM = 10_000, 300
# Every child makes the same codes however many ops it runs: making them costs instructions
# too, which must cancel out between the run with N ops and the run with none.
MAX_OPS = 5_000
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
# Named by the lean forms' format (agent.store.lean): a cache built by other parsing code would
# be read through its JSON, not the way a synced gate reads it.
CACHE = Path(tempfile.gettempdir()) / "gate-agent-cpu-bench" / f"cache-{lean.FORMAT}.db"
RESULTS = Path(__file__).resolve().parent / "results" / "cpu.json"


def child(mode: str, count: int) -> list[int]:
    """Open the cache and a fresh journal, warm up, run `count` ops; ns per op."""
    store = Path(tempfile.mkdtemp(prefix="cpu-bench-"))
    try:
        cache = TicketCache(CACHE, check=False)
        journal = Journal(store / "journal.db")
        journal.conn.execute("PRAGMA synchronous=OFF")  # CPU only: no fsync
        config = core_bench.bench_config(store)
        gate, lane = Gate(cache, journal, config), config.lanes[0]
        codes = core_bench.make_codes(SIZE, WARM + MAX_OPS, 9)[:WARM + count]
        floor = core_bench.Floor(CACHE, store / "floor.db")
        floor.write.execute("PRAGMA synchronous=OFF")
        took, mono = [], 0
        for i, code in enumerate(codes):
            mono += 10_000
            t0 = time.perf_counter_ns()
            if mode == "floor":
                floor.op(code, "2026-12-06T12:00:00.000000Z")
            elif mode == "scan":
                gate.scan(code, lane, NOW, mono_ms=mono)
            else:
                gate.check(code, lane, NOW)
            if i >= WARM:
                took.append(time.perf_counter_ns() - t0)
        gate.close()
        floor.close()
        return took
    finally:
        shutil.rmtree(store, ignore_errors=True)


def instructions(mode: str, count: int) -> int:
    """Instructions of one child run under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
             sys.executable, __file__, "--child", mode, str(count)],
            capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    found = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or not found:
        raise SystemExit(f"callgrind run failed: {out.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", action="store_true", help="p50 µs only, no valgrind")
    parser.add_argument("--ops", type=int, default=1000,
                        help=f"measured ops per run (at most {MAX_OPS})")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    if not CACHE.exists():
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        core_bench.build_cache(CACHE, SIZE, NOW)
    figures: dict[str, object] = {"items": SIZE, "journal": "synchronous=OFF"}
    for mode in ("floor", "check", "scan"):
        took = child(mode, max(args.ops, 3000))
        figures[f"{mode}_p50_us"] = round(statistics.median(took) / 1000, 1)
        print(f"{mode}: p50 {figures[f'{mode}_p50_us']} µs over {len(took)} ops "
              f"(journal synchronous=OFF, {SIZE:,} items)")
    if args.time or shutil.which("valgrind") is None:
        if not args.time:
            print("valgrind is not installed: times only")
    else:
        for mode in ("floor", "check", "scan"):
            per_op = (instructions(mode, args.ops) - instructions(mode, 0)) / args.ops
            figures[f"{mode}_instructions"] = round(per_op)
            print(f"{mode}: {per_op / 1000:.0f}k instructions per op "
                  f"(callgrind, {args.ops} ops, journal synchronous=OFF, {SIZE:,} items)")
    save_results(figures, RESULTS)

if __name__ == "__main__":
    main()
