"""Shared rigs for driver tests: a pty that plays a USB serial device, callback recorders."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers.base import Scan
from drivers.sim import sim_reset


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


class PtyDevice:
    """A pty whose slave is reached through a stable symlink, like /dev/serial/by-id/...

    `unplug()` closes the master (the slave then reads EIO, as a pulled USB cable does);
    `replug()` makes a fresh pty and swaps the symlink, so a reader reopening the same path
    finds the "same" device again.
    """

    def __init__(self, directory: Path) -> None:
        self.link = directory / "usb-Scanner_1234-if00"
        self.master: int | None = None
        self.replug()

    def replug(self) -> None:
        master, slave = os.openpty()
        target = os.ttyname(slave)
        os.close(slave)  # the pts lives as long as the master is open
        tmp = self.link.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, self.link)
        self.master = master
        os.set_blocking(master, False)

    def unplug(self) -> None:
        if self.master is not None:
            os.close(self.master)
            self.master = None

    def write(self, data: bytes) -> None:
        assert self.master is not None, "device is unplugged"
        os.write(self.master, data)

    def read_available(self, timeout: float = 0.5) -> bytes:
        """Bytes the driver wrote to the device, waiting up to `timeout` for the first ones."""
        assert self.master is not None
        deadline = time.monotonic() + timeout
        out = b""
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except BlockingIOError:
                chunk = b""
            except OSError as exc:  # EIO: nobody has the slave open (driver closed the port)
                if exc.errno != errno.EIO:
                    raise
                return out
            out += chunk
            if (out and not chunk) or time.monotonic() > deadline:
                return out
            if not chunk:
                time.sleep(0.005)

    @property
    def path(self) -> str:
        return str(self.link)


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
