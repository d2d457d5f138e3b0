"""journal.db held by another process as the venue bus starts: the bus waits for it, says why,
and starts by itself once it opens, nothing lost.

`VenueBus._main` opens its own connection to journal.db (its publisher's rows, the sweep's
admits) before anything else. Opened once with no retry, a file held at that moment (a `sqlite3`
shell with `PRAGMA locking_mode=EXCLUSIVE`, a momentary permission or disk problem) ended the
bus thread for good: no scan published or applied, no claim answered, and status said only
"connecting". Now it is tried again every `open_retry_s`, as venue.db is
(tests/venue/test_venue_db_at_start.py): status names the file and what holds it
(`journal_open_error`, reason venue_journal_failing), and once it opens the scans journaled
before and meanwhile go out. A real second process holds the lock on a real journal.db; real
gate, journal, nats-server.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import demo_data
from agent.runtime.gate import Gate
from agent.store.cache import TicketCache
from agent.store.journal import Journal
from agent.venue.claims import VenueLink
from agent.venue.node import NodeProcess
from tests.venue.rig import wait_until
from tests.venue.test_venue_db_at_start import _reasons, _stored, gate_with_bus
from tests.venue.test_venue_db_held import HOLD_EXCLUSIVE

# another process holds a store file here on purpose: each try waits out the busy timeout
pytestmark = pytest.mark.usefixtures("short_busy_timeout")

BEFORE = 20  # journaled before the bus starts (and before the file is held)
AFTER = 10  # journaled once the holder let go, whether the bus opened it yet or not


def _journal_scans(gate: Gate, lane_name: str, first: int, count: int, now: datetime) -> None:
    """`count` scans of codes with no ticket (refused, journaled) on this gate's lane."""
    lane = gate.config.lane(lane_name)
    for i in range(first, first + count):
        assert not gate.scan(f"UNKNOWN{i:05d}", lane, now).decision.admit


def test_a_journal_db_held_at_start_is_tried_again_and_the_bus_then_catches_up(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    config, bus = gate_with_bus(tmp_path, venue_node, now)
    store_dir, journal_path = config.store_dir, config.store_dir / "journal.db"
    # this gate's lane before the bus runs: its scans journaled, its connection closed (the
    # holder can take the lock only while no other connection has the file open)
    alone = Gate(TicketCache(store_dir / "cache.db"), Journal(journal_path), config)
    _journal_scans(alone, "floor-in", 0, BEFORE, now)
    alone.close()
    locker = subprocess.Popen([sys.executable, "-c", HOLD_EXCLUSIVE, str(journal_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert locker.stdin is not None and locker.stdout is not None
    linked: Gate | None = None
    try:
        assert locker.stdout.readline().strip() == "locked"
        bus.start()
        wait_until(lambda: bus.get_status().get("journal_open_error") is not None, 30,
                   "the failed open of journal.db in status")
        status = bus.get_status()
        error = status["journal_open_error"]
        assert str(journal_path) in error and "locked" in error and "fuser -v" in error, status
        assert status["journal_open_failing_since"] is not None
        assert status["db_open_error"] is None  # venue.db is not the one held
        assert not status["connected"] and not bus.ready
        said = _reasons(bus)
        assert str(journal_path) in said["venue_journal_failing"], said
        assert "not running" in said["venue_journal_failing"], said
        assert "venue_unreachable" not in said, said  # it is not the bus server
        assert "venue_db_failing" not in said, said
        assert _stored(venue_node.url, bus.stream) == 0  # nothing went out meanwhile
        # still waiting for it (it ended at the first failure before)
        assert bus._thread is not None and bus._thread.is_alive()
        assert bus._applier.is_alive()
    finally:
        locker.stdin.close()  # the holder ends: the lock goes with its connection
        locker.wait(10)
    again = Gate(TicketCache(store_dir / "cache.db"), Journal(journal_path), config)
    try:
        _journal_scans(again, "floor-in", BEFORE, AFTER, now)
        wait_until(lambda: bus.ready, 30, "the bus started once journal.db opened")
        wait_until(lambda: _stored(venue_node.url, bus.stream) >= BEFORE + AFTER, 20,
                   "the scans journaled before and meanwhile published")
        wait_until(lambda: bus.applied_seq >= BEFORE + AFTER, 20, "and applied here")
        status = bus.get_status()
        assert (status["journal_open_error"], status["journal_open_failing_since"]) == \
            (None, None), status
        assert "venue_journal_failing" not in _reasons(bus)
        wait_until(lambda: bus.counters["published"] >= BEFORE + AFTER, 10, "the acks counted")
        assert bus.counters["published"] == BEFORE + AFTER
        # claims answered: a lane linked to the venue admits a ticket through the bus
        linked = Gate(TicketCache(store_dir / "cache.db"), Journal(journal_path), config,
                      VenueLink(bus, config.venue["offline_policy"]))
        lane = config.lane("floor-in")
        assert linked.scan(demo_data.bulk_barcode(1), lane, now).decision.admit
        assert bus.counters["claims_granted"] == 1
        wait_until(lambda: bus.applied_seq == BEFORE + AFTER + 1, 20, "the claim applied")
        assert _stored(venue_node.url, bus.stream) == BEFORE + AFTER + 1
    finally:
        again.close()
        if linked is not None:
            linked.close()
        bus.stop()
