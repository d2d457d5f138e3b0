"""`sim:NAME`: a simulated reader and relay that are real drivers (python-can's `virtual`).

In-process: readers and relays with the same NAME share a channel in a module registry.
`sim_inject(NAME, code)` delivers a scan to every running `sim:NAME` reader; `sim_relay(NAME)`
returns the `SimRelayRecord` with every pulse (ms, monotonic and wall time) and the relay's
on/off history. `sim_unplug(NAME)` / `sim_replug(NAME)` make the reader lose and regain its
"device", to exercise the reconnect path, and the relay of that NAME fail to open or switch
(a board not plugged in yet, or pulled out) until it is plugged back.

Out of process (a daemon under test):
- reader `sim:NAME?socket=PATH` also listens on a Unix datagram socket at PATH; each line of
  each datagram becomes a scan. `send_scan(PATH, code)` sends one.
- relay `sim:NAME?log=PATH` appends each pulse as one JSON line to PATH
  (`{"relay": NAME, "ms": 800, "wall": "...Z", "mono_ns": ...}`).

Not simulated: timing of real hardware, partial reads, line noise, NFC anti-collision, a relay
that sticks. Use the serial/nfc drivers over a pty / nfcpy's UDP driver for those.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.core.codes import looks_like_nfc
from drivers.base import Chunk, DeviceLost, Output, Reader, ScanKind
from drivers.registry import sim_url

log = logging.getLogger(__name__)


@dataclass
class SimRelayRecord:
    """Everything a `sim:NAME` relay did, for tests and the demo to inspect."""

    pulses: list[dict[str, Any]] = field(default_factory=list)
    history: list[tuple[int, bool]] = field(default_factory=list)
    feedback: list[bool] = field(default_factory=list)
    state: bool = False
    fail_next: int = 0


_lock = threading.Lock()
_readers: dict[str, set[SimReader]] = {}
_unplugged: set[str] = set()
_relays: dict[str, SimRelayRecord] = {}


def sim_inject(name: str, code: str, raw: bytes | None = None) -> int:
    """Deliver `code` to every running `sim:NAME` reader; returns how many got it."""
    with _lock:
        targets = list(_readers.get(name, ()))
    for reader in targets:
        reader.inject(code, raw)
    return len(targets)


def sim_unplug(name: str) -> None:
    """Make `sim:NAME` readers lose their device until `sim_replug(NAME)`."""
    with _lock:
        _unplugged.add(name)


def sim_replug(name: str) -> None:
    with _lock:
        _unplugged.discard(name)


def sim_relay(name: str) -> SimRelayRecord:
    """The record of relay `sim:NAME` (created empty if it was never opened)."""
    with _lock:
        return _relays.setdefault(name, SimRelayRecord())


def sim_reset() -> None:
    """Forget every relay record and plug every reader back in (test isolation)."""
    with _lock:
        _relays.clear()
        _unplugged.clear()


def send_scan(address: str | os.PathLike[str], code: str) -> None:
    """Send one scan to a `sim:NAME?socket=PATH` reader of another process."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(code.encode("utf-8") + b"\n", os.fspath(address))


class SimReader(Reader):
    """Scans come from `sim_inject` and, with `?socket=PATH`, from a Unix datagram socket."""

    def __init__(self, url: str, **options: Any) -> None:
        options.setdefault("poll_interval", 0.05)
        super().__init__(url, **options)
        parsed = sim_url(url)
        self.name = parsed.path
        self.socket_path = parsed.query.get("socket") or None
        self._queue: queue.Queue[Chunk] = queue.Queue()
        self._sock: socket.socket | None = None

    def inject(self, code: str, raw: bytes | None = None) -> None:
        kind: ScanKind = "nfc" if looks_like_nfc(code) else "barcode"
        self._queue.put(Chunk(code, kind, raw if raw is not None else code.encode("utf-8")))

    def _open(self) -> None:
        with _lock:
            if self.name in _unplugged:
                raise DeviceLost(f"sim {self.name} is unplugged")
            _readers.setdefault(self.name, set()).add(self)
        if self.socket_path and self._sock is None:
            path = Path(self.socket_path)
            if path.is_socket():
                path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(path))
            self._sock = sock
            self._listener = threading.Thread(
                target=self._listen, args=(sock,), name=f"sim socket {path}", daemon=True
            )
            self._listener.start()

    def _listen(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return  # socket closed by _close
            for line in data.splitlines():
                self.inject(line.decode("utf-8", errors="replace"), line)

    def _read(self, timeout: float) -> list[Chunk]:
        if self.name in _unplugged:
            raise DeviceLost(f"sim {self.name} was unplugged")
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        chunks = [first]
        while True:
            try:
                chunks.append(self._queue.get_nowait())
            except queue.Empty:
                return chunks

    def _close(self) -> None:
        with _lock:
            _readers.get(self.name, set()).discard(self)
        if self._sock is not None and self._stopping.is_set():
            sock, self._sock = self._sock, None
            sock.close()
            if self.socket_path:
                Path(self.socket_path).unlink(missing_ok=True)


class SimRelay(Output):
    """Records pulses in `sim_relay(NAME)`; `?log=PATH` also appends them to a JSON-lines file."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parsed = sim_url(url)
        self.name = parsed.path
        self.log_path = parsed.query.get("log") or None
        self.record = sim_relay(self.name)

    def _open(self) -> None:
        if self.name in _unplugged:
            raise OSError(f"sim relay {self.name} is unplugged")

    def _set(self, on: bool) -> None:
        if self.name in _unplugged:
            raise OSError(f"sim relay {self.name} is unplugged")
        if on and self.record.fail_next > 0:
            self.record.fail_next -= 1
            raise OSError("simulated relay failure")
        self.record.state = on
        self.record.history.append((time.monotonic_ns(), on))

    def pulse(self, ms: int) -> None:
        super().pulse(ms)
        entry = {
            "relay": self.name,
            "ms": ms,
            "wall": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "mono_ns": time.monotonic_ns(),
        }
        self.record.pulses.append(entry)
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")

    def _feedback(self, accepted: bool) -> None:
        self.record.feedback.append(accepted)
