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

    `unplug()` closes the master (the slave then reads EIO, as a pulled USB cable does) and
    removes the symlink, as udev removes a by-id link; `replug()` makes a fresh pty and puts
    the symlink back, so a reader reopening the same path finds the "same" device again.
    The link must go with the master: the kernel gives a freed pts number to the next pty
    opened (another test's, on a busy machine), and a reader retrying a stale link then
    "reconnected" to a stranger's device while unplugged (seen once in CI,
    test_survives_device_vanishing[serial-pty]: "flapped while unplugged").
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
        self.link.unlink(missing_ok=True)
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


def audit_uploads(uploads: list[dict[str, Any]]) -> dict[str, Any]:
    """Exactly-once evidence from every ticket row the platform received (the sandbox's
    `uploads`, duplicates included, each with its `requestUuid`):

    - `applied`: scan uuid -> times the platform applied it (must be 1 for each scan);
    - `resent`: scan uuids that reached the platform under more than one request uuid — a
      resend the platform only caught by its scan-uuid de-duplication (must be empty: a
      retry reuses its request uuid);
    - `duplicates`: rows beyond the first of a scan uuid that were *not* a replay of the
      same request (must be 0);
    - `replays`: rows that came again under their own request uuid (legitimate retries).
    """
    applied: dict[str, int] = {}
    requests: dict[str, set[str]] = {}
    seen: set[tuple[str, str]] = set()
    duplicates = replays = 0
    for row in uploads:
        scan, request = str(row["uuid"]), str(row.get("requestUuid"))
        if row.get("skipped", "").startswith(("refused", "answered")):
            continue  # refused as a whole: nothing was taken, a resend is expected
        if not row.get("skipped"):
            applied[scan] = applied.get(scan, 0) + 1
        if (scan, request) in seen:
            replays += 1
        elif scan in requests:
            duplicates += 1
        seen.add((scan, request))
        requests.setdefault(scan, set()).add(request)
    return {"applied": applied, "duplicates": duplicates, "replays": replays,
            "resent": sorted(s for s, r in requests.items() if len(r) > 1)}
