"""An unsynced write (a claim settled or voided) started while another thread is inside a scan's
transaction on the same journal connection waits for it, and the scan keeps its fsync
(agent.store.journal `_write(unsynced=True)`).

One `Journal` can be shared by threads (the venue bus's: its loop settles claims with an
unsynced write while another of its threads may record on it). `synchronous` is a setting of
the connection; it was switched to NORMAL before the writer lock was taken, so SQLite refused
it inside the other thread's transaction ("Safety level may not be changed inside a
transaction") and the settle failed with a bare sqlite3 error. Now it is switched under the
lock. Real file, real threads; the scan reads the connection's setting just before its COMMIT.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from agent.store.journal import Journal, new_scan_uuid
from tests.store.test_journal import _row

FULL = 2  # PRAGMA synchronous


def test_a_scan_inside_its_transaction_keeps_its_fsync_when_an_unsynced_write_starts(
        tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    claiming = _row(new_scan_uuid())
    journal.record(claiming)
    inside, settled = threading.Event(), threading.Event()
    seen: list[int] = []

    def settle() -> None:  # the bus loop settling a claim on the same connection
        inside.wait(10)
        journal.settle_claims([(claiming.uuid, "claimed")])
        settled.set()

    settler = threading.Thread(target=settle)
    settler.start()
    try:
        with journal.scan_transaction():
            journal.insert(_row(new_scan_uuid()))
            inside.set()
            time.sleep(0.3)  # the settler has started its write by now and waits for the lock
            seen.append(journal.conn.execute("PRAGMA synchronous").fetchone()[0])
        assert settled.wait(10)  # it ran once the scan had committed
    finally:
        settler.join(10)
        journal.close()
    assert seen == [FULL]
