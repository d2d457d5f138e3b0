"""Where a durable scan's p99 goes: per outcome and per step, against the floor's steps.

Prints figures; not a test. `bench/core_bench.py` gives one number per side (scan, floor);
this splits both into steps so the tail can be placed:

    .venv/bin/python bench/scan_tail.py --size 100000 --codes 20000

Per scan: the SQL statements it runs, each timed around `execute` + fetch (BEGIN, the cache
and journal reads, INSERT, COMMIT, and whatever else), garbage collections (`gc` step; the
harness keeps a few objects per op and sets off most of them) and the Python around them
(total minus the rest). The floor (core_bench.Floor: an indexed SELECT + INSERT/COMMIT with the
journal's pragmas) is split the same way. Scans and floor ops run interleaved in blocks of 100
(`--block`), as in core_bench; `--pace-ms` idles before each op, as a gate does between scans.
Reported per outcome (admit, alreadyIn, each refusal, unknown code): n, the total's p50/p99 and
each step's p50/p99; then the tail attribution: for the slowest 2% of each kind, how much each
step exceeds its own median on average (what the tail is made of); then the commit time by
WAL pages written and whether SQLite's automatic checkpoint ran in it, with how many of the
kind's slowest 1% each group holds. Timing wrappers add ~1 µs per statement to both sides.
"""

from __future__ import annotations

import argparse
import gc
import mmap
import sqlite3
import struct
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import core_bench  # noqa: E402

from agent.runtime.gate import Gate  # noqa: E402
from agent.store.cache import TicketCache  # noqa: E402
from agent.store.journal import Journal  # noqa: E402

Steps = dict[str, int]


class _Rows(list[Any]):
    """A SELECT's rows, fetched inside the timed call (so the fetch counts as SQL)."""

    def fetchone(self) -> Any:
        return self[0] if self else None

    def fetchall(self) -> list[Any]:
        return list(self)


class GcClock:
    """Time spent in the cyclic garbage collector (a `gc.callbacks` entry), so that a
    collection is a step of its own instead of part of whichever statement's allocation set it
    off. Some collections are this harness's: it keeps a few objects per op."""

    def __init__(self) -> None:
        self.total_ns = 0
        self._start = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter_ns()
        else:
            self.total_ns += time.perf_counter_ns() - self._start


class TimedConnection:
    """Wraps a sqlite3 connection: each `execute` adds its time to the current op's steps."""

    def __init__(self, conn: sqlite3.Connection | sqlite3.Cursor, side: str, steps: list[Steps],
                 gc_clock: GcClock):
        self._conn, self._side, self._steps, self._gc = conn, side, steps, gc_clock

    def execute(self, sql: str, *args: Any) -> Any:
        collected = self._gc.total_ns
        t = time.perf_counter_ns()
        cur = self._conn.execute(sql, *args)
        head = sql.lstrip()[:6].upper()
        out: Any = _Rows(cur.fetchall()) if head in ("SELECT", "PRAGMA") else cur
        spent = time.perf_counter_ns() - t - (self._gc.total_ns - collected)
        name = _step_name(self._side, head)
        step = self._steps[-1]
        step[name] = step.get(name, 0) + spent
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _step_name(side: str, head: str) -> str:
    if head.startswith("BEGIN"):
        return "begin"
    if head == "COMMIT":
        return "commit"
    if head == "INSERT":
        return "insert"
    if head == "PRAGMA":
        return f"{side} pragma"
    return f"{side} read"


class WalIndex:
    """Reads a WAL file's shared index (`-shm`): mxFrame (frames in the WAL) and nBackfill
    (frames checkpointed), in native byte order at offsets 16 and 96 (SQLite's walIndexHdr and
    WalCkptInfo). Before and after an op they tell how many pages its commit wrote and
    whether a checkpoint ran inside it."""

    def __init__(self, db: Path):
        self._file = open(db.with_name(db.name + "-shm"), "rb")  # noqa: SIM115 - kept open
        self._map = mmap.mmap(self._file.fileno(), 136, access=mmap.ACCESS_READ)

    def read(self) -> tuple[int, int]:
        mx, = struct.unpack_from("=I", self._map, 16)
        backfill, = struct.unpack_from("=I", self._map, 96)
        return mx, backfill

    def close(self) -> None:
        self._map.close()
        self._file.close()


def _wal_step(step: Steps, before: tuple[int, int], after: tuple[int, int]) -> None:
    """Pages written (frames appended; after a WAL restart, the new count) and checkpoint."""
    step["pages"] = after[0] - before[0] if after[0] >= before[0] else after[0]
    step["checkpoint"] = int(after[1] != before[1] and after[1] > 0)


def percentile(values: list[int], q: float) -> float:
    s = sorted(values)
    return core_bench.percentile(s, q)


def run(store: Path, size: int, ncodes: int, seed: int, block: int = core_bench.BLOCK,
        pace_s: float = 0.0) -> dict[str, list[tuple[int, Steps]]]:
    """Interleaved floor ops and scans, `block` of each in turn, `pace_s` idle before each op
    (a gate's pace: every op starts cold); per kind a list of (total ns, steps ns)."""
    cache = TicketCache(store / "cache.db")
    journal = Journal(store / "journal.db")
    config = core_bench.bench_config(store)
    gate = Gate(cache, journal, config)
    lane = config.lanes[0]
    floor = core_bench.Floor(store / "cache.db", store / "floor.db")
    steps: list[Steps] = [{}]
    gc_clock = GcClock()
    cache.conn = TimedConnection(cache.conn, "cache", steps, gc_clock)  # type: ignore[assignment]
    journal.conn = TimedConnection(  # type: ignore[assignment]
        journal.conn, "journal", steps, gc_clock)
    # the scan's BEGIN, INSERT and COMMIT go through the journal's own cursor
    journal._cursor = TimedConnection(  # type: ignore[assignment]
        journal._cursor, "journal", steps, gc_clock)
    floor.read = TimedConnection(floor.read, "cache", steps, gc_clock)  # type: ignore[assignment]
    floor.write = TimedConnection(  # type: ignore[assignment]
        floor.write, "journal", steps, gc_clock)
    mono = [0]
    wal_index = {"scan": WalIndex(store / "journal.db"), "floor": WalIndex(store / "floor.db")}
    for code in core_bench.make_codes(size, core_bench.WARMUP, seed + 99):
        floor.op(code, "2025-01-01T00:00:00.000000Z")
        mono[0] += 10_000
        gate.scan(core_bench.unknown_code(hash(code) & 0xFFFF), lane, datetime.now(UTC),
                  mono_ms=mono[0])
    out: dict[str, list[tuple[int, Steps]]] = defaultdict(list)
    scan_codes = core_bench.make_codes(size, ncodes, seed + 2)
    floor_codes = core_bench.make_codes(size, ncodes, seed + 3)
    clock = time.perf_counter_ns
    gc.callbacks.append(gc_clock)
    for b, start in enumerate(range(0, ncodes, block)):
        for side in (("floor", "scan") if b % 2 else ("scan", "floor")):
            codes = floor_codes if side == "floor" else scan_codes
            for code in codes[start:start + block]:
                if pace_s:
                    time.sleep(pace_s)
                steps.append({})
                before = wal_index[side].read()
                collected = gc_clock.total_ns
                if side == "floor":
                    t = clock()
                    floor.op(code, "2025-01-01T00:00:00.000000Z")
                    total = clock() - t
                    kind = "floor"
                else:
                    mono[0] += 10_000
                    t = clock()
                    result = gate.scan(code, lane, datetime.now(UTC), mono_ms=mono[0])
                    total = clock() - t
                    d = result.decision
                    kind = "admit" if d.admit else (d.detail or d.status)
                step = steps.pop()
                collected = gc_clock.total_ns - collected
                step["python"] = total - sum(step.values()) - collected
                step["gc"] = collected
                _wal_step(step, before, wal_index[side].read())
                out[kind].append((total, step))
                out["scan (all)" if side == "scan" else "floor (all)"].append((total, step))
    gc.callbacks.remove(gc_clock)
    for index in wal_index.values():
        index.close()
    floor.close()
    cache.close()
    journal.close()
    return out


def report(results: dict[str, list[tuple[int, Steps]]]) -> None:
    kinds = sorted(results, key=lambda k: (k != "floor (all)", k != "scan (all)",
                                           k != "floor", -len(results[k])))
    names = ["python", "gc", "begin", "cache read", "journal read", "insert", "commit",
             "cache pragma", "journal pragma"]
    print("per kind: n, total p50/p99 µs; each step p50/p99 µs")
    for kind in kinds:
        rows = results[kind]
        if kind == "floor" or len(rows) < 50:
            continue
        totals = [t for t, _ in rows]
        line = (f"{kind:>16} n={len(rows):6d} total {percentile(totals, 50):6.0f}/"
                f"{percentile(totals, 99):6.0f}")
        for name in names:
            values = [s.get(name, 0) for _, s in rows]
            if any(values):
                line += f" | {name} {percentile(values, 50):.0f}/{percentile(values, 99):.0f}"
        print(line)
    print("\ntail attribution: slowest 2% of each kind, mean excess of each step over its "
          "median (µs)")
    for kind in kinds:
        rows = results[kind]
        if kind == "floor" or len(rows) < 50:
            continue
        ordered = sorted(rows, key=lambda r: r[0])
        tail = ordered[int(len(ordered) * 0.98):]
        medians = {n: percentile([s.get(n, 0) for _, s in rows], 50) * 1000 for n in names}
        excess_total = (sum(t for t, _ in tail) / len(tail) - percentile(
            [t for t, _ in rows], 50) * 1000) / 1000
        parts = []
        for name in names:
            excess = sum(s.get(name, 0) - medians[name] for _, s in tail) / len(tail) / 1000
            if abs(excess) >= 1:
                parts.append(f"{name} {excess:+.0f}")
        print(f"{kind:>16} n_tail={len(tail):4d} total {excess_total:+.0f}: " + ", ".join(parts))
    print("\ncommit time by pages written and checkpoint (n, commit p50/p99 µs; share of the "
          "kind's slowest 1% of totals)")
    for kind in ("floor (all)", "scan (all)", "admit"):
        rows = results.get(kind, [])
        if not rows:
            continue
        cut = sorted(t for t, _ in rows)[int(len(rows) * 0.99)]
        groups: dict[str, list[tuple[int, Steps]]] = defaultdict(list)
        for total, s in rows:
            label = "checkpoint" if s.get("checkpoint") else f"{s.get('pages', 0)} pages"
            groups[label].append((total, s))
        parts = []
        for label, members in sorted(groups.items(), key=lambda g: -len(g[1])):
            commits = [s.get("commit", 0) for _, s in members]
            slow = sum(1 for t, _ in members if t >= cut)
            parts.append(f"{label}: n={len(members)} {percentile(commits, 50):.0f}/"
                         f"{percentile(commits, 99):.0f}, tail {slow}")
        print(f"{kind:>16} " + "; ".join(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--codes", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--store", help="a directory to keep the built cache in between runs")
    parser.add_argument("--block", type=int, default=core_bench.BLOCK,
                        help="ops of one side in a row (default %(default)s, as core_bench)")
    parser.add_argument("--pace-ms", type=float, default=0.0,
                        help="idle time before each op (a gate's pace; e.g. 20 with --block 1 "
                             "and --codes 2000): every op starts with cold caches")
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gate-agent-tail-") as tmp:
        store = Path(args.store or tmp) / f"s{args.size}"
        store.mkdir(parents=True, exist_ok=True)
        if not (store / "cache.db").exists():
            print(f"building a {args.size:,}-item cache ...", flush=True)
            core_bench.build_cache(store / "cache.db", args.size, datetime.now(UTC))
        merged: dict[str, list[tuple[int, Steps]]] = defaultdict(list)
        for r in range(args.repeats):
            for old in [*store.glob("journal.db*"), *store.glob("floor.db*")]:
                old.unlink()
            for kind, rows in run(store, args.size, args.codes, args.seed + 1000 * r,
                                  args.block, args.pace_ms / 1000).items():
                merged[kind] += rows
        report(merged)
    return 0


if __name__ == "__main__":
    sys.exit(main())
