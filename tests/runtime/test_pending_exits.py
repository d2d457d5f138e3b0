"""An exit still waiting for its turnstile passage does not free the ticket at any lane.

The holder scans out on an exit lane and does not pass (the ticket handed back over the
barrier): until the passage is confirmed (or the wait voided) another lane of the same gate
must read the ticket as inside. Taken as made, the entry lane admitted the ticket while the
exit was pending, and when the exit was then voided the journal held two people inside on
one ticket (a double admit). Real lane thread, SQLite journal and cache, `sim:` relays and
passage inputs (tests/runtime/lanerig.py); the other lane decides through a `Gate` of its
own over the same files, as a second lane of the daemon does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from agent import demo_data
from agent.runtime.gate import Gate
from agent.runtime.opening import open_cache, open_journal
from drivers.inputs import sim_input_pulse
from tests.conftest import DemoSite
from tests.rigs import wait_until
from tests.runtime.lanerig import LaneRig

C = demo_data.CODES


@pytest.fixture
def pending(site: DemoSite) -> Iterator[tuple[LaneRig, Gate, str]]:
    """An in/out lane: the floor ticket came in (passage seen), then scanned out; the exit
    waits for its passage. Beside it, a Gate for another lane of the device."""
    rig = LaneRig(site, "pend", direction="auto", zone_id=demo_data.FLOOR_ZONE,
                  max_entries=0, relay_out="sim:pend-out", passage_out="sim:pend-outpass",
                  passage_timeout_ms=120000)
    other = Gate(open_cache(site.config), open_journal(site.config), site.config)
    try:
        wait_until(lambda: rig.runner.passage.inputs["out"].connected, 5, "exit input")
        entry = rig.scan(C["floor"]).result
        assert (entry.decision.direction, entry.decision.admit) == ("in", True)
        sim_input_pulse("pend-pass")
        wait_until(lambda: rig.passage(entry.uuid or "") == "passed", 5, "entry passed")
        exit_ = rig.scan(C["floor"]).result
        assert (exit_.decision.direction, exit_.decision.admit) == ("out", True)
        assert exit_.uuid and rig.passage(exit_.uuid) == "waiting"
        yield rig, other, exit_.uuid
    finally:
        other.close()
        rig.close()


def enter(other: Gate, rig: LaneRig) -> tuple[bool, str]:
    lane = dataclasses.replace(rig.lane, name="south-in", direction="in", relay="",
                               relay_out="", passage_in="", passage_out="")
    decision = other.scan(C["floor"], lane, datetime.now(UTC)).decision
    return decision.admit, decision.status


def test_another_lane_refuses_the_ticket_while_its_exit_waits(
        pending: tuple[LaneRig, Gate, str]) -> None:
    rig, other, exit_ = pending
    assert enter(other, rig) == (False, "alreadyIn")  # the holder may not have passed
    sim_input_pulse("pend-outpass")  # the holder walks out: the exit is made
    wait_until(lambda: rig.passage(exit_) == "passed", 5, "exit passed")
    assert enter(other, rig) == (True, "valid")


def test_a_voided_exit_leaves_the_ticket_inside(pending: tuple[LaneRig, Gate, str]) -> None:
    """The holder never passed: the wait ends voided (here: the lane stops, as a reload
    does); the ticket was inside all along, and stays so."""
    rig, other, exit_ = pending
    assert enter(other, rig) == (False, "alreadyIn")
    rig.runner.stop()
    assert rig.passage(exit_) == "voided"
    assert enter(other, rig) == (False, "alreadyIn")
    entries = rig.db.execute("SELECT COUNT(*) FROM scans WHERE direction = 'in' AND admit = 1"
                             ).fetchone()[0]
    assert entries == 1  # one person inside on one ticket, never two
