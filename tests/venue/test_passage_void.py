"""Issue 17 on the venue bus: an admit voided for want of a passage releases its venue claim
(the venue's existing void message), so another gate may admit the ticket. A real
nats-server (one node), two in-process devices, the real lane thread with a `sim:` passage
input that never pulses, or a `sim:` relay that is unplugged."""

from __future__ import annotations

import dataclasses
import queue
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import demo_data
from agent.runtime.lane import LaneEvent, LaneRunner, manual_scan
from agent.venue.node import NodeProcess
from drivers.sim import sim_reset, sim_unplug
from tests.venue.rig import venue_devices, venue_lane, wait_until

pytestmark = pytest.mark.e2e


def test_a_voided_admit_releases_its_claim_for_another_gate(tmp_path: Path,
                                                            venue_node: NodeProcess) -> None:
    code = demo_data.bulk_barcode(0)
    with venue_devices(tmp_path, [venue_node.url], 2, 3) as (a, b):
        runner, events = venue_lane(a, "north-in", passage_in="sim:venue-pass",
                                    passage_timeout_ms=300)
        lane = runner.lane
        try:
            runner.submit(manual_scan(code, lane.name))
            first = events.get(timeout=10)
            assert first.result.decision.admit
            wait_until(lambda: runner.passage.totals["voided"] == 1, 10, "admit voided")
        finally:
            runner.stop()
        wait_until(lambda: a.bus.counters["voids"] >= 1, 5, "void published")
        wait_until(lambda: b.bus.applied_seq >= 2, 10, "b applies the claim and its void")
        again = b.gate().scan(code, b.gate().config.lane("north-in"), datetime.now(UTC))
        assert again.decision.admit, again.decision


def test_an_admit_whose_relay_failed_releases_its_claim_for_another_gate(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """The gate did not open (relay unplugged): the admit is voided at once, its claim with it."""
    code = demo_data.bulk_barcode(1)
    sim_reset()
    sim_unplug("venue-relay")
    with venue_devices(tmp_path, [venue_node.url], 2, 3) as (a, b):
        gate = a.gate()
        lane = dataclasses.replace(gate.config.lane("north-in"), debounce_ms=0,
                                   relay="sim:venue-relay")
        events: queue.Queue[LaneEvent] = queue.Queue()
        reasons: list[str] = []

        def void_claim(scan: dict[str, Any]) -> None:  # as the daemon's _void_claim
            reasons.append(scan["why"])
            a.bus.void_now(scan, scan["why"])

        runner = LaneRunner(lane, gate, events.put, void_claim=void_claim)
        runner.start()
        try:
            runner.submit(manual_scan(code, lane.name))
            first = events.get(timeout=10)
            assert not first.result.decision.admit and first.result.uuid
            assert first.result.decision.detail == "notPassed"
        finally:
            runner.stop()
            sim_reset()
        assert reasons and "gate did not open" in reasons[0]
        wait_until(lambda: a.bus.counters["voids"] >= 1, 5, "void published")
        wait_until(lambda: b.bus.applied_seq >= 2, 10, "b applies the claim and its void")
        again = b.gate().scan(code, b.gate().config.lane("north-in"), datetime.now(UTC))
        assert again.decision.admit, again.decision
