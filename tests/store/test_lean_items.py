"""Issue 18: a cache hit built from the item's lean form (agent.store.lean) is exactly the Item
its stored JSON parses into, on real cache files; whatever lean form cannot be trusted (NULL,
another format, damaged) is answered from the JSON, never refused and never a crash.

Items are compared by `repr` (every field but `raw`, with types: `1`, `True` and `1.0` differ).
"""

from __future__ import annotations

import marshal
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from agent import demo_data
from agent.core.model import Item, parse_item, strip_personal
from agent.runtime.gate import Gate
from agent.store import lean
from agent.store.cache import MIGRATIONS, TicketCache
from agent.store.sqlite import migrate, open_database
from tests.conftest import DemoSite
from tests.core.test_lean_paths import IDS, ITEM, TRICKY_TEXT, fields

EVENT = demo_data.EVENT_ID
NOW = datetime(2026, 7, 1, 18, 0, tzinfo=UTC)


def demo_items() -> list[Item]:
    payloads = demo_data.build(NOW)["tickets"]["content"]
    return [i for i in (parse_item(p) for p in payloads) if i is not None]


def json_path(cache: TicketCache, item_id: int, event_id: int = EVENT) -> str:
    """What a lookup made of this row before lean forms: parse_item of its stored JSON."""
    return repr(parse_item(cache.payload(event_id, item_id)))


def lean_path(cache: TicketCache, item_id: int, event_id: int = EVENT) -> str:
    blob = cache.conn.execute("SELECT lean FROM items WHERE event_id = ? AND id = ?",
                              (event_id, item_id)).fetchone()[0]
    assert blob is not None, f"item {item_id} has no lean form"
    item = lean.unpack(blob)
    assert item is not None, f"item {item_id}'s lean form was not accepted"
    return repr(item)


def assert_every_row_agrees(cache: TicketCache) -> int:
    rows = cache.conn.execute("SELECT event_id, id FROM items").fetchall()
    for event_id, item_id in rows:
        assert lean_path(cache, item_id, event_id) == json_path(cache, item_id, event_id)
    return len(rows)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[TicketCache]:
    c = TicketCache(tmp_path / "cache.db")
    with c.transaction():
        c.put_items(EVENT, demo_items())
    yield c
    c.close()


# -- the lean form is the JSON's Item --------------------------------------------------------

# Values whose JSON round trip is not the identity: orjson writes NaN/Infinity as null and
# reads integers beyond 64 bits as floats; lone surrogates and such integers make the cache
# fall back to the standard encoder. Plus the strings those floats parse into.
ROUND_TRIP = st.one_of(
    TRICKY_TEXT, st.floats(), st.integers(-(2**66), 2**66),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 2**70, -(2**70), 2**64,
                     2**64 - 1, 2**63, -(2**63) - 1, "\ud800", "nan", "inf", "-inf",
                     "<float>", 1e16, -0.0, 0.1, True, None, [], {}]),
)
BENT = st.one_of(IDS, ROUND_TRIP)
BENT_SCAN = fields(zoneId=BENT, scan=ROUND_TRIP, scannedOn=ROUND_TRIP, uuid=ROUND_TRIP)
BENT_ITEM = fields(
    id=IDS, itemType=ROUND_TRIP, parentOrderItemId=BENT, dateOfBirth=ROUND_TRIP,
    historicBarcodes=st.lists(st.one_of(ROUND_TRIP, fields(barcode=ROUND_TRIP)), max_size=3),
    const=fields(barcode=ROUND_TRIP, type=ROUND_TRIP, typeDuringSale=ROUND_TRIP, typeId=BENT,
                 transactionId=st.one_of(ROUND_TRIP, st.lists(ROUND_TRIP, max_size=3))),
    stable=fields(customerName=ROUND_TRIP, dateOfBirth=ROUND_TRIP, validFrom=ROUND_TRIP,
                  validTo=ROUND_TRIP, customerEmail=ROUND_TRIP),
    variable=st.one_of(ROUND_TRIP, fields(nfcId=ROUND_TRIP, scannedOn=ROUND_TRIP,
                                          status=ROUND_TRIP)),
    zoneData=fields(accessToZones=st.lists(fields(id=BENT), max_size=2),
                    scans=st.lists(st.one_of(BENT_SCAN, ROUND_TRIP), max_size=3)),
)


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[bool, TicketCache]]:
    """One real cache file per `keep_personal_data` setting, shared by the examples."""
    root = tmp_path_factory.mktemp("lean")
    opened = {keep: TicketCache(root / f"cache-{keep}.db", keep_personal_data=keep)
              for keep in (False, True)}
    yield opened
    for c in opened.values():
        c.close()


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.one_of(BENT_ITEM, BENT_ITEM, ITEM), keep_personal=st.booleans())
# Each round trip that changes an Item, alone (generated items tend to mix several):
@example({"id": 1, "zoneData": {"scans": [{"zoneId": float("nan"), "scan": "in"}]}}, False)
@example({"id": 2, "const": {"barcode": 2**70}}, False)  # the standard encoder; read as float
@example({"id": 3, "stable": {"validFrom": float("inf")}}, False)
@example({"id": 4, "variable": {"status": float("nan")}}, True)
@example({"id": 5, "const": {"barcode": "\ud800", "typeId": 2**64}}, False)
@example({"id": 6, "historicBarcodes": ["OLD1", float("-inf")]}, False)
@example({"id": 7, "const": {"transactionId": ["ORD1", float("nan")]}}, False)
@example({"id": 8, "zoneData": {"scans": [{"zoneId": 3, "uuid": float("inf")}]}}, False)
@example({"id": 9, "zoneData": {"scans": [{"zoneId": 3, "scannedOn": float("nan")}]}}, False)
@example({"id": 10, "variable": {"status": [float("inf")]}}, False)  # found by hypothesis
# A status of another type is cut at 40 characters: a NaN past the cut leaves no mark in the
# Item, and the JSON's null is cut away the same way, so both forms still agree.
@example({"id": 11, "variable": {"status": [1] * 15 + [float("nan")]}}, False)
@example({"id": 12, "variable": {"status": [1] * 12 + [float("inf")]}}, False)
def test_lean_form_is_the_item_the_stored_json_parses_into(
        caches: dict[bool, TicketCache], payload: Any, keep_personal: bool) -> None:
    item = parse_item(payload)  # the sync's Item, with the platform's dict as raw
    assume(item is not None)
    assert item is not None
    cache = caches[keep_personal]
    with cache.transaction():
        cache.put_items(EVENT, [item])
    assert lean_path(cache, item.id) == json_path(cache, item.id)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("payload", [
    {"id": 1, "const": {"barcode": NAN}},
    {"id": 2, "stable": {"validTo": -INF}},
    {"id": 3, "variable": {"status": NAN}},
    {"id": 4, "variable": {"status": {"nested": [1, [INF]]}}},
    {"id": 5, "variable": INF},
    {"id": 6, "const": {"transactionId": ["ORD1", NAN]}},
    {"id": 7, "historicBarcodes": ["OLD1", INF]},
    {"id": 8, "zoneData": {"scans": [{"zoneId": NAN, "scan": "in"}]}},
    {"id": 9, "zoneData": {"scans": [{"zoneId": 3, "uuid": INF}]}},
])
def test_what_a_nan_or_infinity_became_is_never_packed_as_orjson_stores_it(
        payload: dict[str, Any]) -> None:
    """orjson stores NaN and Infinity as null: the Item parsed from the platform's dict is not
    the stored JSON's, so `pack` refuses it (the cache then packs the stored JSON's Item)."""
    item = parse_item(payload)
    assert item is not None
    assert lean.pack(item, as_orjson_stores_it=True) is None
    assert lean.pack(item) is not None  # the type, not the text, is what is refused


def test_texts_that_read_like_a_nan_are_packed_directly() -> None:
    """The refusal is by type: a ticket whose texts are "nan", "inf" or a marker's words (a
    name, a status, a barcode as sent) keeps the fast path and its lean form."""
    payload = {"id": 1, "const": {"barcode": "nan", "transactionId": ["ORD1", "inf"]},
               "stable": {"customerName": "<float>", "validFrom": "-inf"},
               "variable": {"status": "<float: nan>", "scannedOn": "nan"},
               "historicBarcodes": ["inf"],
               "zoneData": {"scans": [{"zoneId": -1, "uuid": "nan", "scan": "in"}]}}
    item = parse_item(payload)
    assert item is not None
    assert lean.unpack(lean.pack(item, as_orjson_stores_it=True) or b"") == item


def test_a_hit_is_built_from_the_lean_form(cache: TicketCache) -> None:
    """The lookups read the lean form (no fallback counted) and give what the JSON gives."""
    for code in demo_data.CODES.values():
        for hit in cache.find_barcode(code):
            assert repr(hit.item) == json_path(cache, hit.item.id, hit.event_id)
            assert hit.item.raw == {}  # nothing on the lookup path reads it
    hits = cache.find_nfc(demo_data.NFC_TAG)
    assert [h.item.id for h in hits] == [12] and hits[0].item.nfc_id == demo_data.NFC_TAG
    assert cache.lean_misses == 0
    assert assert_every_row_agrees(cache) == len(demo_items())


def test_personal_fields_never_reach_the_lean_form(tmp_path: Path) -> None:
    payload = demo_data.build(NOW)["tickets"]["content"][0]
    payload["stable"]["nationalId"] = "NAT-123456"
    c = TicketCache(tmp_path / "cache.db")
    with c.transaction():
        c.put_items(EVENT, [parse_item(payload)])  # type: ignore[list-item]
    blob = c.conn.execute("SELECT lean FROM items").fetchone()[0]
    assert b"NAT-123456" not in blob and b"guest1@example.com" not in blob
    c.close()


# -- every writer keeps the lean form in step with the JSON ----------------------------------

def test_pairing_rewrites_the_lean_form_of_every_item_it_touches(cache: TicketCache) -> None:
    with cache.transaction():
        moved = cache.pair_nfc(EVENT, 1, demo_data.NFC_TAG)
    assert moved == [12]
    assert [h.item.id for h in cache.find_nfc(demo_data.NFC_TAG)] == [1]
    old = cache.find_barcode(demo_data.CODES["nfc_ticket"])[0].item
    assert old.id == 12 and old.nfc_id is None
    assert cache.lean_misses == 0  # both answered from lean forms, which say what the JSON says
    assert_every_row_agrees(cache)


def test_import_and_a_resync_write_lean_forms(tmp_path: Path) -> None:
    """The technician's import (agent.platform.provision) goes through put_items too; a later
    copy of an item (a delta sync page) replaces its lean form with the JSON."""
    from agent.platform.provision import import_file

    files = demo_data.write_demo_files(tmp_path / "platform", NOW)
    c = TicketCache(tmp_path / "cache.db")
    for path in files:
        import_file(c, path, NOW)
    assert assert_every_row_agrees(c) == 15
    changed = demo_data.build(NOW)["tickets"]["content"][0]
    changed["variable"] = {"status": "refunded"}
    with c.transaction():
        c.put_items(EVENT, [parse_item(changed)])  # type: ignore[list-item]
    assert c.find_barcode(demo_data.CODES["valid"])[0].item.status == "refunded"
    assert c.lean_misses == 0
    assert_every_row_agrees(c)
    c.close()


# -- what cannot be trusted is parsed from the JSON ------------------------------------------

def _rewrite_lean(cache: TicketCache, item_id: int, blob: bytes | None) -> None:
    cache.conn.execute("UPDATE items SET lean = ? WHERE event_id = ? AND id = ?",
                       (blob, EVENT, item_id))


def _other_format(cache: TicketCache, item_id: int) -> bytes:
    tag, plain, scans = orjson.loads(cache.conn.execute(
        "SELECT lean FROM items WHERE event_id = ? AND id = ?", (EVENT, item_id)).fetchone()[0])
    # A stale row: another build's tag, and a field that build parsed differently.
    return orjson.dumps((tag ^ 1, (*plain[:12], "sold", *plain[13:]), scans))


def _marshal_form(cache: TicketCache, item_id: int) -> bytes:
    """The form this agent wrote before the lean forms became JSON (session 13): marshal of the
    same fields, this build's tag included, and a field that says something else."""
    tag, plain, scans = orjson.loads(cache.conn.execute(
        "SELECT lean FROM items WHERE event_id = ? AND id = ?", (EVENT, item_id)).fetchone()[0])
    return marshal.dumps((tag, tuple((*plain[:12], "sold", *plain[13:])), tuple(scans)), 4)


@pytest.mark.parametrize("damage", [
    "null", "other format", "marshal form", b"", b"garbage", b"[1,2,3]", b"[1, 2",
    orjson.dumps((lean.FORMAT, (1, 2), ())), orjson.dumps((lean.FORMAT, (4,) * 16, ((1, 2),))),
    orjson.dumps((lean.FORMAT, [4] * 16, [])), orjson.dumps("abc"), orjson.dumps({"a": 1}),
    marshal.dumps([1, 2, 3]),
])
def test_untrusted_lean_form_falls_back_to_the_json(cache: TicketCache, damage: Any) -> None:
    refunded = 4  # its JSON says refunded: any lean form of "sold" taken would admit it
    blob = None if damage == "null" else _other_format(cache, refunded) \
        if damage == "other format" else _marshal_form(cache, refunded) \
        if damage == "marshal form" else damage
    _rewrite_lean(cache, refunded, blob)
    hit = cache.find_barcode(demo_data.CODES["refunded"])
    assert [h.item.status for h in hit] == ["refunded"]
    assert repr(hit[0].item) == json_path(cache, refunded)
    assert cache.lean_misses == 1
    assert cache.find_barcode(demo_data.CODES["valid"])[0].item.id == 1  # the others: lean
    assert cache.lean_misses == 1


def test_a_cache_from_before_lean_forms_migrates_and_keeps_answering(tmp_path: Path) -> None:
    """A 0005-era file: items written without the column; it is added (NULL) on open, the
    lookups parse the JSON, and a sync's rewrite gives an item its lean form."""
    path = tmp_path / "cache.db"
    old = open_database(path, synchronous="NORMAL")
    migrate(old, [m for m in MIGRATIONS if m[0] != "0006_lean_items"])
    items = demo_items()
    old.conn.executemany(
        "INSERT INTO items (event_id, id, barcode, nfc_id, item_type, status, seq, raw)"
        " VALUES (?,?,?,?,?,?,?,?)",
        [(EVENT, i.id, i.barcode, i.nfc_id, i.item_type, i.status, n,
          orjson.dumps(strip_personal(i.raw)).decode()) for n, i in enumerate(items, 1)])
    old.conn.commit()
    old.conn.close()

    c = TicketCache(path)
    assert "0006_lean_items" in [r[0] for r in c.conn.execute("SELECT name FROM migrations")]
    assert c.conn.execute("SELECT COUNT(*) FROM items WHERE lean IS NULL").fetchone()[0] == 13
    for item in items:
        if item.barcode:
            hits = [h for h in c.find_barcode(item.barcode) if h.event_id == EVENT]
            assert [repr(h.item) for h in hits] == [repr(item)]
    assert c.lean_misses == 13
    with c.transaction():
        c.put_items(EVENT, items[:1])
    c.find_barcode(items[0].barcode or "")
    assert c.lean_misses == 13  # rewritten: read from its lean form now
    c.close()


def test_a_new_build_ignores_lean_forms_of_the_old_one(cache: TicketCache,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """After an upgrade (another FORMAT) every row is parsed from its JSON until rewritten."""
    assert lean.FORMAT is not None
    monkeypatch.setattr(lean, "FORMAT", lean.FORMAT ^ 1)
    hit = cache.find_barcode(demo_data.CODES["valid"])
    assert [h.item.id for h in hit] == [1] and cache.lean_misses == 1
    with cache.transaction():
        cache.put_items(EVENT, demo_items()[:1])
    cache.find_barcode(demo_data.CODES["valid"])
    assert cache.lean_misses == 1


def test_the_format_follows_the_parsing_code(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """FORMAT is a hash of the parsing code: one byte more in model.py gives another; sources
    that cannot be read give None, and then no lean form is written or accepted."""
    from agent.core import model

    assert lean._format_tag() == lean.FORMAT
    edited = tmp_path / "model.py"
    shutil.copy(model.__file__, edited)
    with edited.open("a") as f:
        f.write("\n")
    monkeypatch.setattr(model, "__file__", str(edited))
    assert lean._format_tag() not in (None, lean.FORMAT)
    monkeypatch.setattr(model, "__file__", str(tmp_path / "gone.py"))
    assert lean._format_tag() is None

    blob = lean.pack(demo_items()[0])
    monkeypatch.setattr(lean, "FORMAT", None)
    assert lean.pack(demo_items()[0]) is None
    assert blob is not None and lean.unpack(blob) is None
    c = TicketCache(tmp_path / "cache.db")
    with c.transaction():
        c.put_items(EVENT, demo_items())
    assert c.conn.execute("SELECT COUNT(*) FROM items WHERE lean IS NOT NULL").fetchone()[0] == 0
    assert c.find_barcode(demo_data.CODES["valid"])[0].item.id == 1
    c.close()


def test_a_gate_decides_the_same_from_lean_forms_json_and_damaged_forms(gate: Gate,
                                                                        site: DemoSite) -> None:
    """Every demo code, on every lane: `check` gives the same decision whether the cache's
    items are read from their lean forms, from their JSON (NULL), or past garbage blobs."""
    cache = gate.cache
    lanes = [lane.name for lane in gate.config.lanes]

    def decisions() -> list[tuple[str, str, str | None, str]]:
        return [(code, d.status, d.detail, d.message)
                for code in [*demo_data.CODES.values(), demo_data.NFC_TAG]
                for name in lanes
                for d in [gate.check(code, gate.config.lane(name), site.now)]]

    from_lean = decisions()
    assert cache.lean_misses == 0
    for blob in (None, b"garbage"):
        with cache.transaction():
            cache.conn.execute("UPDATE items SET lean = ?", (blob,))
        assert decisions() == from_lean
    assert cache.lean_misses > 0
