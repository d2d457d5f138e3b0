"""A ticket's in/out scans across gates are ordered on one clock, not on each gate's own.

Real gates (real `Gate`, real SQLite files) on a real one-node nats-server; one gate's clock
is minutes off (`skews_s`: its scans are stamped with it and its bus measures it against the
server's from heartbeats, as a daemon's would). A pass-back (in again while inside) must be
refused whichever gate's clock is off, and the venue must see one ticket inside.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent import demo_data
from agent.venue.node import NodeProcess
from tests.venue.rig import VenueDevice, venue_devices, wait_until
from tests.venue.test_stream_recreated import _delete as delete_stream

CODE = demo_data.bulk_barcode(0)
SKEW_S = 180.0
# A person takes at least this long between two gates. Each gate's offset from the server's
# clock is measured from heartbeat deliveries, so it includes their delivery time (well under
# a millisecond on loopback, more on a busy test machine): scans of one ticket at two gates
# less than that apart may be ordered either way. No turnstile sees a person that fast.
WALK_S = 0.2


def scan(device: VenueDevice, lane: str) -> tuple[bool, str]:
    gate = device.gate()
    d = gate.scan(CODE, gate.config.lane(lane), device.now()).decision
    return d.admit, d.status


def seen_by(device: VenueDevice, other: VenueDevice) -> None:
    """`device` has applied `other`'s last claim, and the person walks over to it."""
    wait_until(lambda: device.bus.applied_seq >= other.venue_link_seq(), 5,
               f"{device.name} has {other.name}'s claim")
    time.sleep(WALK_S)


def floor_inside(device: VenueDevice) -> int:
    store = device.venue_store()
    try:
        return sum(r["inside"] for r in store.occupancy() if r["zone_id"] == demo_data.FLOOR_ZONE)
    finally:
        store.close()


def conflicts(device: VenueDevice) -> int:
    store = device.venue_store()
    try:
        return store.conflict_count()
    finally:
        store.close()


@pytest.mark.parametrize(("skews_s", "corrected"), [
    ([0.0, SKEW_S], [False, False]), ([-SKEW_S, 0.0], [False, False]),
    ([SKEW_S, 0.0], [True, False])],
    ids=["the-other-gate-fast", "this-gate-slow", "this-gate-fast-deciding-by-corrected-time"])
def test_a_clock_minutes_off_cannot_make_a_pass_back_read_as_outside(
        tmp_path: Path, venue_node: NodeProcess, skews_s: list[float],
        corrected: list[bool]) -> None:
    """In at a, out at b, back in at a, then the pass-back at a: refused. Ordered by each
    gate's own clock, b's exit read as the latest scan (b 3 min fast, or a 3 min slow) and the
    ticket was admitted a second time. A gate whose wall clock is off but which decides by a
    corrected time (GateClock) reads the others' scans on that time, not on its wall clock."""
    with venue_devices(tmp_path, [venue_node.url], 2, 1, skews_s=skews_s,
                       corrected=corrected) as (a, b):
        for device in (a, b):
            device.calibrate()
        assert scan(a, "floor-in")[0]
        seen_by(b, a)
        assert scan(b, "floor-out")[0]
        seen_by(a, b)
        assert scan(a, "floor-in")[0]  # back in
        seen_by(b, a)
        assert scan(a, "floor-in") == (False, "alreadyIn")  # the pass-back
        assert scan(b, "floor-in") == (False, "alreadyIn")  # and at the other gate
        for device in (a, b):
            assert floor_inside(device) == 1
            assert conflicts(device) == 0  # the way back in was no admit beyond the limit


def test_scans_decided_offline_and_published_late_keep_their_place(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """b (3 min fast) is cut off from the bus and lets the ticket in and out (policy local);
    then a admits it online. b's two scans reach the stream after a's entry, stamped 3 min
    ahead: taken back by b's offset they come before it, so the ticket is inside, at a and at
    b, and no conflict is reported (by stream position, or by b's clock, the exit was last)."""
    with venue_devices(tmp_path, [venue_node.url], 2, 1, skews_s=[0.0, SKEW_S]) as (a, b):
        for device in (a, b):
            device.calibrate()
        b.bus.stop()  # b's link is down; the same process keeps its clock's measurement
        assert scan(b, "floor-in")[0] and scan(b, "floor-out")[0]
        assert [r["venue"] for r in b.journal_rows()] == ["offline", "offline"]
        time.sleep(WALK_S)
        assert scan(a, "floor-in")[0]  # a knows nothing of b's scans: outside, admitted
        b.bus.start()
        wait_until(lambda: a.bus.applied_seq >= 3 and b.bus.applied_seq >= 3, 10,
                   "b's offline scans on the stream, after a's entry")
        assert scan(a, "floor-in") == (False, "alreadyIn")
        assert scan(b, "floor-in") == (False, "alreadyIn")
        for device in (a, b):
            assert floor_inside(device) == 1
            assert conflicts(device) == 0


def test_scans_published_again_for_a_stream_made_again_keep_their_order(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    """The stream is deleted and made again: every gate publishes its journal again, granted
    claims included, long after they were decided (b last here). A gate that learns them only
    from the new stream (c, away meanwhile: nothing of the old one kept) places them at their
    own times taken back by each sender's offset, not when they were sent again: b's exit
    (b 3 min fast) stays between a's two entries, the ticket is inside."""
    with venue_devices(tmp_path, [venue_node.url], 3, 1, skews_s=[0.0, SKEW_S, 0.0]) \
            as (a, b, c):
        for device in (a, b):
            device.calibrate()
        c.bus.stop()
        assert scan(a, "floor-in")[0]
        seen_by(b, a)
        assert scan(b, "floor-out")[0]
        seen_by(a, b)
        assert scan(a, "floor-in")[0]
        seen_by(b, a)
        b.bus.stop()
        delete_stream(venue_node.url, make_again=True)
        wait_until(lambda: a.bus.stream_restarts == 1 and a.bus.applied_seq >= 2, 20,
                   "a on the new stream with its own scans again")
        b.bus.start()
        wait_until(lambda: b.bus.stream_restarts == 1 and b.bus.applied_seq >= 3, 20,
                   "b's scans on the new stream, after a's")
        c.bus.start()
        wait_until(lambda: c.bus.applied_seq >= 3, 20, "c has the new stream")
        for device in (a, b, c):
            assert scan(device, "floor-in") == (False, "alreadyIn")
            assert floor_inside(device) == 1
