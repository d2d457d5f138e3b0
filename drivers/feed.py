"""A reader kept running for a whole interactive session, its scans queued for the caller.

`Reader.read_one` opens the device for one scan, which suits `devices test`; a pairing station
reads hundreds of tags in a row, and reopening an NFC reader per attendee costs a poll cycle
and risks losing a tap presented while it reopens. `ScanFeed` opens once, keeps the reader
thread running, and lets the caller wait for the next scan or throw away stale ones.
"""

from __future__ import annotations

import queue
import time

from drivers.base import OpenGuard, Reader, Scan
from drivers.registry import open_reader


class ScanFeed:
    """`with ScanFeed(url) as feed: scan = feed.next(timeout)`; probes the device on entry.
    `open_guard`: held around each open in the reader thread (`Reader.open_guard`)."""

    def __init__(self, url: str, reader: Reader | None = None,
                 open_guard: OpenGuard | None = None):
        self.url = url
        self.reader = reader or open_reader(url)
        if open_guard is not None:
            self.reader.open_guard = open_guard
        self._queue: queue.Queue[Scan] = queue.Queue()

    def __enter__(self) -> ScanFeed:
        self.reader.probe()  # DriverUnavailable now, not a silent wait for a missing device
        self.reader.start(self._queue.put)
        return self

    def __exit__(self, *exc: object) -> None:
        self.reader.stop()

    def drain(self) -> int:
        """Forget scans already queued (a tap from before the current attendee)."""
        dropped = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return dropped
            dropped += 1

    def next(self, timeout: float | None) -> Scan | None:
        """The next scan, or None after `timeout` seconds (None: wait for ever).

        Waits in short slices so Ctrl-C (KeyboardInterrupt) is delivered promptly.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
            if left <= 0:
                return None
            try:
                return self._queue.get(timeout=left)
            except queue.Empty:
                continue
