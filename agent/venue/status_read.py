"""A figure of venue.db that status shows, read in a worker thread, never on the caller's loop.

`/status` and the venue page are answered on the daemon's event loop, and `VenueBus.get_status`
/ `occupancy` read venue.db there. While another process holds the file (a `sqlite3` shell with
`PRAGMA locking_mode=EXCLUSIVE`, a long write transaction), each read waited SQLite's 5 s busy
timeout with that loop stopped: status, the control socket and everything else on it stood
still, and the read's "database is locked" went nowhere but an exception of the status call.
Here the caller gets the last value read at once; when it is older than `every_s`, one read is
started in a thread of its own (one at a time: a read stuck on the lock is not stacked up). A
read that fails keeps the last value, and its error (naming the file: agent.store.venue) and
since when (`failing`, agent.venue.failing) are in status (`db_read_error`, `db_read_failing_since`: reason venue_db_failing),
logged once per distinct error. The caller is synchronous and on another loop than the bus's,
so `asyncio.to_thread` (what the bus's own loop uses) cannot serve it: a plain thread does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from agent.store.venue import VenueStore
from agent.venue.failing import Failing

log = logging.getLogger("gate_agent.venue")

T = TypeVar("T")


class StatusRead(Generic[T]):
    """One figure (`read` on its own connection to `path`), kept and refreshed off the loop
    (see the module docstring). `initial`: the value until the first read comes back."""

    def __init__(self, path: Path, read: Callable[[VenueStore], T], initial: T,
                 every_s: float, what: str):
        self.path = path
        self.read = read
        self.value = initial
        self.every_s = every_s
        self.what = what
        self.failing = Failing()  # the last read's error and since when, None once one works
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False
        self._read_at = float("-inf")  # monotonic: when the last read ended
        self._store: VenueStore | None = None
        self.done = threading.Event()  # set at the end of each read (tests wait on it)

    def get(self) -> T:
        """The last value read; a new read is started when it is due (never waited for)."""
        with self._lock:
            due = time.monotonic() - self._read_at >= self.every_s
            if due and not self._busy:
                self._busy, self._closed = True, False
                self.done.clear()
                threading.Thread(target=self._refresh, name=f"venue.db read ({self.what})",
                                 daemon=True).start()
        return self.value

    def _refresh(self) -> None:
        try:
            if self._store is None:
                self._store = VenueStore(self.path)
            value = self.read(self._store)
        except Exception as exc:  # noqa: BLE001 - said in status, the last value is kept
            error = f"{type(exc).__name__}: {exc}"[:400]
            if self.failing.fail(error):
                log.warning("venue: %s not read from venue.db (%s); status shows the last "
                            "value read", self.what, error)
        else:
            self.value = value
            self.failing.clear()
        finally:
            with self._lock:
                self._busy = False
                self._read_at = time.monotonic()
                if self._closed:
                    self._close_store()
            self.done.set()

    def close(self) -> None:
        """The bus stops: its connection is closed now, or by a read in flight when it ends
        (closed under a thread still inside it, the sqlite3 module may crash). A later `get`
        opens it again (a bus started again)."""
        with self._lock:
            self._closed = True
            if not self._busy:
                self._close_store()

    def _close_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()
