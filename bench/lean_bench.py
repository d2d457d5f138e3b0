"""What a cache hit's item costs: parsed from its stored JSON, or built from its lean form.

Prints figures; not a test. Per item, over N distinct items of `core_bench`'s platform shape
(so CPU caches are as cold as a lookup's among many items):
- read: `orjson.loads` + `parse_item` (the JSON path) against the lean form's `orjson.loads` + `Item(...)`
  (`agent.store.lean.unpack`), the lean path;
- write: what a writer adds per item (`lean.pack` with its JSON round-trip check);
- size: stored JSON and lean form, in bytes;
- lookup: `TicketCache.find_barcode` on a real cache file of N items, lean forms present
  against the same file with them set NULL (the JSON path), with the raw floor, an indexed
  SELECT of the same row, measured in the same run.

    .venv/bin/python bench/lean_bench.py [--items 20000] [--rounds 5]

Each figure is the best of `--rounds` (min: the least disturbed by other jobs on the machine).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core_bench import EVENT_ID, ItemFactory, barcode  # noqa: E402

from agent.core.model import parse_item, strip_personal  # noqa: E402
from agent.store import lean  # noqa: E402
from agent.store.cache import TicketCache, _decode, _stored_forms  # noqa: E402


def per_item_us(fn: Callable[[Any], Any], data: Sequence[Any], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for x in data:
            fn(x)
        best = min(best, (time.perf_counter_ns() - started) / len(data))
    return best / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    n, rounds = args.items, args.rounds
    factory = ItemFactory(datetime.now(UTC))
    items = [i for i in (parse_item(factory.item(k)) for k in range(n)) if i is not None]
    texts = [_stored_forms(i, strip_personal(i.raw))[0] for i in items]
    blobs = [lean.pack(i) or b"" for i in items]
    order = list(range(n))
    random.Random(7).shuffle(order)
    texts = [texts[k] for k in order]
    blobs = [blobs[k] for k in order]

    def json_path(text: str) -> Any:
        return parse_item(_decode(text))

    def write_extra(item: Any) -> Any:
        return lean.pack(item, as_orjson_stores_it=True)

    print(f"{n:,} distinct items, best of {rounds} rounds")
    print(f"read   JSON path (orjson.loads + parse_item): {per_item_us(json_path, texts, rounds):6.2f} us")
    print(f"read   lean path (orjson.loads + Item):        {per_item_us(lean.unpack, blobs, rounds):6.2f} us")
    print(f"write  lean form added (pack + check):         {per_item_us(write_extra, items, rounds):6.2f} us")
    print(f"size   stored JSON {sum(map(len, texts)) / n:.0f} B, lean form "
          f"{sum(map(len, blobs)) / n:.0f} B per item")

    with tempfile.TemporaryDirectory() as tmp:
        cache = TicketCache(Path(tmp) / "cache.db")
        with cache.transaction():
            cache.put_items(EVENT_ID, items)
        codes = [barcode(k) for k in order]
        conn = cache.conn

        def floor(code: str) -> Any:
            return conn.execute("SELECT event_id, seq, lean, raw FROM items WHERE barcode = ?",
                                (code,)).fetchall()

        lean_us = per_item_us(cache.find_barcode, codes, rounds)
        floor_us = per_item_us(floor, codes, rounds)
        with cache.transaction():
            conn.execute("UPDATE items SET lean = NULL")
        json_us = per_item_us(cache.find_barcode, codes, rounds)
        cache.close()
    print(f"lookup find_barcode, lean forms: {lean_us:6.2f} us; JSON path: {json_us:6.2f} us; "
          f"floor (the row's SELECT): {floor_us:6.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
