"""Issue 11, the property: garbage never turns into an admit.

Hypothesis generates platform items as JSON (statuses known, unknown and of the wrong type;
`variable` as object, `[]` or garbage; zone data present, absent or quirky; platform scans with
good, missing and garbage times; validity bounds as date-times, bare dates, garbage and wrong
types), lanes (direction, limits, filters, pinned zone or not) and this device's own scans. Each
goes through the real parser, scan-state fold and engine. `strict_reading` below restates, from
the published spec alone, when an entry may be admitted; the engine may refuse more (it has
rules this oracle does not model, e.g. age and capacity are left out of the generated zones),
never less. A second property garbles one field of an item and checks a refusal stays one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import LaneConfig
from agent.core.codes import utc_iso
from agent.core.decide import Candidate, Facts, decide
from agent.core.model import item_platform_scans, parse_event, parse_item, parse_zone
from agent.core.scanstate import OwnScan, derive_state

NOW = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
EVENT, OTHER_EVENT = 7, 8
ABSENT = object()  # a key left out of the JSON


@dataclass(frozen=True)
class Time:
    """A generated time field: what was sent, and what it means (None: unreadable)."""

    sent: Any
    kind: str  # absent | null | blank | moment | date | garbage


def moments() -> st.SearchStrategy[Time]:
    offsets = st.integers(-72 * 60, 72 * 60).map(lambda m: NOW + timedelta(minutes=m))
    return st.one_of(
        offsets.map(lambda t: Time(t.strftime("%Y-%m-%dT%H:%M:%S.000000Z"), "moment")),
        offsets.map(lambda t: Time(t.strftime("%Y-%m-%d %H:%M:%S+00:00"), "moment")),
    )


def dates() -> st.SearchStrategy[Time]:
    return st.integers(-3, 3).map(lambda d: Time((NOW.date() + timedelta(days=d)).isoformat(),
                                                 "date"))


def garbage_times() -> st.SearchStrategy[Time]:
    words = st.sampled_from(["tomorrow", "2026-02-30", "2026-13-01 10:00:00", "99:99",
                             "01/07/2026", "2026-07-01 25:00:00", "NaN"])
    letters = st.text(alphabet="abcxyz :-/TZ", min_size=1, max_size=12).filter(str.strip)
    other = st.sampled_from([20260701, 1.5, True, {"date": "2026-07-01"}, ["2026-07-01"]])
    return st.one_of(words, letters, other).map(lambda v: Time(v, "garbage"))


def times() -> st.SearchStrategy[Time]:
    """Weighted towards readable values, so that most examples reach the deeper rules."""
    return st.sampled_from(["absent", "absent", "null", "blank", "moment", "moment", "date",
                            "garbage"]).flatmap(lambda kind: {
        "absent": st.just(Time(ABSENT, "absent")), "null": st.just(Time(None, "null")),
        "blank": st.just(Time("", "blank")), "moment": moments(), "date": dates(),
        "garbage": garbage_times()}[kind])


STATUSES = st.sampled_from(["sold"] * 4 + ["scanned"] * 4 + [ABSENT, None] * 2 + [
    "refunded", "locked", "cancelled", "void", "transferred", "REFUNDED", "Sold", "", " sold",
    0, {}, ["sold"]])
# 70 floor, 71 Entry, 80 other event's; then ids that cannot be read
ZONE_IDS = st.sampled_from([70, 70, 71, 71, 80, None, "70", "floor", {"id": 70}, -3])


@st.composite
def scans(draw: Any) -> dict[str, Any]:
    scan: dict[str, Any] = {"zoneId": draw(ZONE_IDS),
                            "scan": draw(st.sampled_from(["in", "out", "IN", None, "sideways"]))}
    when = draw(times())
    if when.sent is not ABSENT:
        scan["scannedOn"] = when.sent
    if draw(st.booleans()):
        scan["uuid"] = draw(st.uuids()).hex
    return scan


@st.composite
def items(draw: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"id": 1, "const": {"barcode": "T1",
                                              "typeId": draw(st.sampled_from([1, 2, None]))}}
    shape = draw(st.sampled_from(["object", "object", "object", "[]", "absent", "garbage"]))
    if shape == "object":
        variable: dict[str, Any] = {}
        status = draw(STATUSES)
        if status is not ABSENT:
            variable["status"] = status
        when = draw(times())
        if when.sent is not ABSENT:
            variable["scannedOn"] = when.sent
        raw["variable"] = variable
    elif shape == "[]":
        raw["variable"] = []
    elif shape == "garbage":
        raw["variable"] = draw(st.sampled_from(["scanned", 1, True]))
    stable: dict[str, Any] = {}
    for key in ("validFrom", "validTo"):
        when = draw(times())
        if when.sent is not ABSENT:
            stable[key] = when.sent
    raw["stable"] = stable
    zone_data = draw(st.sampled_from(["object"] * 4 + ["[]", "absent", "null", "garbage"]))
    if zone_data == "object":
        access = draw(st.sampled_from(["list", "list", "empty", "absent", "null", "garbage"]))
        zd: dict[str, Any] = {"scans": draw(st.lists(scans(), max_size=3))}
        if access == "list":
            zd["accessToZones"] = [{"id": z} for z in draw(st.lists(
                st.sampled_from([70, 70, 71, 71, 80, "70", None]), max_size=3))]
        elif access == "empty":
            zd["accessToZones"] = []
        elif access == "null":
            zd["accessToZones"] = None
        elif access == "garbage":
            zd["accessToZones"] = "70"
        raw["zoneData"] = zd
    elif zone_data == "[]":
        raw["zoneData"] = []
    elif zone_data == "null":
        raw["zoneData"] = None
    elif zone_data == "garbage":
        raw["zoneData"] = "zones"
    return raw


ZONES = {
    "floor": parse_zone({"id": 70, "name": "Floor", "scan": "in&out"}, EVENT),
    "entry": parse_zone({"id": 71, "name": "Entry", "scan": "in&out"}, EVENT),
    "entry-in-only": parse_zone({"id": 71, "name": "Entry", "scan": "in"}, EVENT),
    "other": parse_zone({"id": 80, "name": "Other floor", "scan": "in&out"}, OTHER_EVENT),
}


@st.composite
def setups(draw: Any) -> tuple[Any, ...]:
    raw = draw(items())
    zone_key = draw(st.sampled_from(["floor", "floor", "entry", "entry", "entry-in-only",
                                     "other", None]))
    zone = ZONES[zone_key] if zone_key else None
    pinned = zone is not None and not zone.is_default_entry
    lane = LaneConfig(
        name="l", direction=draw(st.sampled_from(["in", "in", "out", "auto"])),
        max_entries=draw(st.sampled_from([1, 1, 2, 0])), debounce_ms=0,
        zone_id=zone.id if pinned else None,
        ticket_types=draw(st.sampled_from([(), (1,)])),
        event_ids=draw(st.sampled_from([(), (EVENT,)])))
    item_event = draw(st.sampled_from([EVENT, EVENT, EVENT, OTHER_EVENT]))
    tz = draw(st.sampled_from(["UTC", "Europe/Amsterdam", "America/New_York"]))
    own = tuple(OwnScan(f"own{i}", zone.id if zone else None, direction,
                        utc_iso(NOW - timedelta(minutes=ago)))
                for i, (direction, ago) in enumerate(draw(st.lists(st.tuples(
                    st.sampled_from(["in", "out"]), st.integers(1, 600)), max_size=3))))
    return raw, zone, lane, item_event, tz, own


def run(raw: dict[str, Any], zone: Any, lane: LaneConfig, item_event: int, tz: str,
        own: tuple[OwnScan, ...], direction: str | None = None) -> Any:
    item = parse_item(raw)
    assert item is not None
    event = parse_event({"id": item_event, "timezone": tz})
    zone_id = zone.id if zone is not None else None
    is_default = zone.is_default_entry if zone is not None else True
    state = derive_state(own, item_platform_scans(item), zone_id, is_default)
    facts = Facts("T1", "barcode", (Candidate(item_event, item, event, zone, zone_id, state),))
    return decide(facts, lane, NOW, direction)


# -- the strict reading ------------------------------------------------------------------------

def _bound(stable: dict[str, Any], key: str, tz: str, end: bool) -> datetime | None | bool:
    """The bound's instant, None for no bound, False when it cannot be read strictly."""
    value = stable.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        return False
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%d %H:%M:%S%z"):
        try:
            return datetime.strptime(value.replace("Z", "+0000"), fmt)
        except ValueError:
            pass
    try:
        day = date.fromisoformat(value) if len(value) == 10 else None
    except ValueError:
        day = None
    if day is None:
        return False
    if end:
        day += timedelta(days=1)
    start = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(tz))
    return start - timedelta(microseconds=1) if end else start


def _status_ok(raw: dict[str, Any]) -> bool:
    variable = raw.get("variable", ABSENT)
    if variable is ABSENT or variable is None or variable == []:
        return True
    if not isinstance(variable, dict):
        return False
    return variable.get("status") in (None, "sold", "scanned")


def _scan_zone(value: Any) -> int | str | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return value if isinstance(value, int) and value > 0 else "unreadable"


def _platform_scans(raw: dict[str, Any], zone_id: int | None, default: bool) -> list[str]:
    """Directions of every scan the platform reports in this zone, dated or not."""
    zd = raw.get("zoneData")
    listed = zd.get("scans") if isinstance(zd, dict) else None
    if listed:
        return ["out" if s.get("scan") == "out" else "in" for s in listed
                if _scan_zone(s.get("zoneId")) in (zone_id, "unreadable")
                or (default and (s.get("zoneId") is None or zone_id is None))]
    variable = raw.get("variable")
    if isinstance(variable, dict) and variable.get("status") == "scanned" and default:
        return ["in"]
    return []


def strict_reading(raw: dict[str, Any], zone: Any, lane: LaneConfig, item_event: int, tz: str,
                   own: tuple[OwnScan, ...]) -> tuple[bool, int]:
    """(may this entry be admitted, scans in this zone known of). Spec-only, no agent code."""
    zone_id = zone.id if zone is not None else None
    default = zone.is_default_entry if zone is not None else True
    known = _platform_scans(raw, zone_id, default) + [s.direction for s in own]
    entries = known.count("in")
    if not _status_ok(raw):
        return False, entries
    if zone is not None and zone.event_id != item_event:
        return False, entries
    if lane.event_ids and item_event not in lane.event_ids:
        return False, entries
    if lane.ticket_types and raw["const"]["typeId"] not in lane.ticket_types:
        return False, entries
    zd = raw.get("zoneData")
    if zone_id is not None and isinstance(zd, dict) and isinstance(zd.get("accessToZones"), list):
        ids = [a.get("id") for a in zd["accessToZones"] if isinstance(a, dict)]
        ids = [int(i) for i in ids if isinstance(i, int) or (isinstance(i, str) and i.isdigit())]
        if zone_id not in ids and not (default and not ids):
            return False, entries
    stable = raw.get("stable") or {}
    start, end = _bound(stable, "validFrom", tz, False), _bound(stable, "validTo", tz, True)
    if start is False or end is False:
        return False, entries
    if (start is not None and NOW < start) or (end is not None and NOW > end):
        return False, entries
    if lane.max_entries and entries >= lane.max_entries:
        return False, entries
    return True, entries


# -- the properties ------------------------------------------------------------------------------

@settings(max_examples=700, deadline=None)
@given(setups())
def test_garbage_never_turns_into_an_admit(setup: tuple[Any, ...]) -> None:
    raw, zone, lane, item_event, tz, own = setup
    d = run(raw, zone, lane, item_event, tz, own)
    allowed, entries = strict_reading(raw, zone, lane, item_event, tz, own)
    if d.admit and d.direction == "in":
        assert allowed, (d.message, raw)
    if d.admit and d.direction == "out":  # leaving: only a ticket known to have come in
        assert entries >= 1 and lane.direction in ("out", "auto"), (d.message, raw)
    if not d.admit:
        assert d.status != "valid"


def _with_status(raw: dict[str, Any]) -> dict[str, Any]:
    variable = raw.get("variable")
    return {**raw, "variable": {**(variable if isinstance(variable, dict) else {}),
                                "status": "cancelled"}}


def _garble_scans(key: str) -> Any:
    def garble(raw: dict[str, Any]) -> dict[str, Any]:
        zd = raw.get("zoneData")
        if not isinstance(zd, dict) or not zd.get("scans"):
            return raw
        return {**raw, "zoneData": {**zd, "scans": [{**s, key: "??"} for s in zd["scans"]]}}
    return garble


GARBLES = {
    "status": _with_status,
    "validFrom": lambda raw: {**raw, "stable": {**raw["stable"], "validFrom": "soon"}},
    "validTo": lambda raw: {**raw, "stable": {**raw["stable"], "validTo": {"x": 1}}},
    "scan times": _garble_scans("scannedOn"),
    "scan zones": _garble_scans("zoneId"),
}
ALWAYS_REFUSED = ("status", "validFrom", "validTo")


@settings(max_examples=400, deadline=None)
@given(setups(), st.sampled_from(sorted(GARBLES)))
def test_garbling_a_field_never_turns_a_refusal_into_an_admit(setup: tuple[Any, ...],
                                                             field: str) -> None:
    raw, zone, lane, item_event, tz, own = setup
    before = run(raw, zone, lane, item_event, tz, own, "in")
    after = run(GARBLES[field](raw), zone, lane, item_event, tz, own, "in")
    if not before.admit:
        assert not after.admit, (field, after.message, raw)
    if field in ALWAYS_REFUSED:
        assert not after.admit, (field, after.message)
