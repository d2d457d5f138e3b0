"""Issue 18: the hot path's faster spellings give exactly what the old ones gave.

`parse_item` (inline fast paths for the usual JSON types), `utc_iso` (%-formatting instead of
`strftime`) and `parse_utc_iso` (`fromisoformat` checked by a round trip instead of
`strptime`) were rewritten for speed. Each is held here, over generated and hostile input, to a
verbatim copy of the version it replaced: same value, same types (compared by `repr`, so `1`
and `True` or `1` and `1.0` differ), same exception.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.codes import normalize_nfc_id, parse_utc_iso, utc_iso, zone_info
from agent.core.decide import _local
from agent.core.model import (
    Item,
    ZoneScan,
    _bound,
    _int,
    _list,
    _obj,
    _order_ref,
    _scan_zone,
    _status,
    _str,
    historic_barcodes,
    parse_item,
)


def reference_parse_item(data: Any) -> Item | None:
    """parse_item as it was before issue 18 (commit 4158b1b), verbatim."""
    d = _obj(data)
    item_id = _int(d.get("id"))
    if item_id is None:
        return None
    const, stable, variable, zone_data = (
        _obj(d.get("const")), _obj(d.get("stable")), _obj(d.get("variable")), d.get("zoneData")
    )
    zones_obj = _obj(zone_data)
    access: tuple[int, ...] | None = None
    if isinstance(zone_data, dict) and isinstance(zones_obj.get("accessToZones"), list):
        access = tuple(
            z for z in (_int(_obj(a).get("id")) for a in zones_obj["accessToZones"]) if z is not None
        )
    scans = tuple(
        ZoneScan(
            zone_id=_scan_zone(_obj(s).get("zoneId")),
            scan="out" if _obj(s).get("scan") == "out" else "in",
            scanned_on=_str(_obj(s).get("scannedOn")),
            uuid=_str(_obj(s).get("uuid")),
        )
        for s in _list(zones_obj.get("scans"))
        if isinstance(s, dict)
    )
    nfc_raw = _str(variable.get("nfcId"))
    return Item(
        id=item_id,
        item_type=_str(d.get("itemType")) or "ticket",
        parent_id=_int(d.get("parentOrderItemId")),
        barcode=_str(const.get("barcode")),
        historic_barcodes=historic_barcodes(d),
        type_name=_str(const.get("type")) or _str(const.get("typeDuringSale")),
        type_id=_int(const.get("typeId")),
        order_ref=_order_ref(const.get("transactionId")),
        customer_name=_str(stable.get("customerName")),
        date_of_birth=_str(stable.get("dateOfBirth")) or _str(d.get("dateOfBirth")),
        valid_from=_bound(stable.get("validFrom")),
        valid_to=_bound(stable.get("validTo")),
        status=_status(d.get("variable")),
        nfc_id=normalize_nfc_id(nfc_raw) if nfc_raw else None,
        scanned_on=_str(variable.get("scannedOn")),
        access_zones=access,
        scans=scans,
        raw=d,
    )


def reference_utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def reference_parse_utc_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def outcome(fn: Any, *args: Any) -> tuple[str, str]:
    """What a call gives: its result's repr (types included), or the exception's type."""
    try:
        return ("value", repr(fn(*args)))
    except Exception as exc:  # noqa: BLE001 - the exception type is what is compared
        return ("raises", type(exc).__name__)


# -- hostile item JSON -----------------------------------------------------------------------

TRICKY_TEXT = st.sampled_from([
    "", " ", "sold", "scanned", "refunded", "out", "in", "\ud800", "caf\u00e9", " 42 ", "-7",
    "\u00b2", "0x04A2", "04:a2:2b:1c", "9" * 40, "2026-07-01 12:00:00", "2026-07-01",
    "2026-07-01T10:00:00.000000Z", "garbage", "Entry",
])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([0, 1, -1, 2**63 - 1,
                                                                            2**63, -(2**63)]),
    st.floats(allow_nan=True), st.integers().map(str), st.text(max_size=12), TRICKY_TEXT,
)
ANY_JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)
ABSENT = object()


def fields(**spec: Any) -> st.SearchStrategy[Any]:
    """An object with each named key absent, or one of the given values (or any JSON); the
    given values three times as often, so nested fields are reached in a few hundred tries."""
    def build(values: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in values.items() if v is not ABSENT}
    return st.fixed_dictionaries({
        key: st.one_of(value, value, value, st.just(ABSENT), ANY_JSON)
        for key, value in spec.items()
    }).map(build)


IDS = st.one_of(st.integers(-5, 10**6), st.integers(-5, 99).map(str))
ZONE_SCAN = fields(zoneId=st.one_of(st.none(), IDS), scan=st.sampled_from(["in", "out"]),
                   scannedOn=TRICKY_TEXT, uuid=st.uuids().map(str))
HISTORIC = st.lists(st.one_of(TRICKY_TEXT, fields(barcode=TRICKY_TEXT)), max_size=3)
ITEM = fields(
    id=IDS, itemType=st.sampled_from(["ticket", "product", "seasonTicket"]),
    parentOrderItemId=IDS, dateOfBirth=TRICKY_TEXT, historicBarcodes=HISTORIC,
    const=fields(barcode=TRICKY_TEXT, type=TRICKY_TEXT, typeDuringSale=TRICKY_TEXT, typeId=IDS,
                 transactionId=st.one_of(TRICKY_TEXT, st.lists(TRICKY_TEXT, max_size=3)),
                 historicBarcodes=HISTORIC),
    stable=fields(customerName=TRICKY_TEXT, dateOfBirth=TRICKY_TEXT, validFrom=TRICKY_TEXT,
                  validTo=TRICKY_TEXT),
    variable=st.one_of(st.just([]), fields(nfcId=TRICKY_TEXT, scannedOn=TRICKY_TEXT,
                                           status=TRICKY_TEXT, historicBarcodes=HISTORIC)),
    zoneData=fields(accessToZones=st.lists(st.one_of(fields(id=IDS), ANY_JSON), max_size=3),
                    scans=st.lists(st.one_of(ZONE_SCAN, ANY_JSON), max_size=3)),
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(ITEM, ITEM, ITEM, ANY_JSON))
def test_parse_item_is_the_original_parse(data: Any) -> None:
    new, old = parse_item(data), reference_parse_item(data)
    assert repr(new) == repr(old)  # every field, with its type
    assert new == old
    if new is not None and old is not None:
        assert new.raw is old.raw


def test_parse_item_equivalence_covers_refusals_and_quirks() -> None:
    """The generated cases include these; pinned so a weaker strategy cannot lose them."""
    cases = [
        {"id": True}, {"id": "12"}, {"id": 2**63}, {"id": 1, "variable": []},
        {"id": 1, "variable": {"status": 5}}, {"id": 1, "variable": "x"},
        {"id": 1, "const": {"barcode": "\ud800", "typeId": "7"}},
        {"id": 1, "stable": {"validFrom": 3, "validTo": ""}},
        {"id": 1, "zoneData": {"accessToZones": [{"id": "9"}, 4, {"id": True}],
                               "scans": [{"zoneId": "x", "scan": "out"}, 3]}},
        {"id": 1, "variable": {"nfcId": "04:a2", "historicBarcodes": [{"barcode": 5}, "A"]}},
    ]
    for data in cases:
        assert repr(parse_item(data)) == repr(reference_parse_item(data))


# -- times -------------------------------------------------------------------------------------

OFFSETS = st.one_of(
    st.just(UTC), st.none(),
    st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m))))


@settings(max_examples=400, deadline=None)
@given(st.datetimes(), OFFSETS)
def test_utc_iso_is_strftime(moment: datetime, tz: timezone | None) -> None:
    moment = moment.replace(tzinfo=tz)  # naive: local time, as before
    assert outcome(utc_iso, moment) == outcome(reference_utc_iso, moment)


def test_utc_iso_early_years_keep_their_old_spelling() -> None:
    for year in (1, 999, 1000, 9999):
        moment = datetime(year, 3, 4, 5, 6, 7, 89, tzinfo=UTC)
        assert utc_iso(moment) == reference_utc_iso(moment)


def _garbled(text: str, where: int, char: str) -> str:
    where %= len(text) + 1
    return text[:where] + char + text[where + 1:]


@settings(max_examples=400, deadline=None)
@given(st.datetimes(min_value=datetime(1000, 1, 1)), st.integers(0, 40),
       st.sampled_from(["", "Z", "+", " ", "T", ":", "0", "9", "-", ".", "1", "W", "z"]))
def test_parse_utc_iso_is_strptime(moment: datetime, where: int, char: str) -> None:
    text = utc_iso(moment.replace(tzinfo=UTC))
    assert outcome(parse_utc_iso, text) == outcome(reference_parse_utc_iso, text)
    garbled = _garbled(text, where, char)
    assert outcome(parse_utc_iso, garbled) == outcome(reference_parse_utc_iso, garbled)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=30), st.sampled_from([
    "2026-07-01T10:00:00Z", "2026-07-01T10:00:00.000000+00:00", "2026-07-01 10:00:00.000000Z",
    "2026-07-01T10:00:00.000000", "20260701T100000.000000Z", "2026-07-01T10:00:00.0000001Z",
    "0999-07-01T10:00:00.000000Z", "999-07-01T10:00:00.000000Z"])))
def test_parse_utc_iso_refuses_what_strptime_refuses(text: str) -> None:
    assert outcome(parse_utc_iso, text) == outcome(reference_parse_utc_iso, text)


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 30)), OFFSETS,
       st.sampled_from(["UTC", "Europe/Amsterdam", "America/New_York", "Asia/Kolkata"]))
def test_message_times_are_strftime(moment: datetime, tz: timezone | None, zone: str) -> None:
    """`decide`'s messages ("Already inside since ...") show times as they always did."""
    moment = moment.replace(tzinfo=tz or UTC)
    where = zone_info(zone)
    old = moment.astimezone(where).strftime("%Y-%m-%d %H:%M")
    assert _local(moment, where) == old
    assert _local(None, where) == "?"
