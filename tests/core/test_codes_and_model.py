"""Spelling of codes, NFC ids and times, and the platform's documented payload quirks."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.codes import (
    MAX_CODE_LEN,
    clean_code,
    looks_like_nfc,
    normalize_nfc_id,
    parse_platform_time,
)
from agent.core.model import parse_activated_events, parse_item, parse_zones, strip_personal


@pytest.mark.parametrize("raw", ["0x04a22b9c", "04:A2:2B:9C", "04a22b9c", "0X04A22B9C",
                                 " 04-a2-2b-9c ", "4a22b9c"])
def test_nfc_ids_normalise_to_the_platform_form(raw: str) -> None:
    assert normalize_nfc_id(raw) == "0x04A22B9C"


@pytest.mark.parametrize("raw", ["", "0x", "hello", "04:zz", "0x" + "A" * 65])
def test_non_hex_is_not_an_nfc_id(raw: str) -> None:
    assert normalize_nfc_id(raw) is None


def test_only_explicit_nfc_spellings_count_as_nfc() -> None:
    assert looks_like_nfc("0x04A2") and looks_like_nfc("04:a2:2b")
    assert not looks_like_nfc("A1B2C3") and not looks_like_nfc("NU-VALID")


def test_clean_code_strips_control_bytes() -> None:
    assert clean_code("\x00AB\x1b[2~C\r\n") == "AB[2~C"
    assert len(clean_code("x" * 10_000)) == 256


@given(st.text())
def test_clean_code_never_keeps_control_characters(raw: str) -> None:
    assert all(ord(ch) >= 32 and ch != "\x7f" for ch in clean_code(raw))


def test_platform_times_in_both_documented_formats() -> None:
    ams = ZoneInfo("Europe/Amsterdam")
    assert parse_platform_time("2026-07-01 20:00:00", ams) == datetime(2026, 7, 1, 18, tzinfo=UTC)
    assert parse_platform_time("2021-11-22T11:59:00.000000Z", ams) == datetime(
        2021, 11, 22, 11, 59, tzinfo=UTC)
    assert parse_platform_time("2026-07-01T20:00:00+02:00") == datetime(2026, 7, 1, 18, tzinfo=UTC)
    assert parse_platform_time(None) is None
    assert parse_platform_time("soon") is None
    assert parse_platform_time(12) is None


def test_item_quirks_variable_array_and_transaction_array() -> None:
    item = parse_item({
        "id": 7, "itemType": "season_ticket",
        "const": {"barcode": "B7", "transactionId": ["R1", "R2"], "typeId": "3",
                  "historicBarcodes": ["OLD7"]},
        "stable": {"validFrom": None}, "variable": [], "unknownField": {"x": 1},
        "zoneData": {"accessToZones": [{"id": 1}, {"id": "bad"}],
                     "scans": [{"zoneId": 1, "scan": "in", "scannedOn": "2026-01-01 10:00:00",
                                "uuid": "u1"}, "junk"]},
    })
    assert item is not None
    assert item.status == "sold" and item.nfc_id is None
    assert item.order_ref == "R1, R2" and item.type_id == 3
    assert item.historic_barcodes == ("OLD7",)
    assert item.access_zones == (1,)
    assert [s.uuid for s in item.scans] == ["u1"]


def test_item_with_variable_object_and_nfc() -> None:
    item = parse_item({"id": 1, "const": {"barcode": "X"},
                       "variable": {"status": "scanned", "nfcId": "04:ab", "scannedOn": "x"}})
    assert item and item.status == "scanned" and item.nfc_id == "0x04AB"
    assert item.access_zones is None  # no zoneData: no zone restriction known


@pytest.mark.parametrize("payload", [None, 3, "x", [], {"id": None}, {"id": True}])
def test_items_without_an_id_are_skipped(payload: object) -> None:
    assert parse_item(payload) is None


def test_activated_events_bare_or_wrapped() -> None:
    event = {"id": 5, "name": "E", "gates": [{"id": 1, "name": "G"}, {"name": "no id"}]}
    assert parse_activated_events([event])[0].gates[0].id == 1
    wrapped = {"companyId": 1, "companyName": "C", "events": [event]}
    assert parse_activated_events(wrapped)[0].id == 5
    assert parse_activated_events({"unexpected": True}) == []


def test_zones_and_default_entry() -> None:
    zones = parse_zones([{"id": 1, "name": "Entry", "scan": "in"},
                         {"id": 2, "name": "VIP", "scan": "in&out", "capacity": 10}], 9)
    assert zones[0].is_default_entry and not zones[0].tracks_exits
    assert zones[1].capacity == 10 and zones[1].tracks_exits


def test_personal_data_is_stripped_from_what_is_stored() -> None:
    raw = {"id": 1, "stable": {"customerName": "A", "customerEmail": "a@x", "passport": "P",
                               "nationalId": "N"}}
    assert strip_personal(raw)["stable"] == {"customerName": "A"}
    assert raw["stable"]["passport"] == "P"  # the original is untouched


_KEYS = st.sampled_from(["id", "stable", "const", "customerName", "customerEmail", "passport",
                         "nationalId", "validFrom", "x"])
_VALUES = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=3),
                   st.lists(st.booleans()))
_PAYLOADS = st.dictionaries(_KEYS, st.one_of(
    _VALUES, st.dictionaries(_KEYS, _VALUES, max_size=8)), max_size=6)


def _strip_personal_as_first_written(raw: dict) -> dict:  # type: ignore[type-arg]
    """The first spelling (one dict comprehension), which the faster one must match."""
    from agent.core.model import _PERSONAL

    stable = raw.get("stable")
    if not isinstance(stable, dict) or _PERSONAL.isdisjoint(stable):
        return raw
    return {**raw, "stable": {k: v for k, v in stable.items() if k not in _PERSONAL}}


@settings(max_examples=300)
@given(raw=_PAYLOADS)
def test_stripping_keeps_every_other_key_in_its_place(raw: dict) -> None:  # type: ignore[type-arg]
    """The stored JSON is byte for byte what the first spelling gave (key order included),
    and the platform's payload is never changed."""
    before = orjson.dumps(raw)
    stripped = strip_personal(raw)
    assert orjson.dumps(stripped) == orjson.dumps(_strip_personal_as_first_written(raw))
    assert list(stripped) == list(raw)
    assert orjson.dumps(raw) == before


def test_numbers_in_text_are_ascii_digits_only() -> None:
    """`str.isdigit()` accepts "²" and other digits int() refuses: such a field is absent."""
    from agent.core.model import parse_entry_page
    assert parse_entry_page({"content": [], "total": "²"}).total is None
    assert parse_entry_page({"content": [], "total": "٣"}).total is None
    assert parse_entry_page({"content": [], "total": " 42 "}).total == 42


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_clean_code_fast_path_drops_exactly_the_control_characters(raw: str) -> None:
    """`clean_code` skips its per-character filter for printable text (issue 18): the result
    must be what the filter gives for any text, printable or not."""
    slow = "".join(ch for ch in raw if not unicodedata.category(ch).startswith("C"))
    assert clean_code(raw) == slow.strip()[:MAX_CODE_LEN]
