"""Shared rigs for driver tests: a pty that plays a USB serial device, callback recorders."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers.base import Scan
from drivers.sim import sim_reset
from tests.rigs import PtyDevice


class Recorder:
    """Collects on_scan/on_state callbacks (from the reader thread) and waits for conditions."""

    def __init__(self) -> None:
        self.scans: list[Scan] = []
        self.states: list[tuple[str, bool, str]] = []
        self._cond = threading.Condition()

    def on_scan(self, scan: Scan) -> None:
        with self._cond:
            self.scans.append(scan)
            self._cond.notify_all()

    def on_state(self, url: str, connected: bool, reason: str) -> None:
        with self._cond:
            self.states.append((url, connected, reason))
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def codes(self) -> list[str]:
        return [s.code for s in self.scans]

    def connected_events(self) -> list[bool]:
        return [c for _, c, _ in self.states]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.fixture
def pty_device(tmp_path: Path) -> Iterator[PtyDevice]:
    dev = PtyDevice(tmp_path)
    yield dev
    dev.unplug()


@pytest.fixture(autouse=True)
def _clean_sim() -> Iterator[None]:
    sim_reset()
    yield
    sim_reset()
