"""What `swap_in` does to a connection to the live cache that nobody closed, on real files.

Why the daemon closes (lanes, status, the sync worker) or waits for (control commands:
agent.runtime.cachecare.SwapHold) every connection before the rename: one left open keeps
reading the replaced file, and what it writes after the rename is lost with that file. And
what the audit of the swap relies on from SQLite (sqlite.org/howtocorrupt.html 2.4): the
stale connection's close does not checkpoint into, or unlink, the -wal/-shm of the new file
that now bears the name (SQLite sees its file moved), so connections to the new file lose
nothing."""

from __future__ import annotations

from pathlib import Path

from agent.core.model import Item, parse_item
from agent.platform.sync import swap_in
from agent.store.cache import TicketCache

EVENT = 7


def _item(item_id: int, barcode: str) -> Item:
    item = parse_item({"id": item_id, "const": {"barcode": barcode},
                       "variable": {"status": "sold"}})
    assert item is not None
    return item


def _cache(path: Path, *items: Item) -> TicketCache:
    cache = TicketCache(path, check=False)
    with cache.transaction():
        cache.put_items(EVENT, list(items))
    return cache


def _barcodes(cache: TicketCache, *codes: str) -> list[str]:
    return [code for code in codes if cache.find_barcode(code)]


def test_a_connection_left_open_across_the_swap_reads_and_writes_the_replaced_file(
        tmp_path: Path) -> None:
    live_path, new_path = tmp_path / "cache.db", tmp_path / "cache.db.new"
    stale = _cache(live_path, _item(1, "OLD1"))
    rebuilt = _cache(new_path, _item(2, "NEW2"))
    rebuilt.checkpoint()
    rebuilt.close()

    swap_in(new_path, live_path)
    assert _barcodes(stale, "OLD1", "NEW2") == ["OLD1"]  # still the replaced file
    with stale.transaction():  # a tag paired, a file imported: answered done ...
        stale.put_items(EVENT, [_item(3, "LATE3")])

    fresh = TicketCache(live_path, check=False)  # the lanes, reopened by the swap
    with fresh.transaction():
        fresh.put_items(EVENT, [_item(4, "FRESH4")])  # in the new -wal, not checkpointed
    wal, shm = Path(f"{live_path}-wal"), Path(f"{live_path}-shm")
    assert wal.stat().st_size > 0 and shm.exists()
    stale.close()
    assert wal.exists() and shm.exists()  # the stale close left the new file's alone
    assert _barcodes(fresh, "OLD1", "NEW2", "LATE3", "FRESH4") == ["NEW2", "FRESH4"]
    fresh.close()

    again = TicketCache(live_path)  # integrity checked: nothing lost, nothing damaged
    try:  # ... and the stale write is nowhere
        assert _barcodes(again, "OLD1", "NEW2", "LATE3", "FRESH4") == ["NEW2", "FRESH4"]
    finally:
        again.close()
