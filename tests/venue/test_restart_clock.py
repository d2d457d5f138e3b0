"""A restart after the clock was stepped back (NTP at boot): what the earlier process left is
told from this one's by journal seq and by who sent a claim, never by wall time.

The earlier process's scans are real scans stamped an hour ahead of this process's clock (no
clock is stepped: `Gate.scan` is given the time the wrong clock had). A crash's leftovers are
made with one SQL statement each, the state a crash leaves: a row's settle mark is not fsynced
(lost -> the row is 'claiming' again), and a claim granted before its journal commit leaves no
row. Real SQLite files, a real one-node nats-server."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent import demo_data
from agent.store.journal import Journal
from agent.venue.bus import VenueBus
from agent.venue.node import NodeProcess
from tests.venue.rig import VenueDevice, venue_devices, wait_until

GRANTED, UNSENT, UNJOURNALED = (demo_data.bulk_barcode(i) for i in (1, 2, 3))
AHEAD = timedelta(hours=1)


def _journal(device: VenueDevice) -> Journal:
    return Journal(device.bus.store_path.with_name("journal.db"))


def _uuid_of(device: VenueDevice, code: str) -> str:
    (row,) = [r for r in device.journal_rows() if r["code"] == code]
    return str(row["uuid"])


def _rows_by_uuid(device: VenueDevice) -> dict[str, dict[str, Any]]:
    return {r["uuid"]: r for r in device.journal_rows()}


def _on_bus(device: VenueDevice, scan_uuid: str) -> tuple[int, int] | None:
    store = device.venue_store()
    try:
        return store.conn.execute("SELECT admit, voided FROM venue_scans WHERE uuid = ?",
                                  (scan_uuid,)).fetchone()
    finally:
        store.close()


@pytest.mark.e2e
def test_leftovers_stamped_ahead_of_the_clock_are_settled_and_later_scans_published(
        tmp_path: Path, venue_node: NodeProcess) -> None:
    with venue_devices(tmp_path, [venue_node.url], 2, 5) as (a, b):
        lane = a.gate().config.lane("north-in")
        ahead = datetime.now(UTC) + AHEAD  # the earlier process's clock
        # granted on the bus and journaled; the crash lost its settle mark
        assert a.gate().scan(GRANTED, lane, ahead).decision.admit
        granted = _uuid_of(a, GRANTED)
        wait_until(lambda: _rows_by_uuid(a)[granted]["venue"] == "claimed", 5, "settled")
        # granted on the bus; the process died before its journal commit (no row)
        assert a.gate().scan(UNJOURNALED, lane, ahead).decision.admit
        unjournaled = _uuid_of(a, UNJOURNALED)
        wait_until(lambda: _on_bus(b, unjournaled) == (1, 0), 5, "b sees the claim")
        a.bus.stop()
        # journaled 'claiming' while its claim never left the process (the bus is stopped:
        # decided offline; the crash's state is the same row still 'claiming')
        assert a.gate().scan(UNSENT, lane, ahead).decision.admit
        unsent = _uuid_of(a, UNSENT)
        conn = sqlite3.connect(a.bus.store_path.with_name("journal.db"))
        try:
            with conn:
                conn.execute(
                    "UPDATE scans SET venue = 'claiming' WHERE uuid IN (?, ?)", (granted, unsent))
                conn.execute("DELETE FROM scans WHERE uuid = ?", (unjournaled,))
        finally:
            conn.close()

        # the new process, its bus not reachable yet: both rows are shown as unanswered,
        # though stamped an hour after its clock
        away = VenueBus({**a.bus.venue, "servers": ["nats://127.0.0.1:9"]},
                        a.bus.store_path.parent, a.bus.journal_path)
        away.start()
        journal = _journal(a)
        try:
            wait_until(lambda: away.left_through_seq > 0, 5, "the bus read the journal")
            assert away.get_status(journal)["claims_unanswered"] == 2
        finally:
            journal.close()
            away.stop()

        a.restart_bus()  # connected: the sweep settles both rows from the stream
        wait_until(lambda: _rows_by_uuid(a)[unsent]["venue"] == "void", 10, "unsent voided")
        rows = _rows_by_uuid(a)
        assert (rows[granted]["venue"], rows[granted]["admit"]) == ("claimed", 1)
        assert (rows[unsent]["admit"], rows[unsent]["upload_state"]) == (0, "local")
        # the earlier process's claim with no admit is voided now, not an hour from now
        wait_until(lambda: _on_bus(b, unjournaled) == (1, 1), 10, "b applies the void")
        # the publisher is not stopped at those rows: a later scan (a refusal, published
        # as a scan of its own) reaches the other gate
        refused = a.gate().scan(GRANTED, lane, datetime.now(UTC))
        assert refused.decision.status == "alreadyIn"
        wait_until(lambda: _on_bus(b, refused.uuid) is not None, 10, "b sees the refusal")
        journal = _journal(a)
        try:
            assert a.bus.get_status(journal)["claims_unanswered"] == 0
            uploads = [r["uuid"] for r in journal.claim_batch(10, "batch-1")]
        finally:
            journal.close()
        assert granted in uploads and unsent not in uploads  # no longer held from the upload
