"""Test rigs shared by several test packages (hardware stand-ins that are real OS objects)."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               step: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)
