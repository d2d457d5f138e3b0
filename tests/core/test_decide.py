"""Every decision rule, through the real Gate over real SQLite files (cache + journal)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from agent import demo_data
from agent.config import LaneConfig
from agent.core.decide import DETAILS, STATUSES, Candidate, Facts, decide
from agent.core.model import parse_item, parse_zone
from agent.runtime.gate import Gate
from tests.conftest import DemoSite

C = demo_data.CODES


def lane(gate: Gate, name: str = "north-in", **changes: object) -> LaneConfig:
    return replace(gate.config.lane(name), **changes)


@pytest.mark.parametrize("key, status, detail, words", [
    ("unknown", "denied", "unknownCode", "Unknown code"),
    ("historic", "denied", "historicBarcode", "replaced"),
    ("refunded", "denied", "refunded", "refunded"),
    ("locked", "denied", "orderLocked", "being changed"),
    ("future", "denied", "outsideOfValidityPeriod", "Not yet valid"),
    ("expired", "denied", "outsideOfValidityPeriod", "No longer valid"),
    ("product", "denied", "typeDisabled", "Products"),
    ("other_event", "denied", "wrongEvent", "another event"),
    ("valid", "valid", None, "Welcome"),
    ("replaced", "valid", None, "Welcome"),
])
def test_single_scan_rules(gate: Gate, site: DemoSite, key: str, status: str,
                           detail: str | None, words: str) -> None:
    decision = gate.scan(C[key], lane(gate), site.now).decision
    assert (decision.status, decision.detail) == (status, detail)
    assert decision.admit == (status == "valid")
    assert words in decision.message
    assert decision.status in STATUSES and (decision.detail is None or decision.detail in DETAILS)


def test_single_access_second_scan_is_already_in_with_first_time(gate: Gate,
                                                                  site: DemoSite) -> None:
    first = gate.scan(C["valid"], lane(gate), site.now)
    assert first.decision.admit and first.uuid
    again = gate.scan(C["valid"], lane(gate), site.now + timedelta(minutes=5)).decision
    assert (again.admit, again.status) == (False, "alreadyIn")
    out = gate.scan(C["valid"], lane(gate, "north-out"), site.now + timedelta(minutes=6)).decision
    assert (out.admit, out.direction) == (True, "out")
    back = gate.scan(C["valid"], lane(gate), site.now + timedelta(minutes=7)).decision
    assert (back.admit, back.status) == (False, "alreadyIn")  # single access: no re-entry
    assert "Already admitted at" in back.message


def test_unlimited_lane_alternates_in_and_out(gate: Gate, site: DemoSite) -> None:
    floor = lane(gate, "floor")
    directions = [gate.scan(C["floor"], floor, site.now + timedelta(minutes=i)).decision
                  for i in range(5)]
    assert [d.direction for d in directions] == ["in", "out", "in", "out", "in"]
    assert all(d.admit for d in directions)


def test_scans_in_exceeded_with_two_entries(gate: Gate, site: DemoSite) -> None:
    two = lane(gate, "floor", max_entries=2)
    for minute, expect in ((0, "in"), (1, "out"), (2, "in"), (3, "out")):
        assert gate.scan(C["floor"], two, site.now + timedelta(minutes=minute)).decision.direction \
            == expect
    third = gate.scan(C["floor"], two, site.now + timedelta(minutes=4)).decision
    assert (third.admit, third.status) == (False, "scansInExceeded")


def test_out_when_not_inside_is_already_out(gate: Gate, site: DemoSite) -> None:
    decision = gate.scan(C["valid2"], lane(gate, "north-out"), site.now).decision
    assert (decision.admit, decision.status, decision.direction) == (False, "alreadyOut", "out")


def test_zone_access_and_closed_zone(gate: Gate, site: DemoSite) -> None:
    backstage = lane(gate, "floor", zone_id=demo_data.BACKSTAGE_ZONE)
    assert gate.check(C["floor"], backstage, site.now).detail == "itemDoesNotQualify"
    assert gate.check(C["vip"], backstage, site.now).status == "zoneClosed"  # opens in 3 h


def test_age_rules(gate: Gate, site: DemoSite) -> None:
    later = site.now + timedelta(hours=4)
    backstage = lane(gate, "floor", zone_id=demo_data.BACKSTAGE_ZONE)
    assert gate.check(C["vip"], backstage, later).status == "ageUnknown"
    assert gate.check(C["vip"], replace(backstage, age_unknown="admit"), later).admit
    zone = gate.cache.zone(demo_data.BACKSTAGE_ZONE)
    for born, status in (("2015-01-01", "tooYoung"), ("1990-01-01", "valid")):
        item = parse_item({"id": 1, "const": {"barcode": "A"},
                           "stable": {"dateOfBirth": born}})
        facts = Facts("A", "barcode", (Candidate(demo_data.EVENT_ID, item, None, zone,
                                                 zone.id),))
        assert decide(facts, backstage, later).status == status
    old = parse_zone({**zone.raw, "maxAge": 30}, demo_data.EVENT_ID)
    item = parse_item({"id": 1, "const": {"barcode": "A"}, "stable": {"dateOfBirth": "1950-05-05"}})
    assert decide(Facts("A", "barcode", (Candidate(demo_data.EVENT_ID, item, None, old,
                                                   old.id),)),
                  backstage, later).status == "tooOld"


def test_capacity_full_uses_attendance_plus_local_flow(gate: Gate, site: DemoSite) -> None:
    zone = gate.cache.zone(demo_data.FLOOR_ZONE)
    small = parse_zone({**zone.raw, "capacity": 121}, demo_data.EVENT_ID)  # 120 already inside
    with gate.cache.transaction():
        gate.cache.put_zones(demo_data.EVENT_ID, [
            small, *[z for z in gate.cache.zones(demo_data.EVENT_ID) if z.id != small.id]],
            "2000-01-01T00:00:00.000000Z")
    floor = lane(gate, "floor")
    assert gate.scan(C["floor"], floor, site.now).decision.admit
    full = gate.scan(C["vip"], floor, site.now).decision
    assert (full.admit, full.status) == (False, "full")
    assert gate.scan(C["floor"], floor, site.now + timedelta(seconds=1)).decision.direction == "out"
    assert gate.scan(C["vip"], floor, site.now + timedelta(seconds=2)).decision.admit


def test_type_filters_and_products(gate: Gate, site: DemoSite) -> None:
    assert gate.check(C["valid"], lane(gate, ticket_types=(12,)), site.now).detail == \
        "typeDisabled"
    assert gate.check(C["valid"], lane(gate, exclude_ticket_types=(11,)), site.now).detail == \
        "typeDisabled"
    assert gate.check(C["vip"], lane(gate, ticket_types=(12,)), site.now).admit
    assert gate.check(C["product"], lane(gate, include_products=True), site.now).admit


def test_grace_minutes_widen_validity(gate: Gate, site: DemoSite) -> None:
    assert not gate.check(C["expired"], lane(gate), site.now).admit
    assert gate.check(C["expired"], lane(gate, grace_minutes=90), site.now).admit


def test_lane_event_filter_and_season_ticket_pick(gate: Gate, site: DemoSite) -> None:
    season = gate.check(C["season"], lane(gate), site.now)
    assert season.admit and season.event_id == demo_data.EVENT_ID
    only_day2 = lane(gate, event_ids=(demo_data.OTHER_EVENT_ID,))
    assert gate.check(C["valid"], only_day2, site.now).detail == "wrongEvent"


def test_nfc_any_spelling_and_debounce(gate: Gate, site: DemoSite) -> None:
    spelled = "04:a2:2b:9c:1d:5e:80"
    first = gate.scan(spelled, lane(gate), site.now, kind="nfc", mono_ms=1000)
    assert first.decision.admit and first.decision.code == demo_data.NFC_TAG
    repeat = gate.scan(spelled, lane(gate), site.now, kind="nfc", mono_ms=1500)
    assert (repeat.decision.detail, repeat.decision.record, repeat.uuid) == (
        "duplicateRead", False, None)
    later = gate.scan(spelled, lane(gate), site.now, kind="nfc", mono_ms=1000 + 5000)
    assert later.decision.status == "alreadyIn" and later.uuid
    assert gate.journal.counts()["pending"] == 2  # the debounced read left no row


def scanned_elsewhere(gate: Gate) -> None:
    """Item 2 (`valid2`) as the platform reports it after another device scanned it in."""
    scanned = parse_item({
        "id": 2, "const": {"barcode": C["valid2"]},
        "variable": {"status": "scanned", "scannedOn": "2020-01-01 10:00:00"},
        "zoneData": {"accessToZones": [{"id": demo_data.ENTRY_ZONE}], "scans": [
            {"zoneId": demo_data.ENTRY_ZONE, "scan": "in", "scannedOn": "2020-01-01 10:00:00",
             "uuid": "other-device-1"}]}})
    assert scanned is not None
    with gate.cache.transaction():
        gate.cache.put_items(demo_data.EVENT_ID, [scanned])


def test_other_devices_scans_from_the_platform_count(gate: Gate, site: DemoSite) -> None:
    scanned_elsewhere(gate)
    assert gate.check(C["valid2"], lane(gate), site.now).status == "alreadyIn"


def test_platform_echo_of_our_own_scan_is_not_counted_twice(gate: Gate, site: DemoSite) -> None:
    floor = lane(gate, "floor", max_entries=2)
    first = gate.scan(C["floor"], floor, site.now)
    stored = gate.cache.payload(demo_data.EVENT_ID, gate.cache.find_barcode(C["floor"])[0].item.id)
    echo = parse_item({**(stored or {}), "zoneData": {
        "accessToZones": [{"id": demo_data.FLOOR_ZONE}],
        "scans": [{"zoneId": demo_data.FLOOR_ZONE, "scan": "in", "uuid": first.uuid,
                   "scannedOn": site.now.strftime("%Y-%m-%d %H:%M:%S")}]}})
    with gate.cache.transaction():
        gate.cache.put_items(demo_data.EVENT_ID, [echo])
    state = gate.facts(C["floor"], floor).candidates[0].state
    assert state.entries == 1 and state.inside


def test_every_refusal_is_journaled_and_unknown_codes_stay_local(gate: Gate,
                                                                 site: DemoSite) -> None:
    for key in ("unknown", "refunded", "historic"):
        assert gate.scan(C[key], lane(gate), site.now).uuid
    counts = gate.journal.counts()
    assert counts["local"] == 1 and counts["pending"] == 2
