"""A conflict hidden behind an exit awaiting its passage is found once the exit is voided.

Gate a lets the ticket in, then out on a lane whose exit waits for its passage; gate c, cut
off from the bus since before a's entry (policy local), admits the ticket after a's exit.
When c is back, every gate folds the ticket: a's exit may still be confirmed, so c's entry is
no conflict yet. Then a's exit is voided (the holder never went through): c's entry was made
while the ticket was inside, and every gate reports it. Before, a ticket was folded only as
scans arrived, never on a void: the conflict was never reported.

A real nats-server, real `Gate`s over real SQLite files (tests/venue/rig.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.store.passages import PassageLog, now_iso
from agent.venue.node import NodeProcess
from tests.venue.rig import VenueDevice, venue_devices, wait_until
from tests.venue.test_pending_exits import applied, journal_of, scan

pytestmark = pytest.mark.e2e


def _conflicts(device: VenueDevice) -> list[str]:
    store = device.venue_store()
    try:
        return [c["uuid"] for c in store.conflicts()]
    finally:
        store.close()


def test_an_entry_after_an_exit_voided_later_is_reported(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    with venue_devices(tmp_path, [venue_node.url], 3, 1) as (a, b, c):
        for device in (a, b, c):
            device.calibrate()
        c.bus.stop()
        assert scan(a, "floor-in")[:2] == (True, "valid")
        admit, _status, exit_ = scan(a, "floor-out", awaits_exit=True)
        assert admit
        wait_until(lambda: applied(b, exit_) is not None, 10, "b has a's exit")
        admit, _status, entry = scan(c, "floor-in")  # c sees nothing of a
        assert admit and c.journal_rows()[-1]["venue"] == "offline"
        c.bus.start()
        wait_until(lambda: applied(b, entry) is not None, 20, "b has c's offline entry")
        assert _conflicts(b) == []  # a's exit may still be confirmed
        journal = journal_of(a)
        try:
            assert PassageLog(journal).void(exit_, now_iso()) is not None
        finally:
            journal.close()
        a.bus.wake()
        wait_until(lambda: (applied(b, exit_) or {}).get("voided") == 1, 10, "a's void at b")
        wait_until(lambda: _conflicts(b) == [entry], 10, "c's entry reported at b")
        assert b.bus.counters["conflicts_found"] == 1
        wait_until(lambda: _conflicts(a) == [entry], 10, "c's entry reported at a")
