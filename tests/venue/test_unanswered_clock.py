"""`venue_claims_unanswered` measures a claim's wait on the clock its scan was stamped with
(the gate's decision clock: the platform's time while the wall clock is known wrong), never on
the machine's wall clock: with the two hours apart, every claim in flight showed as waiting for
hours at once (or a real wait stayed hidden as long). Real SQLite files, a real nats-server."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent import demo_data
from agent.store.journal import Journal
from agent.venue.bus import UNANSWERED_AFTER_S
from agent.venue.node import NodeProcess
from tests.venue.rig import venue_devices, wait_until

BEHIND_S = 8 * 3600.0


@pytest.mark.e2e
def test_a_claim_waits_on_the_gates_own_clock_not_the_machines(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    # the gate decides by a clock 8 h behind the machine's (time.time()): as a gate whose
    # platform-corrected clock differs from its wall clock
    with venue_devices(tmp_path, [venue_node.url], 1, 5, skews_s=[-BEHIND_S]) as (a,):
        lane = a.gate().config.lane("north-in")
        code = demo_data.bulk_barcode(1)
        assert a.gate().scan(code, lane, a.now()).decision.admit
        (row,) = [r for r in a.journal_rows() if r["code"] == code]
        wait_until(lambda: [r for r in a.journal_rows() if r["code"] == code][0]["venue"]
                   == "claimed", 5, "settled")
        conn = sqlite3.connect(a.bus.store_path.with_name("journal.db"))
        try:  # its answer not settled yet (a claim in flight), made just now on its clock
            with conn:
                conn.execute("UPDATE scans SET venue = 'claiming' WHERE uuid = ?", (row["uuid"],))
        finally:
            conn.close()
        journal = Journal(a.bus.store_path.with_name("journal.db"))
        try:
            assert a.bus.left_through_seq < row["seq"]  # this process's own row
            assert a.bus.get_status(journal)["claims_unanswered"] == 0
            # and counted once it has waited UNANSWERED_AFTER_S on that clock
            wait_until(lambda: a.bus.get_status(journal)["claims_unanswered"] == 1,
                       UNANSWERED_AFTER_S + 30, "the claim counted as unanswered")
        finally:
            journal.close()
