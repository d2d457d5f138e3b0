"""A ticket's in/out scans across gates are ordered on one clock, not on each gate's own.

Real gates (real `Gate`, real SQLite files) on a real one-node nats-server; one gate's clock
is set minutes off. The pass-back (in again at a gate while the ticket is inside) must be
refused whichever gate's clock is off.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent import demo_data
from agent.venue.node import NodeProcess
from tests.venue.rig import VenueDevice, venue_devices, wait_until

CODE = demo_data.bulk_barcode(0)
SKEW = timedelta(minutes=3)


def scan(device: VenueDevice, lane: str, skew: timedelta = timedelta(0)) -> tuple[bool, str]:
    gate = device.gate()
    d = gate.scan(CODE, gate.config.lane(lane), datetime.now(UTC) + skew).decision
    return d.admit, d.status


def seen_by(device: VenueDevice, other: VenueDevice) -> None:
    wait_until(lambda: device.bus.applied_seq >= other.venue_link_seq(), 5,
               f"{device.name} has {other.name}'s claim")


def test_a_gate_minutes_fast_cannot_make_a_pass_back_read_as_outside(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """The ticket leaves at b (its clock 3 min fast), comes back in at a, and is scanned in
    again at a: inside, refused (b's exit, stamped 3 min ahead, once read as the latest)."""
    with venue_devices(tmp_path, [venue_node.url], 2, 1) as (a, b):
        assert scan(a, "floor-in")[0]
        seen_by(b, a)
        assert scan(b, "floor-out", SKEW)[0]
        seen_by(a, b)
        assert scan(a, "floor-in")[0]  # back in
        assert scan(a, "floor-in") == (False, "alreadyIn")  # the pass-back
