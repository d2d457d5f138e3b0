"""WAL checkpoints off the hot path (issue 18): lanes leave them to a background connection,
and the WAL stays bounded whether or not that connection keeps up."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from agent.store.checkpoints import WAL_CEILING_PAGES, JournalCheckpointer, set_lane_checkpoints
from agent.store.journal import JOURNAL_PAGE_SIZE, Journal, JournalRow

FRAME = JOURNAL_PAGE_SIZE + 24  # a WAL frame: one page plus its header


def _scan(admit: bool = True) -> JournalRow:
    return JournalRow(
        uuid=str(uuid.uuid4()), code="NU-1", kind="barcode", barcode="NU-1", nfc_id=None,
        item_id=7, event_id=501, zone_id=3, zone_is_default=True, gate_id=71, lane="north",
        direction="in", admit=admit, status="valid" if admit else "denied", status_detail=None,
        message="m", scanned_on="2026-12-06T09:00:00.000000Z")


def _wal_bytes(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_lane_connections_leave_checkpoints_to_the_background(tmp_path: Path) -> None:
    lane = Journal(tmp_path / "journal.db", background_checkpoints=True)
    cli = Journal(tmp_path / "journal.db")
    try:
        assert lane.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_CEILING_PAGES
        assert cli.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000  # SQLite's
    finally:
        lane.close()
        cli.close()


def test_without_the_background_thread_the_wal_stops_at_the_lane_ceiling(tmp_path: Path) -> None:
    """The bound: nobody checkpoints but the lane itself, at its ceiling (50 pages here; 300
    scans write over 1,000 pages). The WAL file never grows past the ceiling plus one commit."""
    path = tmp_path / "journal.db"
    journal = Journal(path, background_checkpoints=True)
    set_lane_checkpoints(journal.conn, 50)
    try:
        largest = 0
        for i in range(300):
            journal.record(_scan(admit=i % 3 != 0))
            largest = max(largest, _wal_bytes(path))
        assert largest <= 32 + (50 + 25) * FRAME  # the ceiling plus the commit that crossed it
        assert journal.counts()["pending"] == 300
    finally:
        journal.close()


def test_passive_checkpoints_from_another_connection_keep_the_wal_short(tmp_path: Path) -> None:
    """Lanes at the real ceiling (16,000 pages, never reached here) and a checkpoint between
    bursts of 50 scans: every burst reuses the WAL from its start, so the file stays at one
    burst's size instead of growing with every burst."""
    path = tmp_path / "journal.db"
    journal = Journal(path, background_checkpoints=True)
    checkpoints = JournalCheckpointer(path, interval_s=3600)  # driven by hand here
    assert checkpoints.start()
    try:
        sizes = []
        for _burst in range(10):
            for _ in range(50):
                journal.record(_scan())
            busy, frames, copied = checkpoints.checkpoint()
            assert busy == 0 and copied == frames > 0
            sizes.append(_wal_bytes(path))
        assert max(sizes) <= sizes[0] * 1.5  # one burst's worth, not ten
        assert journal.counts()["pending"] == 500
    finally:
        checkpoints.stop()
        journal.close()


def test_the_thread_checkpoints_until_stopped(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = Journal(path, background_checkpoints=True)
    checkpoints = JournalCheckpointer(path, interval_s=0.01)
    assert checkpoints.start()
    try:
        journal.record(_scan())
        deadline = time.monotonic() + 30
        while checkpoints.runs < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert checkpoints.runs >= 3 and checkpoints.last_error is None
    finally:
        checkpoints.stop()
        journal.close()
    assert checkpoints._thread is not None and not checkpoints._thread.is_alive()


def test_a_journal_that_cannot_be_opened_again_leaves_checkpoints_to_the_lanes(
        tmp_path: Path) -> None:
    checkpoints = JournalCheckpointer(tmp_path)  # a directory: SQLite cannot open it
    assert not checkpoints.start()
    assert checkpoints.last_error
    checkpoints.stop()
