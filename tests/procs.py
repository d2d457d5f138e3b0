"""Child processes a test started never outlive it.

Why: under `filterwarnings = error`, a `Popen` left running (its helper timed out, or the test
failed before its clean-up line) or with an unclosed pipe raises ResourceWarning when the
garbage collector finds it, which is *later*, in whichever test the xdist worker runs next.
One slow test then failed an innocent one. So every subprocess started while a test runs is
recorded (`Reaper`, the autouse fixture `reap_children` in tests/conftest.py), and the ones
still running or holding pipes at its end are killed, waited for and closed there: a slow
test fails alone. `reap(proc)` is the same clean-up for helpers that time out.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_POPEN = subprocess.Popen


def reap(proc: subprocess.Popen[Any]) -> None:
    """Kill `proc` if it still runs, wait for it, close its pipes (idempotent)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):  # a broken pipe's flush
                stream.close()


class Reaper:
    """Records every `subprocess.Popen` made while installed (any thread: `subprocess.run`
    too), so `reap_all` can clean up what a test left behind."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[Any]] = []
        self._lock = threading.Lock()
        reaper = self

        class TrackedPopen(_POPEN):  # type: ignore[type-arg, misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                with reaper._lock:
                    reaper.started.append(self)

        self.popen = TrackedPopen

    def left_behind(self) -> list[subprocess.Popen[Any]]:
        """Processes still running or with a pipe still open."""
        with self._lock:
            started = list(self.started)
        return [p for p in started if p.poll() is None or any(
            s is not None and not s.closed for s in (p.stdin, p.stdout, p.stderr))]

    def reap_all(self) -> list[subprocess.Popen[Any]]:
        """Clean up what was left behind; returns those processes (for a test of this)."""
        left = self.left_behind()
        for proc in left:
            reap(proc)
        return left


def communicate_while(proc: subprocess.Popen[Any], progress: Callable[[], object], *,
                      stall_s: float, what: str, poll_s: float = 1.0) -> tuple[Any, Any]:
    """`proc.communicate()` for as long as the process gets on with its work, however long the
    whole takes on a loaded machine: a fixed budget (`communicate(timeout=60)`) fails a test
    that was only slow. The deadline is on a stall: `progress()` (what the test can watch the
    process do, e.g. `dir_state(store)`) must change within every `stall_s` seconds, else the
    process is taken as hung, reaped, and the test fails naming `what`. Retrying
    `communicate` after its timeout loses no output."""
    seen, still_since = progress(), time.monotonic()
    while True:
        try:
            return proc.communicate(timeout=poll_s)
        except subprocess.TimeoutExpired:
            now = progress()
            if now != seen:
                seen, still_since = now, time.monotonic()
            elif time.monotonic() - still_since > stall_s:
                reap(proc)
                raise AssertionError(f"{what}: no exit and no progress for {stall_s} s") \
                    from None


def join_while(threads: list[threading.Thread], progress: Callable[[], object], *,
               stall_s: float, what: str, poll_s: float = 0.5) -> None:
    """`thread.join()` for each of `threads` for as long as they get on with their work, the
    threads' counterpart of `communicate_while`: a fixed `join(30)` fails a test that was only
    slow, and a join that returns on its budget with the thread still running hides the hang
    behind whatever assertion comes next. The deadline is on a stall: `progress()` must change
    within every `stall_s` seconds, else the test fails naming `what` (the threads should be
    daemon threads, so a hung one does not keep the worker from exiting)."""
    seen, still_since = progress(), time.monotonic()
    for thread in threads:
        while True:
            thread.join(poll_s)
            if not thread.is_alive():
                break
            now = progress()
            if now != seen:
                seen, still_since = now, time.monotonic()
            elif time.monotonic() - still_since > stall_s:
                raise AssertionError(f"{what}: still running and no progress for {stall_s} s")


def dir_state(directory: Path) -> list[tuple[str, int, int]]:
    """Each file in `directory` by name, size and mtime: changes whenever a process writes
    there (a store's SQLite files and their -wal, at every commit)."""
    files = []
    for path in sorted(directory.glob("*")):
        try:
            stat = path.stat()
        except FileNotFoundError:  # renamed or removed as we looked
            continue
        files.append((path.name, stat.st_size, stat.st_mtime_ns))
    return files
