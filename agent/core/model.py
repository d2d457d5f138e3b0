"""Typed, tolerant views of what the platform sends: events, zones and entry items.

The platform adds fields within /v1 and its docs show several shapes for the same thing, so
every parser here ignores unknown fields, accepts the documented quirks and never raises on a
wrong type inside an object (a bad field becomes "absent"). Only a payload that is not an object
at all is rejected, by the callers, with BadResponse or ImportFileError.

Documented quirks handled here, once:
- `variable` is `[]` for never-scanned items, an object otherwise;
- `const.transactionId` is a string, or an array in an old example;
- `historicBarcodes` (replaced barcodes) is in the changelog, not the schema: looked for in
  `const`, `variable` and at the top level;
- `/activated-events` is a bare array or `{companyId, companyName, events: [...]}`;
- `/zones/all` is a bare array (also accepted wrapped in `data`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from agent.core.codes import normalize_nfc_id

PERSONAL_FIELDS = ("customerEmail", "nationalId", "passport")
_PERSONAL = frozenset(PERSONAL_FIELDS)
# SQLite stores signed 64-bit integers; a larger id would raise OverflowError on insert.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


class NonFiniteText(str):
    """Text made of a NaN or an Infinity the payload held (`"nan"`, `"<float>"`, a status or an
    order reference holding one). JSON has no such numbers: the cache's encoder writes them as
    null, which parses into something else, so an Item holding one must not give the cache its
    lean form (agent.store.lean finds this type while packing, at no cost to every other item).
    Everywhere else it is the text it holds."""

    __slots__ = ()


class NonFiniteZone(int):
    """UNREADABLE_ZONE made of a NaN or an Infinity zone id (why: NonFiniteText)."""

    __slots__ = ()


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _holds_non_finite(value: Any) -> bool:
    """A NaN or an Infinity anywhere in a decoded JSON value (only for values shown as text
    in a marker: the rare, slow path)."""
    if isinstance(value, dict):
        return any(_holds_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_non_finite(v) for v in value)
    return _non_finite(value)


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


_DECIMAL = re.compile(r"-?[0-9]{1,38}")


def _int(value: Any) -> int | None:
    """A whole number within SQLite's range (ids go into indexed columns), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        value = int(value)  # ASCII digits only: str.isdigit() also accepts "²", int() does not
    if isinstance(value, int) and _INT_MIN <= value <= _INT_MAX:
        return value
    return None


def _str(value: Any) -> str | None:
    """Text as sent; JSON may carry lone surrogates (`"\\ud800"`), which SQLite cannot store:
    they become U+FFFD, so such a field can never match a scanned code."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return NonFiniteText(value) if _non_finite(value) else str(value)
    return None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _bound(value: Any) -> str | None:
    """A time bound (validity, zone opening): absent/null is "no bound"; a value of the wrong
    type is kept as an unreadable marker so the engine refuses it instead of reading it as
    "no bound"."""
    if value is None:
        return None
    if isinstance(value, str):
        return _str(value)
    marker = f"<{type(value).__name__}>"
    return NonFiniteText(marker) if _non_finite(value) else marker


@dataclass(frozen=True)
class Gate:
    id: int
    name: str


@dataclass(frozen=True)
class Timeslot:
    id: int
    name: str
    start: str | None
    end: str | None
    ticket_type_ids: tuple[int, ...]


@dataclass(frozen=True)
class Event:
    id: int
    name: str
    timezone: str | None
    start: str | None
    end: str | None
    scanning_mode: str | None
    gates: tuple[Gate, ...] = ()
    timeslots: tuple[Timeslot, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Zone:
    id: int
    event_id: int
    name: str
    scan: str | None  # in | in&out | auto
    capacity: int | None
    opening: str | None
    closing: str | None
    min_age: int | None
    max_age: int | None
    attendance: int | None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_default_entry(self) -> bool:
        """Every event has a default zone named "Entry"; uploads send zoneId null for it."""
        return self.name.strip().lower() == "entry"

    @property
    def tracks_exits(self) -> bool:
        """In-only zones never see an exit, so "inside" means nothing there."""
        return self.scan != "in"


UNREADABLE_ZONE = -1  # a platform scan whose zoneId cannot be read: it counts in every zone


def _scan_zone(value: Any) -> int | None:
    """A scan's zone: null is the default Entry zone (as uploads mean it); an id that cannot
    be read is UNREADABLE_ZONE — the scan happened somewhere, so no zone may ignore it."""
    if value is None:
        return None
    zone_id = _int(value)
    if zone_id is not None and zone_id > 0:
        return zone_id
    return NonFiniteZone(UNREADABLE_ZONE) if _non_finite(value) else UNREADABLE_ZONE


@dataclass(frozen=True)
class ZoneScan:
    zone_id: int | None
    scan: str  # in | out
    scanned_on: str | None
    uuid: str | None


@dataclass(slots=True)
class Item:
    """One entry item (ticket, season ticket, add-on or product) as `GET /entry/tickets` sends it.

    Not frozen, though nothing changes an item once parsed: every lookup hit builds one, and a
    frozen dataclass sets each of its 18 fields through `object.__setattr__` (issue 18)."""

    id: int
    item_type: str
    parent_id: int | None
    barcode: str | None
    historic_barcodes: tuple[str, ...]
    type_name: str | None
    type_id: int | None
    order_ref: str | None
    customer_name: str | None
    date_of_birth: str | None
    valid_from: str | None
    valid_to: str | None
    status: str  # sold | scanned | refunded | locked; unknown values kept as sent (see _status)
    nfc_id: str | None
    scanned_on: str | None
    access_zones: tuple[int, ...] | None  # None = no zone data sent
    scans: tuple[ZoneScan, ...]
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def parse_event(data: Any) -> Event | None:
    d = _obj(data)
    event_id = _int(d.get("id"))
    if event_id is None:
        return None
    gates = tuple(
        Gate(gid, _str(_obj(g).get("name")) or f"gate {gid}")
        for g in _list(d.get("gates"))
        if (gid := _int(_obj(g).get("id"))) is not None
    )
    slots = tuple(
        Timeslot(
            sid,
            _str(_obj(s).get("name")) or "",
            _str(_obj(s).get("start")),
            _str(_obj(s).get("end")),
            tuple(t for t in (_int(x) for x in _list(_obj(s).get("ticketTypeIds"))) if t is not None),
        )
        for s in _list(d.get("timeslots"))
        if (sid := _int(_obj(s).get("id"))) is not None
    )
    return Event(
        id=event_id,
        name=_str(d.get("name")) or f"event {event_id}",
        timezone=_str(d.get("timezone")),
        start=_str(d.get("start")),
        end=_str(d.get("end")),
        scanning_mode=_str(d.get("scanningMode")),
        gates=gates,
        timeslots=slots,
        raw=d,
    )


def parse_activated_events(payload: Any) -> list[Event]:
    """`GET /activated-events`: a bare array (the example) or wrapped in `events` (the schema)."""
    rows = payload if isinstance(payload, list) else _list(_obj(payload).get("events"))
    return [e for e in (parse_event(r) for r in rows) if e is not None]


def parse_zone(data: Any, event_id: int) -> Zone | None:
    d = _obj(data)
    zone_id = _int(d.get("id"))
    if zone_id is None:
        return None
    return Zone(
        id=zone_id,
        event_id=event_id,
        name=_str(d.get("name")) or f"zone {zone_id}",
        scan=_str(d.get("scan")),
        capacity=_int(d.get("capacity")),
        opening=_bound(d.get("openingDate")),
        closing=_bound(d.get("closingDate")),
        min_age=_int(d.get("minAge")),
        max_age=_int(d.get("maxAge")),
        attendance=_int(d.get("attendance")),
        raw=d,
    )


def parse_zones(payload: Any, event_id: int) -> list[Zone]:
    rows = payload if isinstance(payload, list) else _list(_obj(payload).get("data"))
    return [z for z in (parse_zone(r, event_id) for r in rows) if z is not None]


def _order_ref(value: Any) -> str | None:
    if isinstance(value, list):
        parts = [p for p in (_str(v) for v in value) if p]
        joined = ", ".join(parts)
        if any(type(p) is NonFiniteText for p in parts):
            return NonFiniteText(joined)
        return joined or None
    return _str(value)


def historic_barcodes(d: dict[str, Any]) -> tuple[str, ...]:
    """Replaced barcodes of an item payload, wherever the platform puts them (undocumented)."""
    found: list[str] = []
    for holder in (d, _obj(d.get("const")), _obj(d.get("variable"))):
        for code in _list(holder.get("historicBarcodes")):
            text = _str(code) if not isinstance(code, dict) else _str(code.get("barcode"))
            if text and text not in found:
                found.append(text)
    return tuple(found)


ADMISSIBLE_STATUSES = ("sold", "scanned")  # the spec's enum minus refunded/locked


def _status(variable: Any) -> str:
    """The item's status as sent. Absent (no `variable`, the `[]` quirk, no or a null `status`)
    reads as "sold", the platform omitting it for never-scanned items; anything that is not
    text (or a `variable` that is neither object nor list) is kept as a marker the engine
    refuses as an unknown status, never guessed into an admissible one."""
    if variable is None or variable == []:
        return "sold"
    if not isinstance(variable, dict):
        marker = f"<variable: {type(variable).__name__}>"
        return NonFiniteText(marker) if _holds_non_finite(variable) else marker
    raw = variable.get("status")
    if raw is None:
        return "sold"
    if isinstance(raw, str):
        return _str(raw) or raw
    marker = f"<{type(raw).__name__}: {str(raw)[:40]}>"
    return NonFiniteText(marker) if _holds_non_finite(raw) else marker


def item_platform_scans(item: Item) -> tuple[ZoneScan, ...]:
    """The scans the platform reports for an item: `zoneData.scans`, else the `variable` scan
    of a `scanned` item (the default Entry zone), which counts even without a `scannedOn`."""
    if item.scans:
        return item.scans
    if item.status == "scanned":
        return (ZoneScan(None, "in", item.scanned_on, None),)
    return ()


def parse_item(data: Any) -> Item | None:
    """Parse one `content[]` element; None when it has no usable id.

    Every lookup parses its hits, so this is written for speed: the exact JSON types take an
    inline fast path (a plain `int` id in range, ASCII text, a missing field) and anything
    else goes through the general helpers above, so the Item is the one those helpers alone
    build (tests/core/test_lean_paths.py holds it to the original over hostile payloads)."""
    d = data if type(data) is dict else _obj(data)
    value = d.get("id")
    item_id = value if type(value) is int and _INT_MIN <= value <= _INT_MAX else _int(value)
    if item_id is None:
        return None
    const, stable, variable_raw = d.get("const"), d.get("stable"), d.get("variable")
    const = const if type(const) is dict else _obj(const)
    stable = stable if type(stable) is dict else _obj(stable)
    variable = variable_raw if type(variable_raw) is dict else _obj(variable_raw)
    access: tuple[int, ...] | None = None
    scans: tuple[ZoneScan, ...] = ()
    zone_data = d.get("zoneData")
    if isinstance(zone_data, dict):
        listed = zone_data.get("accessToZones")
        if isinstance(listed, list):
            access = _zone_ids(listed)
        listed = zone_data.get("scans")
        if listed and isinstance(listed, list):
            scans = tuple(_zone_scan(s) for s in listed if isinstance(s, dict))
    value = const.get("barcode")
    barcode = value if type(value) is str and value.isascii() else _str(value)
    value = stable.get("customerName")
    customer = value if type(value) is str and value.isascii() else _str(value)
    value = const.get("typeId")
    type_id = value if type(value) is int and _INT_MIN <= value <= _INT_MAX else _int(value)
    value = variable.get("nfcId")
    nfc_raw = None if value is None else _str(value)
    value = stable.get("validFrom")
    valid_from = None if value is None else _bound(value)
    value = stable.get("validTo")
    valid_to = None if value is None else _bound(value)
    value = d.get("itemType")
    item_type = (value if type(value) is str and value.isascii() else _str(value)) or "ticket"
    value = const.get("type")
    type_name = (value if type(value) is str and value.isascii() else _str(value)) or \
        _str(const.get("typeDuringSale"))
    value = const.get("transactionId")
    order_ref = value if type(value) is str and value.isascii() else _order_ref(value)
    value, other = stable.get("dateOfBirth"), d.get("dateOfBirth")
    birth = (None if value is None else _str(value)) or (None if other is None else _str(other))
    value = variable.get("scannedOn")
    scanned_on = None if value is None else _str(value)
    value = d.get("parentOrderItemId")
    # Positional, in field order: a class called with keywords packs them into a dict and
    # unpacks it again for __init__, which costs more than the 19 fields themselves.
    return Item(
        item_id,  # id
        item_type,
        None if value is None else _int(value),  # parent_id
        barcode,
        historic_barcodes(d) if "historicBarcodes" in d or "historicBarcodes" in const
        or "historicBarcodes" in variable else (),
        type_name,
        type_id,
        order_ref,
        customer,  # customer_name
        birth,  # date_of_birth
        valid_from,
        valid_to,
        "sold" if variable_raw is None or variable_raw == [] else _status(variable_raw),
        normalize_nfc_id(nfc_raw) if nfc_raw else None,  # nfc_id
        scanned_on,
        access,  # access_zones
        scans,
        d,  # raw
    )


def _zone_ids(listed: list[Any]) -> tuple[int, ...]:
    """`accessToZones` ids that can be read (an entry without one is skipped)."""
    ids = []
    for entry in listed:
        value = entry.get("id") if isinstance(entry, dict) else None
        zone_id = value if type(value) is int and _INT_MIN <= value <= _INT_MAX else _int(value)
        if zone_id is not None:
            ids.append(zone_id)
    return tuple(ids)


def _zone_scan(s: dict[str, Any]) -> ZoneScan:
    return ZoneScan(zone_id=_scan_zone(s.get("zoneId")),
                    scan="out" if s.get("scan") == "out" else "in",
                    scanned_on=_str(s.get("scannedOn")), uuid=_str(s.get("uuid")))


def strip_personal(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of an item payload without the personal data a gate does not need to decide.

    Runs once per item on every sync page, hence the set test before any copying, and copies
    that delete the few personal keys (a third faster than rebuilding `stable` key by key; the
    keys keep their order, so the stored JSON is byte for byte the same)."""
    stable = raw.get("stable")
    if not isinstance(stable, dict) or _PERSONAL.isdisjoint(stable):
        return raw
    kept = stable.copy()
    for key in PERSONAL_FIELDS:
        if key in kept:
            del kept[key]
    stripped = raw.copy()
    stripped["stable"] = kept
    return stripped


@dataclass(frozen=True)
class EntryPage:
    """One page of `GET /entry/tickets`: parsed items plus what is needed to go on.

    `content` keeps the raw rows (same order as `items`, rows without an id dropped from
    `items` only) so the cache can store what the platform sent. `next_url` is the full URL of
    the next page, None on the last one; `list_end_time` is the `startTime` of the next delta.
    """

    items: list[Item]
    content: list[dict[str, Any]]
    list_end_time: str | None
    total: int | None
    next_url: str | None


def parse_entry_page(payload: dict[str, Any]) -> EntryPage:
    """Parse a `GET /entry/tickets` body (the caller has checked it is an object)."""
    content = [row for row in _list(payload.get("content")) if isinstance(row, dict)]
    pagination = _obj(payload.get("pagination"))
    next_url = _str(pagination.get("next"))
    return EntryPage(
        items=[i for i in (parse_item(r) for r in content) if i is not None],
        content=content,
        list_end_time=_str(payload.get("listEndTime")),
        total=_int(payload.get("total")),
        next_url=next_url or None,
    )
