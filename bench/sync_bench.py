"""Sync and upload benchmarks against the sandbox under the platform's default 60/min limit.

(a) Initial sync of 100,000 generated items (95,000 without products): budgeted requests
    (governor grants; async polls are free), wall time, and the rate at which pages are applied
    to SQLite (`TicketCache.put_items` + pass bookkeeping, one transaction per page) next to a
    raw floor measured in the same run: the same final rows inserted with one executemany into
    a same-schema table, in one transaction. The live figure covers well under a second of
    work while the sandbox serves the sync's polls in the same process, so it swings by about
    15% from run to run; the same pages are then applied again `--replays` times into fresh
    cache files with nothing else running (`replay_apply_items_per_s`: median, min-max).
(b) Draining a backlog of 10,000 journaled scans: requests, wall time against the minimum the
    limit allows, and 429s seen.

    .venv/bin/python bench/sync_bench.py [--tickets 100000] [--scans 10000] [--replays 5]

Prints figures with PASS/FAIL per target and writes bench/results/sync.json.

`--compare DIR [DIR ...] [--rounds 5]` instead replays the same generated pages (the sandbox's items, no
products, 1000 a page) through `_apply_page` of each checkout DIR (e.g. `git worktree add` of
the code before a change), one child process per DIR and round, alternated, `--replays` fresh
cache files each: wall items/s (median, min-max over all replays) and items/s of CPU time
(median of the children's best), so codes are compared on one machine under the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.config import load_config  # noqa: E402
from agent.core.model import strip_personal  # noqa: E402
from agent.platform import sync as sync_mod  # noqa: E402
from agent.platform.client import PlatformClient  # noqa: E402
from agent.platform.governor import Governor  # noqa: E402
from agent.platform.sync import Syncer  # noqa: E402
from agent.platform.upload import Uploader  # noqa: E402
from agent.sandbox.harness import Sandbox, start_sandbox  # noqa: E402
from agent.store import journal as journal_mod  # noqa: E402
from agent.store import lean  # noqa: E402
from agent.store.cache import TicketCache  # noqa: E402
from agent.store.journal import Journal, JournalRow  # noqa: E402

RPM = 60
TARGETS = {"sync_requests_max": 110, "apply_vs_floor_min": 0.5, "upload_requests_max": 20,
           "upload_429_max": 0}


def write_config(root: Path, sb: Sandbox) -> Path:
    token = root / "token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, sb.token.encode())
    os.close(fd)
    path = root / "config.toml"
    path.write_text(f"""
[api]
base_url = "{sb.url}"
token_file = "{token}"
token_env = ""
company_id = {sb.company_id}
requests_per_minute = {RPM}
budget_share = 1.0
device_name = "bench"
[store]
dir = "{root / 'state'}"
[events]
ids = [1001]
[[lanes]]
name = "main"
gate_id = 1
""")
    return path


def limit_floor_s(requests: int, share: int = RPM, window_s: float = 60.0) -> float:
    """Least wall time `requests` sends can take under `share` per rolling window."""
    return max(0, math.ceil(requests / share) - 1) * window_s


def bench_sync(tickets: int, workdir: Path, replays: int) -> dict[str, Any]:
    applied_s = 0.0
    pages: list[tuple[Any, ...]] = []  # each page's _apply_page arguments after the cache
    real_apply = sync_mod._apply_page

    def timed_apply(cache, event_id, page, next_url, end_time):
        nonlocal applied_s
        started = time.perf_counter()
        real_apply(cache, event_id, page, next_url, end_time)
        applied_s += time.perf_counter() - started
        pages.append((event_id, page, next_url, end_time))

    sync_mod._apply_page = timed_apply
    try:
        with start_sandbox(tickets=tickets, rpm=RPM) as sb:
            config = load_config(write_config(workdir, sb))
            governor = Governor.from_config(config.api)

            async def run() -> int:
                async with PlatformClient.from_config(config.api, sb.token, governor) as client:
                    syncer = Syncer(config, client, config.store_dir / "cache.db")
                    try:
                        await syncer.refresh_events()
                        return await syncer.sync_tickets(1001)
                    finally:
                        syncer.close()

            started = time.monotonic()
            items = asyncio.run(run())
            wall = time.monotonic() - started
            report = sb.received()
    finally:
        sync_mod._apply_page = real_apply
    budgeted = sum(governor.granted.values())
    floor_rate = raw_floor([page.items for _, page, _, _ in pages], workdir / "floor.db")
    replayed = sorted(replay_apply(pages, items, workdir / "replay.db") for _ in range(replays))
    apply_rate = items / applied_s
    return {"items": items, "pages": len(pages), "budgeted_requests": budgeted,
            "sandbox_requests_incl_polls": sum(report["perEndpoint"].values()),
            "rate_limited": report["rateLimited"], "wall_s": round(wall, 2),
            "limit_floor_wall_s": limit_floor_s(budgeted), "apply_s": round(applied_s, 3),
            "apply_items_per_s": round(apply_rate), "floor_items_per_s": round(floor_rate),
            "apply_vs_floor": round(apply_rate / floor_rate, 3),
            "replay_apply_items_per_s": {"median": round(replayed[len(replayed) // 2]),
                                         "min": round(replayed[0]), "max": round(replayed[-1]),
                                         "replays": replays} if replayed else None,
            "replay_vs_floor": round(replayed[len(replayed) // 2] / floor_rate, 3)
            if replayed else None}


def replay_apply(pages: list[tuple[Any, ...]], items: int, path: Path) -> float:
    """Items/s of applying the captured pages again, as the sync did (`_apply_page`, one
    transaction a page), into a fresh cache file with nothing else running."""
    cache = TicketCache(path, check=False)
    try:
        started = time.perf_counter()
        for event_id, page, next_url, end_time in pages:
            sync_mod._apply_page(cache, event_id, page, next_url, end_time)
        took = time.perf_counter() - started
    finally:
        cache.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return items / took


def raw_floor(pages: list[list[Any]], path: Path) -> float:
    """Items/s of one executemany of the final item rows (JSON and lean form, computed
    beforehand) into a same-schema table."""
    cache = TicketCache(path, check=False)  # same file settings and schema (with indexes)
    rows = []
    seq = 0
    for page in pages:
        for item in page:
            seq += 1
            rows.append((1001, item.id, item.barcode, item.nfc_id, item.item_type, item.status,
                         seq, json.dumps(strip_personal(item.raw), separators=(",", ":")),
                         lean.pack(item)))
    started = time.perf_counter()
    cache.conn.execute("BEGIN IMMEDIATE")
    cache.conn.executemany(
        "INSERT INTO items (event_id, id, barcode, nfc_id, item_type, status, seq, raw, lean)"
        " VALUES (?,?,?,?,?,?,?,?,?)", rows)
    cache.conn.execute("COMMIT")
    took = time.perf_counter() - started
    cache.close()
    return len(rows) / took


# Run by `--compare` in a child whose sys.path starts with the checkout to measure (argv: that
# checkout, tickets, replays): only modules every version has; prints one JSON line.
_APPLY_CHILD = """
import json, sys, tempfile, time
from datetime import UTC, datetime
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import orjson
from agent.core.model import parse_entry_page
from agent.platform import sync
from agent.sandbox.seed import generated_seed
from agent.store.cache import TicketCache
tickets, replays = int(sys.argv[2]), int(sys.argv[3])
source = generated_seed(tickets, now=datetime(2026, 12, 7, tzinfo=UTC)).items[1001]
indexes = [i for i in range(tickets) if not source.is_product(i)]
pages = []
for start in range(0, len(indexes), 1000):
    body = orjson.dumps({"content": [source.item(i) for i in indexes[start:start + 1000]],
                         "listEndTime": "2026-12-07 10:00:00", "total": len(indexes),
                         "pagination": {"next": f"http://x/?page={start // 1000 + 2}"}})
    page = parse_entry_page(orjson.loads(body))
    pages.append((1001, page, page.next_url, page.list_end_time))
items = sum(len(p[1].items) for p in pages)
walls, cpus = [], []
with tempfile.TemporaryDirectory() as tmp:
    for n in range(replays):
        cache = TicketCache(Path(tmp) / f"r{n}.db", check=False)
        wall, cpu = time.perf_counter(), time.process_time()
        for args in pages:
            sync._apply_page(cache, *args)
        walls.append(items / (time.perf_counter() - wall))
        cpus.append(items / (time.process_time() - cpu))
        cache.close()
print(json.dumps({"items": items, "wall": walls, "cpu": max(cpus), "code": sync.__file__}))
"""


def compare(roots: list[str], tickets: int, replays: int, rounds: int) -> None:
    found: dict[str, list[dict[str, Any]]] = {root: [] for root in roots}
    for _ in range(rounds):
        for root in roots:
            out = subprocess.run(
                [sys.executable, "-c", _APPLY_CHILD, str(Path(root).resolve()), str(tickets),
                 str(replays)], capture_output=True, text=True, check=True, cwd=root)
            found[root].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for root, runs in found.items():
        walls = [w for run in runs for w in run["wall"]]
        print(f"{root}: {runs[0]['items']} items, {rounds} runs x {replays} replays;"
              f" wall {statistics.median(walls):,.0f} items/s ({min(walls):,.0f}-"
              f"{max(walls):,.0f}); CPU time {statistics.median(r['cpu'] for r in runs):,.0f}"
              f" items/s (code: {runs[0]['code']})")


def bench_upload(scans: int, workdir: Path) -> dict[str, Any]:
    with start_sandbox(tickets=max(scans, 1000), rpm=RPM) as sb:
        config = load_config(write_config(workdir, sb))
        journal = Journal(config.store_dir / "journal.db")
        day = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
        rows = [JournalRow(
            uuid=str(uuid.uuid4()), code=f"SF{i:07d}", kind="barcode", barcode=f"SF{i:07d}",
            nfc_id=None, item_id=100000 + i, event_id=1001, zone_id=None,
            zone_is_default=True, gate_id=1, lane="main", direction="in", admit=True,
            status="valid", status_detail=None, message="Welcome",
            scanned_on=(day + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
            for i in range(scans)]
        journal.conn.execute("BEGIN IMMEDIATE")
        journal.conn.executemany(journal_mod._INSERT,
                                 [tuple(getattr(r, c) for c in journal_mod._COLUMNS)
                                  for r in rows])
        journal.conn.execute("COMMIT")
        governor = Governor.from_config(config.api)

        async def run() -> int:
            async with PlatformClient.from_config(config.api, sb.token, governor) as client:
                uploader = Uploader(journal, client,
                                    batch_size=config.sync["upload_batch_size"])
                return await uploader.drain()

        started = time.monotonic()
        sent = asyncio.run(run())
        wall = time.monotonic() - started
        report = sb.received()
        left = journal.counts()["pending"]
        journal.close()
    requests = sum(governor.granted.values())
    distinct = len({u["uuid"] for u in report["uploads"]})
    return {"scans": scans, "sent": sent, "pending_after": left, "requests": requests,
            "recorded_once": distinct == len(report["uploads"]) == scans,
            "rate_limited": report["rateLimited"], "wall_s": round(wall, 2),
            "limit_floor_wall_s": limit_floor_s(requests)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickets", type=int, default=100_000)
    parser.add_argument("--scans", type=int, default=10_000)
    parser.add_argument("--replays", type=int, default=5,
                        help="apply the synced pages again this many times (0: not at all)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "sync.json"))
    parser.add_argument("--compare", nargs="+", metavar="DIR",
                        help="only replay generated pages through each checkout's apply")
    parser.add_argument("--rounds", type=int, default=5, help="with --compare")
    args = parser.parse_args(argv)
    if args.compare:
        compare(args.compare, args.tickets, args.replays, args.rounds)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "a").mkdir()
        (Path(tmp) / "b").mkdir()
        sync = bench_sync(args.tickets, Path(tmp) / "a", args.replays)
        upload = bench_upload(args.scans, Path(tmp) / "b")
    checks = {
        f"sync: budgeted requests <= {TARGETS['sync_requests_max']}":
            sync["budgeted_requests"] <= TARGETS["sync_requests_max"],
        f"sync: apply rate >= {TARGETS['apply_vs_floor_min']:.0%} of the raw floor":
            sync["apply_vs_floor"] >= TARGETS["apply_vs_floor_min"],
        f"upload: requests <= {TARGETS['upload_requests_max']}":
            upload["requests"] <= TARGETS["upload_requests_max"],
        "upload: zero 429s": upload["rate_limited"] <= TARGETS["upload_429_max"],
        "upload: every scan recorded exactly once": upload["recorded_once"],
    }
    print(f"(a) initial sync of {args.tickets} generated items under {RPM}/min")
    for key, value in sync.items():
        print(f"    {key:30} {value}")
    print(f"(b) drain {args.scans} scans under {RPM}/min")
    for key, value in upload.items():
        print(f"    {key:30} {value}")
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"when": datetime.now(UTC).isoformat(), "rpm": RPM,
                               "sync": sync, "upload": upload, "targets": TARGETS,
                               "checks": checks}, indent=2) + "\n")
    print(f"results: {out}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
