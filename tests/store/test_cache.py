"""The ticket cache on real SQLite files: lookups, re-pairing, migrations, damage, file modes."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import demo_data
from agent.core.model import Item, parse_item, parse_zone
from agent.errors import CacheCorrupt, ImportFileError
from agent.platform.provision import import_file
from agent.store.cache import MIGRATIONS, TicketCache
from agent.store.sqlite import migrate, open_database
from tests.conftest import DemoSite


def test_lookup_by_barcode_nfc_and_historic(site: DemoSite) -> None:
    cache = TicketCache(site.config.store_dir / "cache.db")
    hit = cache.find_barcode(demo_data.CODES["valid"])
    assert [h.item.id for h in hit] == [1] and hit[0].event_id == demo_data.EVENT_ID
    assert [h.item.id for h in cache.find_nfc(demo_data.NFC_TAG)] == [12]
    assert cache.find_historic(demo_data.CODES["historic"]) == [demo_data.EVENT_ID]
    assert cache.find_barcode("nothing") == []
    assert {h.event_id for h in cache.find_barcode(demo_data.CODES["season"])} == {
        demo_data.EVENT_ID, demo_data.OTHER_EVENT_ID}
    assert cache.default_zone(demo_data.EVENT_ID).id == demo_data.ENTRY_ZONE
    cache.close()


def test_newest_nfc_pairing_wins_and_pairing_moves_the_tag(site: DemoSite) -> None:
    cache = TicketCache(site.config.store_dir / "cache.db")
    other = parse_item({"id": 99, "const": {"barcode": "B99"},
                        "variable": {"nfcId": demo_data.NFC_TAG.lower(), "status": "sold"}})
    with cache.transaction():
        cache.put_items(demo_data.EVENT_ID, [other])
    assert [h.item.id for h in cache.find_nfc(demo_data.NFC_TAG)][0] == 99
    with cache.transaction():
        moved = cache.pair_nfc(demo_data.EVENT_ID, 1, demo_data.NFC_TAG)
    assert sorted(moved) == [12, 99]  # the demo's tag wearer and the later item both lose it
    hits = cache.find_nfc(demo_data.NFC_TAG)
    assert [h.item.id for h in hits] == [1]
    assert hits[0].item.nfc_id == demo_data.NFC_TAG  # stored JSON agrees with the index
    assert hits[0].item.status == "sold"  # item 1 had `variable: []`; it is an object now
    old = cache.find_barcode(demo_data.CODES["nfc_ticket"])[0].item
    assert old.nfc_id is None
    assert "nfcId" not in (cache.payload(demo_data.EVENT_ID, old.id) or {})["variable"]
    with cache.transaction():  # a new tag replaces the ticket's old one
        assert cache.pair_nfc(demo_data.EVENT_ID, 1, "0x04FFFFFFFFFFFF") == []
    assert cache.find_nfc(demo_data.NFC_TAG) == []
    assert cache.find_barcode(demo_data.CODES["valid"])[0].item.nfc_id == "0x04FFFFFFFFFFFF"
    cache.close()


def test_migrations_recorded_wal_and_private_files(site: DemoSite) -> None:
    path = site.config.store_dir / "cache.db"
    cache = TicketCache(path)
    names = [r[0] for r in cache.conn.execute("SELECT name FROM migrations")]
    assert names == ["0001_initial", "0002_resumable_pass", "0003_lookup_indexes",
                     "0005_venue_catalog", "0006_lean_items", "0007_catalog_term_epoch",
                     "0008_items_seq_in_meta"]
    assert cache.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(site.config.store_dir / "journal.db").st_mode) == 0o600
    cache.close()


def test_personal_data_not_stored_by_default(site: DemoSite) -> None:
    cache = TicketCache(site.config.store_dir / "cache.db")
    raw = json.loads(cache.conn.execute("SELECT raw FROM items WHERE id = 1").fetchone()[0])
    assert "customerEmail" not in raw["stable"] and raw["stable"]["customerName"] == "Ada Lovelace"
    cache.close()


@pytest.mark.parametrize("damage", [b"garbage" * 100, b""])
def test_damaged_cache_is_reported_not_crashed(tmp_path: Path, damage: bytes,
                                               site: DemoSite) -> None:
    path = site.config.store_dir / "cache.db"
    if damage:
        path.write_bytes(damage)
    else:
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            fh.truncate(size // 3)
        for extra in ("-wal", "-shm"):
            Path(str(path) + extra).unlink(missing_ok=True)
    with pytest.raises(CacheCorrupt, match="cache.db.*sync --full"):
        TicketCache(path)
    # the journal beside it is untouched and still opens
    from agent.store.journal import Journal
    Journal(site.config.store_dir / "journal.db").close()


def test_import_refuses_unknown_shapes_and_missing_event(tmp_path: Path, site: DemoSite) -> None:
    cache = TicketCache(site.config.store_dir / "cache.db")
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(ImportFileError, match="not a platform response"):
        import_file(cache, bad, site.now)
    bad.write_text("{not json")
    with pytest.raises(ImportFileError, match="not JSON"):
        import_file(cache, bad, site.now)
    bad.write_text('{"content": [{"id": 1}]}')
    with pytest.raises(ImportFileError, match="--event"):
        import_file(cache, bad, site.now)
    assert import_file(cache, bad, site.now, event_id=77).count == 1
    cache.close()


def test_a_full_listing_keeps_only_its_items_with_their_side_rows(site: DemoSite) -> None:
    """`keep_only_items` (the venue leader's full pass): items the listing did not name go,
    with their historic barcodes and platform scans; other events are not touched."""
    cache = TicketCache(site.config.store_dir / "cache.db")
    try:
        [(owner,)] = cache.conn.execute("SELECT item_id FROM historic_barcodes WHERE barcode = ?",
                                        (demo_data.CODES["historic"],)).fetchall()
        ids = [r[0] for r in cache.conn.execute("SELECT id FROM items WHERE event_id = ?",
                                                (demo_data.EVENT_ID,))]
        others = cache.conn.execute("SELECT count(*) FROM items WHERE event_id != ?",
                                    (demo_data.EVENT_ID,)).fetchone()[0]
        with cache.transaction():
            gone = cache.keep_only_items(demo_data.EVENT_ID, [i for i in ids if i != owner])
        assert gone == [owner]
        assert cache.find_historic(demo_data.CODES["historic"]) == []
        left = cache.conn.execute("SELECT count(*) FROM items WHERE event_id = ?",
                                  (demo_data.EVENT_ID,)).fetchone()[0]
        assert left == len(ids) - 1
        assert cache.conn.execute("SELECT count(*) FROM items WHERE event_id != ?",
                                  (demo_data.EVENT_ID,)).fetchone()[0] == others
        assert cache.conn.execute("SELECT count(*) FROM platform_scans WHERE item_id = ? "
                                  "AND event_id = ?", (owner, demo_data.EVENT_ID)
                                  ).fetchone()[0] == 0
        with cache.transaction():
            assert cache.remove_items(demo_data.EVENT_ID, [owner]) == 0  # already gone
    finally:
        cache.close()


def test_the_default_zone_follows_every_change_of_the_zones(site: DemoSite) -> None:
    """default_zone() remembers its answer per event (issue 18): each way the zones change
    (a refresh that drops or renames the Entry zone, a rolled-back transaction) is seen."""
    cache = TicketCache(site.config.store_dir / "cache.db")
    try:
        event = demo_data.EVENT_ID
        entry = cache.default_zone(event)
        assert entry is not None and entry.id == demo_data.ENTRY_ZONE
        others = [z for z in cache.zones(event) if z.id != entry.id]
        cache.put_zones(event, others, "2026-12-06T12:00:00Z")
        assert cache.default_zone(event) is None
        renamed = parse_zone({**entry.raw, "id": entry.id + 1000, "name": " ENTRY "}, event)
        assert renamed is not None
        cache.put_zones(event, [*others, renamed], "2026-12-06T12:01:00Z")
        assert cache.default_zone(event) == renamed
        with pytest.raises(RuntimeError), cache.transaction():
            cache.put_zones(event, others, "2026-12-06T12:02:00Z")
            assert cache.default_zone(event) is None
            raise RuntimeError("the page failed half-way")
        assert cache.default_zone(event) == renamed  # rolled back, read again from the file
    finally:
        cache.close()


def _scanned_item(item_id: int) -> Item:
    item = parse_item({
        "id": item_id, "const": {"barcode": f"B{item_id}"},
        "variable": {"status": "scanned", "historicBarcodes": [f"H{item_id}"]},
        "zoneData": {"accessToZones": [{"id": 1}], "scans": [
            {"zoneId": 1, "scan": "in", "scannedOn": "2026-07-01 18:00:00",
             "uuid": f"uuid-{item_id}"}]}})
    assert item is not None
    return item


@pytest.mark.parametrize("page", [
    [20],  # the item alone: its id is both ends of the page's range
    [10, 20, 30],  # inside the range
    [20, 35, 5],  # at one end of an unordered page
    [19, 21],  # the range covers it, the page does not name it: its side rows stay
    [40, 50],  # a page wholly past every cached id (a first fill's next page)
])
def test_rewriting_items_replaces_their_side_rows_once(tmp_path: Path, page: list[int]) -> None:
    """put_items deletes an item's old platform scans and historic barcodes only when it is
    cached already (found by a probe of the page's id range, then by id): a rewrite never
    doubles them, and items the page does not name keep theirs."""
    cache = TicketCache(tmp_path / "cache.db")
    with cache.transaction():
        cache.put_items(7, [_scanned_item(i) for i in (10, 20, 30)])
    with cache.transaction():
        cache.put_items(7, [_scanned_item(i) for i in page])
    for item_id in sorted({10, 20, 30, *page}):
        for table in ("platform_scans", "historic_barcodes"):
            assert cache.conn.execute(
                f"SELECT count(*) FROM {table} WHERE event_id = 7 AND item_id = ?",
                (item_id,)).fetchone()[0] == 1, (table, item_id)
    assert cache.platform_scans(7, 20)[0].uuid == "uuid-20"
    cache.close()


def test_missing_columns_are_stored_as_null_and_lean_forms_as_blobs(tmp_path: Path) -> None:
    """put_items binds a missing barcode, NFC id or lean form as 0 (NULLIF makes it NULL) and
    a lean form as a bytearray: the rows hold NULL and BLOB, as binding None and bytes did."""
    cache = TicketCache(tmp_path / "cache.db")
    items = [parse_item({"id": 1}), parse_item({"id": 2, "const": {"barcode": "0"},
                                                "variable": {"nfcId": "0x04A1"}}),
             parse_item({"id": 3, "const": {"barcode": "B3"}})]  # the usual row's statement
    with cache.transaction():
        assert cache.put_items(7, [i for i in items if i is not None]) == 3
    rows = cache.conn.execute("SELECT id, typeof(barcode), barcode, typeof(nfc_id), nfc_id,"
                              " typeof(lean), seq FROM items ORDER BY id").fetchall()
    assert rows == [(1, "null", None, "null", None, "blob", 1),
                    (2, "text", "0", "text", "0x04A1", "blob", 2),
                    (3, "text", "B3", "null", None, "blob", 3)]
    assert [h.item.id for h in cache.find_barcode("0")] == [2]
    cache.close()


def _seqs(cache: TicketCache) -> dict[int, int]:
    return dict(cache.conn.execute("SELECT id, seq FROM items"))


def test_items_an_older_build_wrote_after_0008_stay_older_than_later_writes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A gate downgraded to a build before 0008 writes items at MAX(seq) + 1 and leaves meta's
    newest seq behind; upgraded again, the next open counts on from those items, so a ticket
    written later is the newer one (it would otherwise take a seq below theirs)."""
    path = tmp_path / "cache.db"
    items = [i for i in (parse_item(p) for p in
                         demo_data.build(datetime(2026, 7, 1, tzinfo=UTC))["tickets"]["content"])
             if i is not None]
    cache = TicketCache(path)
    with cache.transaction():
        cache.put_items(demo_data.EVENT_ID, items[1:])
    cache.close()
    old = open_database(path, synchronous="NORMAL")  # what the older build's sync did
    newest = old.conn.execute("SELECT MAX(seq) FROM items").fetchone()[0] + 5
    old.conn.execute(
        "INSERT OR REPLACE INTO items (event_id, id, barcode, nfc_id, item_type, status, seq, raw)"
        " VALUES (?,?,?,?,?,?,?,?)", (demo_data.EVENT_ID, items[0].id, items[0].barcode,
                                      items[0].nfc_id, items[0].item_type, items[0].status,
                                      newest, json.dumps(items[0].raw)))
    old.conn.commit()
    old.conn.close()

    with caplog.at_level("WARNING", logger="agent.store.cache"):
        cache = TicketCache(path)
    assert f"newest seq {newest}" in caplog.text
    with cache.transaction():
        cache.put_items(demo_data.EVENT_ID, items[1:2])
    assert _seqs(cache)[items[1].id] == newest + 1
    cache.close()
    caplog.clear()
    with caplog.at_level("WARNING", logger="agent.store.cache"):
        TicketCache(path).close()  # caught up: nothing to say at the next open
    assert "older gate-agent" not in caplog.text


def test_a_cache_from_before_0008_counts_seq_on_from_its_newest_item(tmp_path: Path) -> None:
    """Migration 0008 drops items_seq and keeps the newest seq in meta, taken from the items
    already there: a later write and a pairing are newer than every old row."""
    path = tmp_path / "cache.db"
    old = open_database(path, synchronous="NORMAL")
    migrate(old, [m for m in MIGRATIONS if m[0] != "0008_items_seq_in_meta"])
    items = [i for i in (parse_item(p) for p in
                         demo_data.build(datetime(2026, 7, 1, tzinfo=UTC))["tickets"]["content"])
             if i is not None]
    old.conn.executemany(
        "INSERT INTO items (event_id, id, barcode, nfc_id, item_type, status, seq, raw)"
        " VALUES (?,?,?,?,?,?,?,?)",
        [(demo_data.EVENT_ID, i.id, i.barcode, i.nfc_id, i.item_type, i.status, 100 + 7 * n,
          json.dumps(i.raw)) for n, i in enumerate(items)])
    old.conn.commit()
    old.conn.close()
    newest = 100 + 7 * (len(items) - 1)

    cache = TicketCache(path)
    assert cache.conn.execute(
        "SELECT COUNT(*) FROM sqlite_master WHERE name = 'items_seq'").fetchone()[0] == 0
    with cache.transaction():
        cache.put_items(demo_data.EVENT_ID, items[:1])
    assert _seqs(cache)[items[0].id] == newest + 1
    with cache.transaction():
        cache.pair_nfc(demo_data.EVENT_ID, items[1].id, "0x04AAAAAAAAAAAA")
    assert _seqs(cache)[items[1].id] == newest + 2
    assert [h.item.id for h in cache.find_nfc("0x04AAAAAAAAAAAA")] == [items[1].id]
    cache.close()


def test_seq_counts_on_from_what_another_connection_wrote(site: DemoSite) -> None:
    """A gate pairs a tag through its own connection while the sync worker writes items
    through another: each write reads the newest seq in its transaction, so the pairing is
    the newest whatever each connection saw when it opened."""
    path = site.config.store_dir / "cache.db"
    gate, worker = TicketCache(path), TicketCache(path)
    items = [i for i in (parse_item(p) for p in
                         demo_data.build(datetime(2026, 7, 1, tzinfo=UTC))["tickets"]["content"])
             if i is not None]
    with worker.transaction():
        worker.put_items(demo_data.EVENT_ID, items)
    newest = max(_seqs(worker).values())
    with gate.transaction():
        gate.pair_nfc(demo_data.EVENT_ID, 1, demo_data.NFC_TAG)
    assert _seqs(gate)[1] == newest + 1
    with worker.transaction():
        worker.put_items(demo_data.EVENT_ID, items[-1:])
    assert _seqs(gate)[items[-1].id] == newest + 2
    gate.close()
    worker.close()
