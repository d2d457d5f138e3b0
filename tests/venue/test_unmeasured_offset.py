"""A gate that has not measured its clock against the bus server's yet never admits a ticket
on an order of scans it cannot know; it measures the clock as it connects; and a scan it
decided unmeasured waits for the first heartbeat however long `heartbeat_s` is.

Real gates (real `Gate`, real SQLite files) on a real one-node nats-server; gate a's clock is
30 s off (`skews_s`, as in tests/venue/test_scan_order.py). The rig runs no daemon, so no
heartbeat measures a clock unless a test beats (`calibrate`). Other gates' scans reach a at
their bus times; a's own scans are stamped with its clock. Read as if a's clock agreed with
the server's (main before this change, until the first heartbeat), a's exit 30 s "late" (a
fast) read as after b's re-entry, or a's re-entry 30 s "early" (a slow) as after b's exit:
the ticket, inside, read as outside, and the pass-back at a was admitted (a double admit).

Where a gate must stay unmeasured although it connects, the bus server is taken to answer
without its time (the `no_server_time` fixture, tests/venue/conftest.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.core.codes import parse_utc_iso
from agent.ops.metrics import Metrics
from agent.ops.status import evaluate
from agent.venue import bus as venue_bus
from agent.venue.bus import VenueBus
from agent.venue.node import NodeProcess
from tests.venue.rig import VenueDevice, venue_devices, wait_until
from tests.venue.test_offset_journaled import (
    Cable,
    _b_times,
    _pass_back_refused,
)
from tests.venue.test_scan_order import CODE, WALK_S, scan, seen_by

pytestmark = pytest.mark.e2e

SKEW_S = 30.0


def decided(device: VenueDevice, lane: str) -> tuple[bool, str, str | None]:
    gate = device.gate()
    d = gate.scan(CODE, gate.config.lane(lane), device.now()).decision
    return d.admit, d.status, d.detail


def _inside_by_way_of_both_gates(a: VenueDevice, b: VenueDevice, skew_s: float) -> None:
    """The ticket goes in, out and in again across a and b; it ends inside."""
    assert scan(b, "floor-in")[0]
    seen_by(a, b)
    if skew_s > 0:  # a's exit, stamped 30 s late, then b's re-entry
        assert scan(a, "floor-out")[0]
        seen_by(b, a)
        assert scan(b, "floor-in")[0]
        seen_by(a, b)
    else:  # b's exit, then a's re-entry, stamped 30 s early
        assert scan(b, "floor-out")[0]
        seen_by(a, b)
        assert scan(a, "floor-in")[0]


@pytest.mark.parametrize("skew_s", [SKEW_S, -SKEW_S], ids=["a-fast", "a-slow"])
def test_an_unmeasured_gate_never_admits_a_ticket_that_is_inside(
        tmp_path: Path, venue_node: NodeProcess, no_server_time: None, skew_s: float) -> None:
    """Unmeasured, a cannot tell whether its own latest scan or b's came last: it refuses the
    pass-back with the reason (denied/clockUnmeasured, journaled), not admitted on offset 0.
    Once measured it knows the order: alreadyIn."""
    with venue_devices(tmp_path, [venue_node.url], 2, 1, skews_s=[skew_s, 0.0]) as (a, b):
        a.bus.stop()  # b is measured by its heartbeats, a (started again after) is not
        b.calibrate()
        a.restart_bus()
        wait_until(lambda: a.bus.ready, 10, "a connected again")
        assert not a.bus.board.calibrated and b.bus.board.calibrated
        _inside_by_way_of_both_gates(a, b, skew_s)
        assert decided(a, "floor-in") == (False, "denied", "clockUnmeasured")
        refusal = a.journal_rows()[-1]
        assert not refusal["admit"] and refusal["status_detail"] == "clockUnmeasured"
        assert decided(a, "floor-out")[:2] == (True, "valid")  # leaving is let through
        seen_by(b, a)
        assert decided(b, "floor-in")[:2] == (True, "valid")  # out it was: b knows
        seen_by(a, b)
        a.calibrate()
        assert decided(a, "floor-in")[:2] == (False, "alreadyIn")  # now a knows the order


def test_a_gate_measures_its_clock_as_it_connects(tmp_path: Path,
                                                  venue_node: NodeProcess) -> None:
    """No heartbeat at all: a's clock (30 s fast) is measured from the server's time in its
    first answer, so a places b's scans right from the start and refuses the pass-back as
    alreadyIn. Before, a read them as if its clock agreed until the first heartbeat, and
    admitted it."""
    with venue_devices(tmp_path, [venue_node.url], 2, 1, skews_s=[SKEW_S, 0.0]) as (a, b):
        for device, skew in ((a, SKEW_S), (b, 0.0)):
            offset = device.bus.clock_offset()
            assert offset is not None and abs(offset - skew) < 1.0, (device.name, offset)
        _inside_by_way_of_both_gates(a, b, SKEW_S)
        assert decided(a, "floor-in")[:2] == (False, "alreadyIn")


def test_a_scan_decided_unmeasured_waits_for_the_first_heartbeat_of_a_long_interval(
        tmp_path: Path, venue_node: NodeProcess, no_server_time: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """b (3 min fast, `heartbeat_s` 20) starts with its bus out of reach and decides
    unmeasured; then the bus is reachable, and no measurement comes for longer than the 5 s
    the publisher used to hold such scans. Held for the heartbeat interval too, they go out
    with the offset the first heartbeat then measures and keep their real place; after 5 s
    they went out unmeasured (the exit undated: the ticket inside until a later exit)."""
    cable = Cable(venue_node.url)
    with venue_devices(tmp_path, [venue_node.url], 2, 1, skews_s=[0.0, 180.0],
                       servers_of=[[venue_node.url], [cable.url]]) as (a, b):
        cable.pull()
        b.bus.stop()
        old = b.bus
        # b's new bus: the fixed part of the hold 1 s instead of 5, so the wait past it below
        # is 2 s, not 6 (the rule is the same: held past it, for the heartbeat interval too)
        monkeypatch.setattr(venue_bus, "UNMEASURED_HOLD_S", 1.0)
        b.bus = VenueBus({**old.venue, "heartbeat_s": 20.0, "heartbeat_ttl_s": 60.0},
                         old.store_path.parent, old.journal_path, None, wall=old.wall)
        b.bus.start()  # a new process, its bus out of reach
        for gate in b.gates:
            assert gate.venue is not None
            gate.venue.bus = b.bus
        at = datetime.now(UTC)
        assert scan(b, "floor-in")[0] and scan(b, "floor-out")[0]
        assert [r["venue"] for r in b.journal_rows()] == ["offline", "offline"]
        assert [r["clock_offset_s"] for r in b.journal_rows()] == [None, None]
        time.sleep(WALK_S)
        assert scan(a, "floor-in")[0]  # a knows nothing of b's scans: outside, admitted
        applied = a.venue_link_seq()  # a's own entry, the last message on the stream
        cable.plug()
        wait_until(lambda: b.bus.ready, 20, "b connected")
        time.sleep(venue_bus.UNMEASURED_HOLD_S + 1.0)  # past the old fixed hold, within the new
        assert not b.bus.board.calibrated
        assert a.bus.applied_seq == applied  # b's scans still held
        b.calibrate()
        _pass_back_refused(a, b)
        placed = _b_times(a)
        assert placed["out"] is not None, placed
        assert abs(parse_utc_iso(placed["out"]) - at) < timedelta(seconds=2), (placed, at)


def test_a_connected_gate_not_yet_measured_says_so_in_status(
        tmp_path: Path, venue_node: NodeProcess, no_server_time: None) -> None:
    """Connected, but no measurement (the server answers without its time, no heartbeat
    delivered): status had no reason for it while entries were refused clockUnmeasured.
    Now a warn reason `venue_clock_unmeasured` says so and since when (and
    `gate_reason_active` has it at 1); the first measurement ends it."""
    with venue_devices(tmp_path, [venue_node.url], 1, 1) as (a,):
        wait_until(lambda: a.bus.ready, 10, "a connected again")
        assert not a.bus.board.calibrated
        venue = a.bus.get_status()
        assert venue["clock_offset_s"] is None
        since = parse_utc_iso(venue["clock_unmeasured_since"])
        assert abs(since - datetime.now(UTC)) < timedelta(minutes=5)
        found = _venue_reasons(venue)
        assert found["venue_clock_unmeasured"][0] == "warn"
        assert venue["clock_unmeasured_since"] in found["venue_clock_unmeasured"][1]
        assert "clockUnmeasured" in found["venue_clock_unmeasured"][1]
        assert _reason_metric(venue, "venue_clock_unmeasured") == "1.0"
        a.calibrate()
        measured = a.bus.get_status()
        assert measured["clock_unmeasured_since"] is None
        assert "venue_clock_unmeasured" not in _venue_reasons(measured)
        assert _reason_metric(measured, "venue_clock_unmeasured") == "0.0"


def _venue_reasons(venue: dict[str, object]) -> dict[str, tuple[str, str]]:
    _health, found = evaluate({"venue": venue}, datetime.now(UTC), 1e9)
    return {r.code: (r.level, r.message) for r in found}


def _reason_metric(venue: dict[str, object], code: str) -> str:
    """`gate_reason_active{code}` as the daemon's /metrics gives it (its report's reasons)."""
    _health, found = evaluate({"venue": venue}, datetime.now(UTC), 1e9)
    report = {"venue": venue, "reasons": [r.as_dict() for r in found]}
    text = Metrics(lambda: report, lambda: datetime.now(UTC)).render().decode()
    prefix = f'gate_reason_active{{code="{code}"}} '
    return next(line for line in text.splitlines() if line.startswith(prefix))[len(prefix):]
