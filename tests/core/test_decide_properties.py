"""Properties of the engine over random scan sequences (hypothesis), on the pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import LaneConfig
from agent.core.codes import utc_iso
from agent.core.decide import Candidate, Facts, decide
from agent.core.model import parse_item, parse_zone
from agent.core.scanstate import OwnScan, derive_state
from agent.runtime.gate import Gate
from agent.runtime.opening import opened_gate
from tests.conftest import make_site

START = datetime(2026, 7, 1, 18, 0, tzinfo=UTC)
ZONE_IN_OUT = parse_zone({"id": 5, "name": "Floor", "scan": "in&out"}, 1)
ZONE_IN_ONLY = parse_zone({"id": 6, "name": "Entry", "scan": "in"}, 1)

items = st.builds(
    lambda status, access, valid_to_h: parse_item({
        "id": 1, "const": {"barcode": "T1", "typeId": 1},
        "variable": {"status": status},
        "stable": {"validTo": (START + timedelta(hours=valid_to_h)).isoformat()
                   if valid_to_h is not None else None},
        "zoneData": {"accessToZones": [{"id": z} for z in access]},
    }),
    st.sampled_from(["sold", "scanned", "refunded", "locked"]),
    st.lists(st.sampled_from([5, 6, 7]), max_size=3),
    st.none() | st.integers(-2, 48),
)
steps = st.lists(st.tuples(st.sampled_from(["in", "out", "auto", None]),
                           st.integers(1, 600)), min_size=1, max_size=25)


def run_sequence(item, zone, lane: LaneConfig, seq):
    """Feed scans through decide(), keeping own scans like the journal does. Returns decisions."""
    own: list[OwnScan] = []
    now = START
    out = []
    for i, (direction, gap) in enumerate(seq):
        now += timedelta(seconds=gap)
        state = derive_state(own, [], zone.id, zone.is_default_entry)
        facts = Facts("T1", "barcode", (Candidate(1, item, None, zone, zone.id, state),))
        d = decide(facts, lane, now, direction)
        if d.admit:
            own.append(OwnScan(f"u{i}", zone.id, d.direction, utc_iso(now)))
        out.append((now, d))
    return out


@settings(max_examples=300, deadline=None)
@given(items, st.sampled_from([ZONE_IN_OUT, ZONE_IN_ONLY]), steps)
def test_single_access_never_admits_twice(item, zone, seq) -> None:
    lane = LaneConfig(name="l", max_entries=1, direction="auto", debounce_ms=0)
    admits_in = [d for _, d in run_sequence(item, zone, lane, seq) if d.admit and
                 d.direction == "in"]
    assert len(admits_in) <= 1


@settings(max_examples=300, deadline=None)
@given(items, steps, st.integers(0, 4))
def test_in_out_zone_admits_alternate(item, seq, max_entries) -> None:
    lane = LaneConfig(name="l", max_entries=max_entries, direction="auto", debounce_ms=0)
    admitted = [d.direction for _, d in run_sequence(item, ZONE_IN_OUT, lane, seq) if d.admit]
    assert all(a != b for a, b in zip(admitted, admitted[1:], strict=False))
    if admitted:
        assert admitted[0] == "in"
    if max_entries:
        assert admitted.count("in") <= max_entries


@settings(max_examples=300, deadline=None)
@given(items, st.sampled_from([ZONE_IN_OUT, ZONE_IN_ONLY]), steps)
def test_every_admit_is_explained_by_the_rules(item, zone, seq) -> None:
    lane = LaneConfig(name="l", max_entries=0, direction="auto", debounce_ms=0)
    for now, d in run_sequence(item, zone, lane, seq):
        if not d.admit:
            assert d.status != "valid"
            continue
        assert d.status == "valid" and d.detail is None
        if d.direction == "out":  # leaving is never refused for status, zone or validity: an
            continue              # exit needs an entry, which the lines below checked
        assert item.status not in ("refunded", "locked")
        assert item.access_zones is None or zone.id in item.access_zones or (
            zone.is_default_entry and not item.access_zones)
        if item.valid_to:
            assert now <= datetime.fromisoformat(item.valid_to)


@pytest.fixture(scope="module")
def ro_gate(tmp_path_factory: pytest.TempPathFactory):
    site = make_site(Path(tmp_path_factory.mktemp("prop")), START)
    with opened_gate(site.config) as gate:
        yield gate


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text() | st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")),
       st.sampled_from([None, "barcode", "nfc"]), st.sampled_from(["in", "out", "auto"]))
def test_decide_never_raises_and_never_admits_unknown(ro_gate: Gate, code, kind, direction) -> None:
    lane = ro_gate.config.lane("floor")
    decision = ro_gate.check(code, lane, START, direction, kind)
    if decision.admit:
        assert decision.item_id is not None
        assert ro_gate.cache.find_barcode(decision.code) or ro_gate.cache.find_nfc(decision.code)
