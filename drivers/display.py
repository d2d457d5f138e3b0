"""Text displays above a lane: the decision's message for the person at the gate.

`serial:///dev/ttyUSB1?baud=9600&width=20`
    A serial line display (the common VFD/LCD "customer displays" in line mode): each message
    is sent as one line, cut to `width` characters, ended by CR LF; a display that wants a
    clear-screen byte first gets it with `clear=0C`. Tested over a pty.
`sim:NAME[?log=PATH]`
    Simulated: `sim_display(NAME)` lists every text shown; `?log=PATH` appends JSON lines
    (`{"display": NAME, "text": ..., "mono_ns": ...}`) for a daemon under test.

A display is cosmetic: a failure is logged and counted, never delays or changes a decision.
Like a relay, a display that is missing or fails is opened again at the next text, so one
unplugged and plugged back (or plugged in after the start) shows again without a restart.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from agent.errors import DriverUnavailable
from drivers.registry import parse_url, sim_url
from drivers.serial_scanner import close_quietly

log = logging.getLogger(__name__)


class Display:
    def __init__(self, url: str) -> None:
        self.url = url
        self.shown = 0
        self.last_text = ""
        self.last_error = ""
        self._lock = threading.Lock()

    def open(self) -> None:
        """Claim the device (DriverUnavailable when it is not there)."""

    def show(self, text: str) -> None:
        """Show one line; errors are logged and kept for status, never raised."""
        with self._lock:
            try:
                self._show(text)
            except Exception as exc:  # noqa: BLE001 - cosmetic: never fatal
                if str(exc) != self.last_error:
                    log.warning("%s: display failed: %s", self.url, exc)
                self.last_error = str(exc)
                self.close()  # the device is reopened at the next text (it may be back)
                return
            self.shown += 1
            self.last_text = text
            self.last_error = ""

    def close(self) -> None:
        """Release the device (safe twice)."""

    def get_status(self) -> dict[str, Any]:
        return {"url": self.url, "shown": self.shown, "last_text": self.last_text,
                "last_error": self.last_error}

    def _show(self, text: str) -> None:
        raise NotImplementedError


class SerialDisplay(Display):
    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url)
        parsed = parse_url(url)
        if not parsed.path:
            raise DriverUnavailable(url, "no port path", "e.g. serial:///dev/ttyUSB1")
        self.path = parsed.path
        self.baud = parsed.number(url, "baud", 9600)
        self.width = parsed.number(url, "width", 20)
        clear = parsed.query.get("clear", "")
        try:
            self.clear = bytes.fromhex(clear)
        except ValueError:
            raise DriverUnavailable(url, f"clear={clear!r} is not hex bytes", "e.g. clear=0C") \
                from None
        self._port: Any = None

    def open(self) -> None:
        import serial

        try:
            self._port = serial.serial_for_url(self.path, self.baud, write_timeout=1)
        except (serial.SerialException, OSError) as exc:
            raise DriverUnavailable(self.url, f"cannot open {self.path}: {exc}") from exc

    def _show(self, text: str) -> None:
        if self._port is None:
            self.open()
        line = text.replace("\r", " ").replace("\n", " ")[:self.width]
        self._port.write(self.clear + line.encode("utf-8", errors="replace") + b"\r\n")

    def close(self) -> None:
        port, self._port = self._port, None
        close_quietly(port, self.url)


_sim_lock = threading.Lock()
_sim_texts: dict[str, list[str]] = {}


def sim_display(name: str) -> list[str]:
    """Every text the `sim:NAME` display showed (tests read it)."""
    with _sim_lock:
        return _sim_texts.setdefault(name, [])


class SimDisplay(Display):
    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url)
        parsed = sim_url(url)
        self.name = parsed.path
        self.log_path = parsed.query.get("log") or None

    def _show(self, text: str) -> None:
        sim_display(self.name).append(text)
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"display": self.name, "text": text,
                                     "mono_ns": time.monotonic_ns()}) + "\n")
