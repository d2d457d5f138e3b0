"""Issue 17 on the venue bus: an admit voided for want of a passage releases its venue claim
(the venue's existing void message), so another gate may admit the ticket. A real
nats-server (one node), two in-process devices, the real lane thread with a `sim:` passage
input that never pulses."""

from __future__ import annotations

import dataclasses
import queue
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import demo_data
from agent.runtime.lane import LaneEvent, LaneRunner, manual_scan
from agent.venue.node import NodeProcess
from tests.venue.rig import venue_devices, wait_until

pytestmark = pytest.mark.e2e


def test_a_voided_admit_releases_its_claim_for_another_gate(tmp_path: Path,
                                                            venue_node: NodeProcess) -> None:
    code = demo_data.bulk_barcode(0)
    with venue_devices(tmp_path, [venue_node.url], 2, 3) as (a, b):
        gate = a.gate()
        lane = dataclasses.replace(gate.config.lane("north-in"), debounce_ms=0,
                                   passage_in="sim:venue-pass", passage_timeout_ms=300)
        events: queue.Queue[LaneEvent] = queue.Queue()
        runner = LaneRunner(lane, gate, events.put,
                            void_claim=lambda scan: a.bus.void_now(scan, "not passed"))
        runner.start()
        try:
            wait_until(lambda: runner.passage.inputs["in"].connected, 5, "passage input")
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
