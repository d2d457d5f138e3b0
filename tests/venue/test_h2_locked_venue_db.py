"""venue.db write-locked by another process (a CLI, `sqlite3` left in a transaction) while
the gate publishes its scans.

The publisher records in venue.db how far the bus acknowledged this gate's journal. That write
failed on the lock (after SQLite's 5 s busy timeout) and ended the round: each round sent the
same first 200 rows again and every row after them waited, unpublished, for as long as the lock
was held. Now publishing goes on after the position kept in memory, venue.db is asked again
each round, and status names the file (the applier fails on the same lock: venue_db_failing).
A real second process holds the lock; real gate, real SQLite files, a real nats-server.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest

from agent import demo_data
from agent.ops.status import evaluate
from agent.venue.node import NodeProcess
from tests.venue.rig import venue_devices, wait_until

SCANS = 250  # more than a publishing round's 200 rows

# another process holds a store file here on purpose: each try waits out the busy timeout
pytestmark = pytest.mark.usefixtures("short_busy_timeout")

HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(120)
"""


def _stored(url: str, stream: str) -> int:
    async def count() -> int:
        nc = await nats.connect(url)
        try:
            return int((await nc.jetstream().stream_info(stream)).state.messages)
        finally:
            await nc.close()
    return asyncio.run(count())


def test_a_locked_venue_db_neither_stops_publishing_nor_goes_unsaid(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    with venue_devices(tmp_path, [venue_node.url], 1, 10) as (dev,):
        path = dev.bus.store_path
        locker = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
            gate = dev.gate()
            lane = gate.config.lane("floor-in")
            for i in range(SCANS):  # codes with no ticket: refused, sent by the publisher
                assert not gate.scan(f"UNKNOWN{i:05d}", lane, dev.now()).decision.admit
            wait_until(lambda: _stored(venue_node.url, dev.bus.stream) >= SCANS, 40,
                       "every scan on the bus while venue.db is locked")
            # the stream stores a message before the bus has counted its ack
            wait_until(lambda: dev.bus.counters["published"] >= SCANS, 10, "the acks counted")
            assert dev.bus.counters["published"] == SCANS
            # the bus loop answers claims meanwhile
            assert gate.scan(demo_data.bulk_barcode(1), lane, dev.now()).decision.admit
            assert dev.bus.counters["claims_granted"] == 1
            def said_now() -> dict[str, str]:
                _health, reasons = evaluate({"venue": dev.bus.get_status()}, datetime.now(UTC),
                                            3600)
                return {r.code: r.message for r in reasons}
            # the applier says it after SQLite's 5 s busy wait, which a loaded machine's
            # publishing of the 250 scans may beat
            wait_until(lambda: "venue_db_failing" in said_now(), 20, "venue_db_failing said")
            said = said_now()
            assert str(path) in said["venue_db_failing"] and "fuser" in said["venue_db_failing"]
        finally:
            locker.kill()
            locker.wait()
        last = dev.journal_rows()[-1]["seq"]
        store = dev.venue_store()
        try:
            wait_until(lambda: store.published_through() >= last, 20,
                       "venue.db records the publishing position again")
        finally:
            store.close()
        wait_until(lambda: dev.bus.get_status()["apply_error"] is None, 20, "venue.db applied")
        assert dev.bus.applied_seq == SCANS + 1
        assert dev.bus.counters["published"] == SCANS  # nothing stored twice
