"""venue.db held by another process while status is asked: the daemon's loop keeps serving.

`VenueBus.get_status` (the daemon's `/status`, on its event loop) and `occupancy` (the venue
page) read venue.db. While another process holds the file with `PRAGMA locking_mode=EXCLUSIVE`
(a `sqlite3` shell), each read waited SQLite's 5 s busy timeout with that loop stopped, then
raised "database is locked" out of the status call. Now they are read off the loop
(agent.venue.status_read): status answers at once with the last figures, and says which file
it cannot read (`db_read_error`, reason venue_db_failing) until it can again. A real second
process holds the lock on a real venue.db (it can take it only while no connection of the gate
is open: here between the bus's construction and its start).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.ops.status import evaluate
from agent.venue.bus import VenueBus

# another process holds a store file here on purpose: each try waits out the busy timeout
pytestmark = pytest.mark.usefixtures("short_busy_timeout")

HOLD_EXCLUSIVE = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("PRAGMA locking_mode=EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
conn.execute("COMMIT")  # the lock stays: locking_mode EXCLUSIVE keeps it until close
print("locked", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[VenueBus]:
    venue = {"name": "held", "servers": ["nats://127.0.0.1:1"], "device": "h1",
             "credentials": "", "tls_ca": "", "claim_timeout_ms": 500,
             "offline_policy": "local", "heartbeat_s": 5.0, "heartbeat_ttl_s": 30.0}
    bus = VenueBus(venue, tmp_path, None)  # makes venue.db, reads it, closes it
    yield bus
    bus._conflicts.close()
    bus._occupancy.close()


def test_status_answers_on_its_loop_and_names_venue_db_while_another_process_holds_it(
        bus: VenueBus) -> None:
    locker = subprocess.Popen([sys.executable, "-c", HOLD_EXCLUSIVE, str(bus.store_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert locker.stdin is not None and locker.stdout is not None
    try:
        assert locker.stdout.readline().strip() == "locked"

        async def daemon_loop() -> None:
            ticks = [0]

            async def ticker() -> None:  # anything else the daemon's loop serves
                while True:
                    ticks[0] += 1
                    await asyncio.sleep(0.01)

            ticking = asyncio.create_task(ticker())
            try:
                status = bus.get_status()  # its read waits on the lock, off this loop
                assert status["conflicts"] == 0 and status["db_read_error"] is None
                assert bus.occupancy() == []
                reading = bus._conflicts.done
                assert not reading.is_set()  # returned while the read still waits
                before = ticks[0]
                assert await asyncio.to_thread(reading.wait, 30)
                assert ticks[0] > before  # the loop served meanwhile
            finally:
                ticking.cancel()

        asyncio.run(daemon_loop())
        status = bus.get_status()  # the next read is started, this one says the last
        error = status["db_read_error"]
        assert error is not None and str(bus.store_path) in error and "locked" in error, status
        assert status["db_read_failing_since"] is not None
        _health, reasons = evaluate({"venue": {**status, "connected": True}},
                                    datetime.now(UTC), 3600)
        said = {r.code: r.message for r in reasons}
        assert str(bus.store_path) in said["venue_db_failing"], said
        assert "cannot be read" in said["venue_db_failing"]
    finally:
        locker.stdin.close()  # the holder ends: the lock goes with its connection
        locker.wait(10)
    for read in (bus._conflicts, bus._occupancy):  # read again, now that the file is free
        assert read.done.wait(30)
        read.every_s = 0.0
        read.get()
        assert read.done.wait(30)
    status = bus.get_status()
    assert (status["db_read_error"], status["db_read_failing_since"]) == (None, None), status
