"""WAL pages per scan commit, counted exactly: how many pages each kind of scan writes.

Every page a commit changes is one frame appended to the WAL (and, on this kind of storage, one
write before the fsync), so the page count is what a scan's commit costs beyond the fsync
itself. This script journals scans through the real `Journal` with automatic checkpoints off on
its connection (so the WAL only grows) and reads the -wal file size after each commit:
frames = growth / (page size + 24-byte frame header). The floor's table of
`bench/core_bench.py` is counted the same way, for comparison.

    .venv/bin/python bench/journal_pages_bench.py [--warm 20000] [--count 2000]

`--warm` scans are journaled first (mixed, like the core bench) so the B-trees have the depth
of a journal in use; then `--count` commits of each kind are counted one by one.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchfile import save_results  # noqa: E402
from core_bench import FLOOR_SCHEMA  # noqa: E402

from agent.store.journal import Journal, JournalRow, new_scan_uuid  # noqa: E402
from agent.store.sqlite import open_database  # noqa: E402

FRAME_HEADER = 24
WAL_HEADER = 32
ITEMS = 100_000
ZONES = (9001, 9002)
RESULTS = Path(__file__).resolve().parent / "results" / "journal_pages.json"


def scan_row(kind: str, rng: random.Random, stamp: str) -> JournalRow:
    """A journal row as the gate writes it: an admit, a refusal of a known ticket (pending
    upload) or a refusal of an unknown code (`local`, never uploaded)."""
    item = rng.randrange(1, ITEMS) if kind != "unknown" else None
    admit = kind == "admit"
    return JournalRow(
        uuid=new_scan_uuid(), code=f"NU-{item}",
        kind="barcode", barcode=f"NU-{item}", nfc_id=None, item_id=item,
        event_id=501 if item else None, zone_id=rng.choice(ZONES) if item else None,
        zone_is_default=False, gate_id=71, lane="north", direction="in", admit=admit,
        status="valid" if admit else "denied", status_detail=None if admit else "refunded",
        message="m", scanned_on=stamp, upload_state="local" if kind == "unknown" else "pending")


class WalCounter:
    """Frames appended to one database's WAL by each commit (automatic checkpoints off)."""

    def __init__(self, conn: Any, path: Path):
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        self.wal = Path(f"{path}-wal")
        self.page = int(conn.execute("PRAGMA page_size").fetchone()[0])

    def frames(self) -> int:
        size = self.wal.stat().st_size if self.wal.exists() else WAL_HEADER
        return max(0, size - WAL_HEADER) // (self.page + FRAME_HEADER)

    def per_commit(self, commit: Callable[[], None], count: int) -> dict[str, Any]:
        seen: Counter[int] = Counter()
        for _ in range(count):
            before = self.frames()
            commit()
            seen[self.frames() - before] += 1
        mean = sum(k * v for k, v in seen.items()) / count
        return {"mean": round(mean, 3), "mode": seen.most_common(1)[0][0],
                "histogram": dict(sorted(seen.items()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warm", type=int, default=20_000)
    ap.add_argument("--count", type=int, default=2_000)
    ap.add_argument("--output", default=str(RESULTS), help="where to write the JSON figures")
    args = ap.parse_args()
    rng = random.Random(18)
    stamp = "2026-12-06T09:00:00.000000Z"
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp) / "journal.db")
        kinds = ["admit"] * 6 + ["refusal"] * 2 + ["unknown"] * 2
        for _ in range(args.warm):
            journal.record(scan_row(rng.choice(kinds), rng, stamp))
        journal.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        counter = WalCounter(journal.conn, journal.path)
        for kind in ("admit", "refusal", "unknown"):
            def commit(k: str = kind) -> None:
                journal.record(scan_row(k, rng, stamp))
            out[kind] = counter.per_commit(commit, args.count)
        journal.close()

        floor_path = Path(tmp) / "floor.db"
        floor = open_database(floor_path, synchronous="FULL").conn
        for statement in FLOOR_SCHEMA:
            floor.execute(statement)

        def floor_commit() -> None:
            floor.execute("BEGIN IMMEDIATE")
            floor.execute("INSERT INTO scans (code, scanned_on) VALUES (?, ?)",
                          (f"NU-{rng.randrange(1, ITEMS)}", stamp))
            floor.execute("COMMIT")

        for _ in range(args.warm):
            floor_commit()
        floor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        out["floor"] = WalCounter(floor, floor_path).per_commit(floor_commit, args.count)
        floor.close()
    print(f"WAL frames (pages) per commit after {args.warm} scans, {args.count} commits each:")
    for kind, figures in out.items():
        print(f"  {kind:8s} mean {figures['mean']:5.2f}  mode {figures['mode']}  "
              f"histogram {figures['histogram']}")
    save_results({"bench": "journal_pages", "warm": args.warm, "count": args.count,
                  "frames_per_commit": out}, args.output)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
