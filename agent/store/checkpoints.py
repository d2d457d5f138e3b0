"""WAL checkpoints of the scan journal, off the lanes' hot path.

In WAL mode every commit appends pages to `journal.db-wal`; a checkpoint copies them back into
`journal.db` and fsyncs it. By default SQLite runs that checkpoint inside the commit that takes
the WAL past 1,000 pages — so one scan in a few hundred paid for it (milliseconds: a write of
every page plus a second fsync), which set the scan p99. Here a background thread with its own
connection runs `wal_checkpoint(PASSIVE)` every fraction of a second instead: passive never
waits for, nor blocks, a lane's write, so lanes only append and fsync their own pages.

Bounded: lane connections keep an automatic checkpoint at `WAL_CEILING_PAGES` (16 MiB of the
journal's 1 KiB pages), far above what the thread lets pile up. Should the thread stop or fall
behind, the next lane commit past the ceiling checkpoints as SQLite always did: the WAL never
grows without limit.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

from agent.store.sqlite import open_database

log = logging.getLogger(__name__)

WAL_CEILING_PAGES = 16000  # lanes' own autocheckpoint: the bound, never reached normally
CHECKPOINT_INTERVAL_S = 0.25


def set_lane_checkpoints(conn: sqlite3.Connection, ceiling_pages: int = WAL_CEILING_PAGES) -> None:
    """A lane's journal connection: leave checkpoints to `JournalCheckpointer` up to the
    ceiling (an `wal_autocheckpoint` of 0 would leave the WAL unbounded if the thread died)."""
    conn.execute(f"PRAGMA wal_autocheckpoint = {int(ceiling_pages)}")


class JournalCheckpointer:
    """One thread, one connection: passive checkpoints of the journal every `interval_s`."""

    def __init__(self, path: Path | str, interval_s: float = CHECKPOINT_INTERVAL_S):
        self.path = Path(path)
        self.interval_s = interval_s
        self.last_error: str | None = None
        self.runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None

    def start(self) -> bool:
        """Open its connection and start; False (logged, in `last_error`) when the journal
        cannot be opened a second time — the lanes then checkpoint at the ceiling."""
        try:
            self._conn = open_database(self.path, synchronous="FULL").conn
        except sqlite3.Error as exc:
            self.last_error = str(exc)
            log.warning("journal checkpoints stay with the lanes: %s", exc)
            return False
        self._thread = threading.Thread(target=self._loop, name="journal checkpoints",
                                        daemon=True)
        self._thread.start()
        return True

    def checkpoint(self) -> tuple[int, int, int]:
        """One passive checkpoint: (busy, WAL frames, frames copied back), as SQLite says."""
        assert self._conn is not None, "start() first"
        busy, frames, copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.runs += 1
        return int(busy), int(frames), int(copied)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.checkpoint()
                self.last_error = None
            except sqlite3.Error as exc:  # the lanes' ceiling still bounds the WAL
                if self.last_error is None:
                    log.warning("journal checkpoint failed (lanes will checkpoint at %d "
                                "pages): %s", WAL_CEILING_PAGES, exc)
                self.last_error = str(exc)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
