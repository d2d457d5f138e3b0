"""Other gates' scans that this gate cannot place on its clock yet (its offset from the bus
server's not measured): derived state and the decision take the side that never admits twice.

Pure functions (`derive_state`, `decide`) on parsed platform JSON; the gates on a real bus are
in tests/venue/test_unmeasured_offset.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import LaneConfig
from agent.core.codes import shift_utc_iso, utc_iso
from agent.core.decide import DETAILS, Candidate, Facts, decide
from agent.core.model import ZoneScan, parse_item, parse_zone
from agent.core.scanstate import OwnScan, ScanState, derive_state

NOW = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
FLOOR = parse_zone({"id": 70, "name": "Floor", "scan": "in&out"}, 7)
ITEM = parse_item({"id": 1, "const": {"barcode": "T1", "typeId": 1}, "variable": [],
                   "stable": {}, "zoneData": {"accessToZones": [{"id": 70}]}})


def at(minutes: float) -> str:
    return utc_iso(NOW + timedelta(minutes=minutes))


def own(*scans: tuple[float, str]) -> list[OwnScan]:
    return [OwnScan(f"own{i}", FLOOR.id, d, at(m)) for i, (m, d) in enumerate(scans)]


def venue(*scans: tuple[float, str]) -> list[ZoneScan]:
    return [ZoneScan(FLOOR.id, d, at(m), f"bus{i}") for i, (m, d) in enumerate(scans)]


def state(mine: list[OwnScan], theirs: list[ZoneScan], placed: bool = False,
          platform: list[ZoneScan] | None = None) -> ScanState:
    return derive_state(mine, platform or [], FLOOR.id, False, theirs, placed)


def verdict(s: ScanState, direction: str) -> tuple[bool, str, str | None, str]:
    lane = LaneConfig(name="l", direction=direction, max_entries=0, debounce_ms=0,
                      zone_id=FLOOR.id)
    d = decide(Facts("T1", "barcode", (Candidate(7, ITEM, None, FLOOR, FLOOR.id, s),)),
               lane, NOW + timedelta(hours=1))
    return d.admit, d.status, d.detail, d.direction


def test_latest_scans_that_disagree_cannot_be_ordered() -> None:
    """This gate's latest is an exit, another gate's an entry (or the other way round):
    inside or out depends on the offset. Taken as inside, marked order_unknown."""
    for mine, theirs, entries in (
            (own((0, "in"), (5, "out")), venue((1, "in"), (3, "out"), (4, "in")), 3),
            (own((0, "in")), venue((1, "in"), (3, "out")), 2)):
        unknown = state(mine, theirs)
        assert unknown.inside and unknown.order_unknown
        assert unknown.entries == entries  # counted whatever the order
        assert verdict(unknown, "in") == (False, "denied", "clockUnmeasured", "in")
        assert verdict(unknown, "out")[:2] == (True, "valid")  # leaving is let through
        assert verdict(unknown, "auto") == (False, "denied", "clockUnmeasured", "in")
        assert "clockUnmeasured" in DETAILS
        placed = state(mine, theirs, placed=True)
        assert not placed.order_unknown  # measured: ordered as given


@pytest.mark.parametrize(("mine", "theirs", "inside"), [
    (own((0, "in")), venue((5, "out"), (6, "in")), True),  # both latest entries: inside
    (own((0, "in"), (1, "out")), venue((5, "in"), (6, "out")), False),  # both exits: out
    (own(), venue((5, "in"), (6, "out")), False),  # only the bus's: their own order
    (own((0, "in")), venue(), True),  # only this gate's
])
def test_latest_scans_that_agree_need_no_offset(mine: list[OwnScan], theirs: list[ZoneScan],
                                                inside: bool) -> None:
    known = state(mine, theirs)
    assert (known.inside, known.order_unknown) == (inside, False)
    assert verdict(known, "in")[:2] == ((False, "alreadyIn") if inside else (True, "valid"))


def test_an_undated_entry_is_inside_whatever_the_order() -> None:
    """An undated platform entry keeps the ticket inside in any order: alreadyIn, as before,
    not a refusal for want of a measurement."""
    undated = [ZoneScan(FLOOR.id, "in", None, "p1")]
    s = state(own((0, "in"), (1, "out")), venue((5, "in")), platform=undated)
    assert (s.inside, s.order_unknown) == (True, False)
    assert verdict(s, "in")[:2] == (False, "alreadyIn")


direction = st.sampled_from(["in", "out"])
timeline = st.lists(st.tuples(st.integers(0, 600), direction), max_size=6)


@settings(max_examples=400, deadline=None)
@given(timeline, timeline, st.integers(-4000, 4000))
def test_unplaced_never_reads_outside_where_some_offset_reads_inside(
        mine: list[Any], theirs: list[Any], offset_s: int) -> None:
    """Whatever the real offset: where the unmeasured gate reads the ticket as outside (and
    would admit an entry), the same scans placed by that offset read outside too; entries
    counted are the same (their count needs no order)."""
    mine_scans = [OwnScan(f"o{i}", FLOOR.id, d, utc_iso(NOW + timedelta(seconds=s)))
                  for i, (s, d) in enumerate(sorted(mine))]
    theirs_sorted = sorted(theirs)
    unplaced = state(mine_scans, [ZoneScan(FLOOR.id, d, utc_iso(NOW + timedelta(seconds=s)),
                                           f"v{i}") for i, (s, d) in enumerate(theirs_sorted)])
    placed = state(mine_scans, [ZoneScan(FLOOR.id, d, shift_utc_iso(
        utc_iso(NOW + timedelta(seconds=s)), offset_s), f"v{i}")
        for i, (s, d) in enumerate(theirs_sorted)], placed=True)
    assert unplaced.entries == placed.entries
    if not unplaced.inside:
        assert not placed.inside


def test_the_bus_copy_of_another_gates_scan_places_it_not_the_platforms_echo() -> None:
    """Another gate's entry, uploaded and synced back, carries that gate's own `scannedOn`
    (its clock 25 minutes slow here) as well as its bus copy (on the bus server's clock, read
    on this one). Placed by the echo, the entry came before this gate's exit and the ticket,
    inside, read as outside: a ticket passed back over the barrier was admitted again."""
    mine = own((-10, "out"))
    theirs = venue((-5, "in"))
    echo = [ZoneScan(FLOOR.id, "in", at(-30), "bus0")]  # the same scan, by the platform
    placed = state(mine, theirs, placed=True, platform=echo)
    assert placed.inside and not placed.order_unknown
    assert verdict(placed, "in")[:2] == (False, "alreadyIn")
    # the echo alone (the bus copy not there, e.g. a gate outside the venue) is still counted
    assert state(mine, [], placed=True, platform=echo).entries == 1
