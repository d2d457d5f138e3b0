"""The item fields stored beside the JSON (cache migration 0004, issue 18): a lookup returns
the Item the sync parsed from the platform's payload, and reads the stored JSON where a row
has no usable fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.model import parse_item
from agent.store.cache import MIGRATIONS, TicketCache, _decode
from agent.store.itemfields import decode_fields, encode_fields
from agent.store.sqlite import migrate, open_database

JSONISH = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                    st.text(max_size=12), st.lists(st.integers(0, 9), max_size=2),
                    st.dictionaries(st.sampled_from(["id", "x"]), st.integers(0, 99), max_size=2))


def alt(strategy: Any) -> Any:
    """The usual value, or any JSON value in its place."""
    return st.one_of(strategy, JSONISH)


@st.composite
def payloads(draw: Any, item_id: int) -> dict[str, Any]:
    """`GET /entry/tickets` items, usual and odd: every field the parser reads, any type."""
    def maybe(strategy: Any) -> Any:
        return draw(st.one_of(strategy, JSONISH))

    scan = st.fixed_dictionaries({"zoneId": alt(st.integers(1, 9)),
                                  "scan": alt(st.sampled_from(["in", "out"])),
                                  "scannedOn": alt(st.just("2026-12-06 10:00:00")),
                                  "uuid": alt(st.uuids().map(str))})
    return {
        "id": item_id, "itemType": maybe(st.sampled_from(["ticket", "product"])),
        "parentOrderItemId": maybe(st.integers(1, 99)),
        "const": {"barcode": f"NU{item_id:06d}", "type": maybe(st.text(max_size=8)),
                  "typeId": maybe(st.integers(1, 99)), "transactionId": maybe(st.text(max_size=6)),
                  "historicBarcodes": maybe(st.lists(st.text(min_size=1, max_size=6), max_size=2))},
        "stable": {"customerName": maybe(st.text(max_size=10)), "customerEmail": "a@b.c",
                   "validFrom": maybe(st.just("2026-12-06")), "validTo": maybe(st.just("x")),
                   "dateOfBirth": maybe(st.just("2000-01-01"))},
        "variable": draw(st.one_of(st.just([]), st.fixed_dictionaries({
            "status": alt(st.sampled_from(["sold", "scanned", "refunded", "weird"])),
            "nfcId": alt(st.sampled_from(["04a22b9c1d5e80", "0x04A2", "zz"])),
            "scannedOn": alt(st.just("2026-12-06 09:00:00"))}))),
        "zoneData": draw(st.one_of(JSONISH, st.fixed_dictionaries({
            "accessToZones": alt(st.lists(st.fixed_dictionaries({"id": alt(st.integers(1, 9))}),
                                          max_size=3)),
            "scans": alt(st.lists(scan, max_size=3))}))),
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(1, 10_000), min_size=1, max_size=8, unique=True).flatmap(
    lambda ids: st.tuples(*[payloads(i) for i in ids])))
def test_a_lookup_returns_what_parsing_the_stored_json_returns(tmp_path: Path,
                                                               raws: tuple[Any, ...]) -> None:
    cache = TicketCache(tmp_path / f"c{abs(hash(str(raws)))}.db")
    try:
        items = [i for i in (parse_item(r) for r in raws) if i is not None]
        with cache.transaction():
            cache.put_items(501, items)
        for item in items:
            stored = cache.conn.execute("SELECT raw, fields FROM items WHERE id = ?",
                                        (item.id,)).fetchone()
            [hit] = cache.find_barcode(item.barcode or "")
            if stored[1] is not None:  # the Item the sync parsed, exactly
                assert hit.item == item == decode_fields(stored[1])
            else:  # not encodable as an array (a lone surrogate): the JSON, as before
                assert hit.item == parse_item(_decode(stored[0]))
    finally:
        cache.close()


def test_rows_without_usable_fields_are_read_through_their_json(tmp_path: Path) -> None:
    """Rows from before 0004 (NULL), an array of another version, a re-paired row."""
    path = tmp_path / "cache.db"
    db = open_database(path)
    migrate(db, MIGRATIONS[:3])  # a cache as round one left it
    raw = '{"id":5,"const":{"barcode":"NU5"},"variable":{"status":"sold"}}'
    db.conn.execute("INSERT INTO items (event_id, id, barcode, seq, raw) VALUES (501, 5, 'NU5', 1, ?)",
                    (raw,))
    db.conn.close()
    cache = TicketCache(path)
    try:
        expected = parse_item(_decode(raw))
        assert [h.item for h in cache.find_barcode("NU5")] == [expected]
        cache.conn.execute("UPDATE items SET fields = '[99, 5]' WHERE id = 5")
        assert [h.item for h in cache.find_barcode("NU5")] == [expected]
        stored = encode_fields(expected)
        assert stored is not None and decode_fields(stored) == expected
        cache.conn.execute("UPDATE items SET fields = ? WHERE id = 5", (stored,))
        with cache.transaction():
            cache.pair_nfc(501, 5, "0x04A22B9C1D5E80")
        [hit] = cache.find_nfc("0x04A22B9C1D5E80")
        assert hit.item.nfc_id == "0x04A22B9C1D5E80"  # the JSON the pairing rewrote
        assert cache.conn.execute("SELECT fields FROM items WHERE id = 5").fetchone()[0] is None
    finally:
        cache.close()


def test_an_infinite_validity_bound_stays_unreadable(tmp_path: Path) -> None:
    """`Infinity` passes Python's JSON parser; the stored JSON turned it into null ("no
    bound", an admit). The stored fields keep it as the unreadable marker the engine refuses."""
    cache = TicketCache(tmp_path / "cache.db")
    try:
        item = parse_item({"id": 9, "const": {"barcode": "NU9"},
                           "stable": {"validTo": float("inf")}})
        assert item is not None and item.valid_to == "<float>"
        with cache.transaction():
            cache.put_items(501, [item])
        assert [h.item.valid_to for h in cache.find_barcode("NU9")] == ["<float>"]
    finally:
        cache.close()
