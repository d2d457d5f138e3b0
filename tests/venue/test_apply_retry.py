"""venue.db refusing a batch of the stream: the batch is tried again, in order, never skipped.

Real gates, SQLite files and nats-server. The failure is real too: another connection holds
venue.db's write lock (as a stuck `sqlite3` shell or a backup tool would), so the applier's
`BEGIN IMMEDIATE` gives up with "database is locked" after its busy timeout. (A full disk
would be the usual cause; `PRAGMA max_page_count` cannot stand in for it here, being a
setting of the applier's own connection, which the test does not reach.)"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from agent import demo_data
from agent.ops.status import evaluate
from agent.venue.node import NodeProcess
from tests.venue.rig import venue_devices, wait_until
from tests.venue.test_in_flight import knows, rows_of, scan

FIRST = demo_data.bulk_barcode(1)
SECOND = demo_data.bulk_barcode(2)


def test_a_batch_venue_db_refused_is_applied_in_order_once_it_can_be(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    with venue_devices(tmp_path, [venue_node.url], 2, 5) as (a, b):
        blocker = sqlite3.connect(b.bus.store_path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # b's applier cannot write venue.db now
            assert scan(a, FIRST)[0]
            wait_until(lambda: b.bus.apply_failing.error is not None, 20, "b's apply refused")
            assert "locked" in (b.bus.apply_failing.error or "")
            _health, reasons = evaluate({"venue": b.bus.get_status()}, datetime.now(UTC), 3600)
            assert "venue_db_failing" in {r.code for r in reasons}
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        # a later message: it must not be applied before the refused one (its position
        # would pass over it for good)
        assert scan(a, SECOND)[0]
        first, second = rows_of(a, FIRST)[0]["uuid"], rows_of(a, SECOND)[0]["uuid"]
        wait_until(lambda: knows(b, second), 20, "b applies the later admit")
        assert knows(b, first)
        assert b.bus.apply_failing.error is None and b.bus.get_status()["apply_error"] is None
        # b now refuses the ticket a admitted, with no race lost on the bus (it knew the
        # ticket's last sequence) and nothing decided offline
        admit, status, _t = scan(b, FIRST)
        assert (admit, status) == (False, "alreadyIn")
        assert b.bus.counters["claims_conflicted"] == 0
        assert b.bus.counters["claims_timed_out"] == 0
        assert not [r for r in b.journal_rows() if r["admit"]]
